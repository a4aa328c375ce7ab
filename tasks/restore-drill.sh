#!/bin/sh
# tasks/restore-drill.yml: prove a backup restores. Restore it into the scratch deployment
# DRILL_CONFIG names (never the one it was taken from), then run SMOKE_CHECK against it.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require DRILL_CONFIG "${DRILL_CONFIG:-}"
# lockstep reads its configuration from LOCKSTEP_CONFIG: here, the scratch deployment's.
LOCKSTEP_CONFIG=$DRILL_CONFIG
export LOCKSTEP_CONFIG

artifact=${ARTIFACT:-}
if [ -d artifact ] && [ -z "$artifact" ] && only_records artifact; then
  # A get with skip_download: the version's name, the artifact streamed from the store.
  artifact=$(cat artifact/version)
  ARTIFACT_DIR=
  echo "Drill: restoring $artifact from DRILL_CONFIG's store into the scratch deployment (streamed: nothing of it on this worker's disk)." >&2
  set -- restore --drill --artifact "$artifact"
elif [ -d artifact ] && [ -z "$artifact" ]; then
  ARTIFACT_DIR=$(find_artifact_dir artifact)
  echo "Drill: restoring the artifact directory $ARTIFACT_DIR into the scratch deployment." >&2
  set -- restore --drill -a "$ARTIFACT_DIR"
elif [ -n "$artifact" ]; then
  ARTIFACT_DIR=
  echo "Drill: restoring $artifact from DRILL_CONFIG's store into the scratch deployment." >&2
  set -- restore --drill --artifact "$artifact"
else
  die "nothing to restore: give the input 'artifact' (what a get of the lockstep resource fetched) or set ARTIFACT"
fi
export ARTIFACT_DIR

status=0
lockstep_run "$@" || status=$?
if [ "$status" -ne 0 ]; then
  explain_exit "$status" restore-cleanup
  echo "Drill: the restore failed; running restore-cleanup on the scratch deployment." >&2
  lockstep_run restore-cleanup || echo "Drill: restore-cleanup failed too; clean the scratch deployment up by hand." >&2
  exit "$status"
fi
echo "Drill: restore succeeded." >&2

if [ -z "${SMOKE_CHECK:-}" ]; then
  echo "Drill: SMOKE_CHECK is empty, so only the restore itself was checked. Set it to a command that fails when the restored deployment is unhealthy." >&2
  exit 0
fi
echo "Drill: running the smoke check (SMOKE_CHECK)." >&2
# The smoke check gets what it needs and nothing secret: not DRILL_CONFIG or LOCKSTEP_CONFIG
# (SSH keys, store keys, age identity), only the artifact's name and directory and the
# scratch deployment's name and instances (DRILL_TARGET, JSON from `lockstep run describe`).
drill_target=$(lockstep run describe) || die "could not describe the scratch deployment for the smoke check"
if [ -z "$artifact" ] && [ -n "$ARTIFACT_DIR" ]; then
  # A get writes the version's name into `version`; a bbr directory is named after it.
  if [ -f "$ARTIFACT_DIR/version" ]; then artifact=$(cat "$ARTIFACT_DIR/version"); else artifact=$(basename "$ARTIFACT_DIR"); fi
fi
smoke_check=$SMOKE_CHECK
smoke=0
env -i PATH="$PATH" HOME="${HOME:-/}" TMPDIR="${TMPDIR:-/tmp}" ARTIFACT="$artifact" ARTIFACT_DIR="$ARTIFACT_DIR" \
  DRILL_TARGET="$drill_target" sh -c "$smoke_check" || smoke=$?
if [ "$smoke" -ne 0 ]; then
  echo "Drill: the smoke check failed (exit $smoke): the backup restored, but the restored deployment is not healthy." >&2
  exit 1
fi
echo "Drill: the smoke check passed." >&2
