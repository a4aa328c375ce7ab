#!/bin/sh
# tasks/platform-verify.yml: `lockstep verify` of a platform record (RECORD, or the one in
# platform/record): every member re-hashed from the store.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require STORE "${STORE:-}"
opsman_env

record=${RECORD:-}
if [ -z "$record" ] && [ -f platform/record ]; then
  record=$(cat platform/record)
fi
[ -n "$record" ] || die "nothing to verify: set RECORD (platform_<time>) or give the input 'platform' that tasks/platform-backup.yml writes"

set -- verify "$record" --store "$STORE"
status=0
lockstep_with_identity "$@" || status=$?
exit "$status"
