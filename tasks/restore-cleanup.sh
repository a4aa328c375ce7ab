#!/bin/sh
# tasks/restore-cleanup.yml: after a restore that failed or was stopped, run every job's
# post-restore-unlock and remove the staging directory on every instance.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

status=0
lockstep_run restore-cleanup || status=$?
explain_exit "$status" restore-cleanup
exit "$status"
