#!/bin/sh
# tasks/backup.yml: lock, back up, unlock, and stream every artifact into the store(s) that
# LOCKSTEP_CONFIG names (with a `path:` store, into the `artifacts` output).
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

set -- backup
if flag UNSAFE_LOCK_FREE "${UNSAFE_LOCK_FREE:-false}"; then
  echo "warning: UNSAFE_LOCK_FREE is true: the lock and unlock scripts are skipped, so this backup may be inconsistent (it is marked lock-free)." >&2
  set -- "$@" --unsafe-lock-free
fi

status=0
lockstep_run "$@" || status=$?
explain_exit "$status" backup-cleanup
exit "$status"
