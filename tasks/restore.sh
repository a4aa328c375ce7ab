#!/bin/sh
# tasks/restore.yml: restore an artifact onto the target LOCKSTEP_CONFIG names: the artifact
# ARTIFACT from the configured store, or else the bbr artifact directory given as the input
# `artifact`. Every checksum is verified before any instance is touched.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

artifact=${ARTIFACT:-}
if [ -n "$artifact" ]; then
  [ ! -d artifact ] || echo "note: ARTIFACT is set, so the input 'artifact' is not used." >&2
  echo "Restoring $artifact from the configured store." >&2
  set -- restore --artifact "$artifact"
elif [ -d artifact ]; then
  dir=$(find_artifact_dir artifact)
  echo "Restoring the artifact directory $dir." >&2
  set -- restore -a "$dir"
else
  die "nothing to restore: set ARTIFACT (an artifact in the store, e.g. cf_20261121T224808Z) or give the input 'artifact' (a directory a get of the lockstep resource fetched, or a bbr artifact directory)"
fi

status=0
lockstep_run "$@" || status=$?
explain_exit "$status" restore-cleanup
exit "$status"
