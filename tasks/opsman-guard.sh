#!/bin/sh
# tasks/opsman-guard.yml: `lockstep opsman discover`; fails while changes are being applied.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require OM_TARGET "${OM_TARGET:-}"
opsman_env

set -- opsman
[ -z "${OM_CA_CERT:-}" ] || set -- "$@" --ca-cert "$OM_CA_CERT"
out=$(mktemp)
status=0
lockstep_exec "$@" discover >"$out" || status=$?
cat "$out"
[ "$status" -eq 0 ] || exit "$status"
if grep -q '^applying changes: installation' "$out"; then
  die "Ops Manager is applying changes (above): run this again once they have finished"
fi
echo "Ops Manager is not applying changes." >&2
