#!/bin/sh
# tasks/backup-cleanup.yml: after a backup that failed or was stopped, run every job's
# post-backup-unlock and remove the staging directory (/var/vcap/store/bbr-backup) on every
# instance. Safe to run when nothing is left over.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

status=0
lockstep_run backup-cleanup || status=$?
explain_exit "$status" backup-cleanup
exit "$status"
