#!/bin/sh
# tasks/pre-backup-check.yml: can the deployment be backed up? Scripts found, metadata valid,
# lock order acyclic, no leftover staging directory. Locks nothing.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

status=0
lockstep_run pre-backup-check || status=$?
if [ "$status" -ne 0 ]; then
  echo "The deployment cannot be backed up as it is; nothing was locked. A leftover staging directory" >&2
  echo "(a backup that failed or was stopped) is removed by the backup-cleanup task." >&2
fi
exit "$status"
