#!/bin/sh
# tasks/prune.yml: apply the `retention:` policy of LOCKSTEP_CONFIG to its store(s): print the
# plan (what is kept and by which rule, what is deleted), then delete (unless DRY_RUN).
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

set -- prune
if flag DRY_RUN "${DRY_RUN:-false}"; then
  echo "DRY_RUN is true: printing the plan only; nothing is deleted." >&2
  set -- "$@" --dry-run
fi
status=0
lockstep_run "$@" || status=$?
exit "$status"
