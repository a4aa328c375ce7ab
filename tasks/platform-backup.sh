#!/bin/sh
# tasks/platform-backup.yml: `lockstep opsman backup` of the products PRODUCTS names into
# STORE (and REPLICA_STORE); the platform record's name into platform/record.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require OM_TARGET "${OM_TARGET:-}"
require STORE "${STORE:-}"
opsman_env

set -- opsman
[ -z "${OM_CA_CERT:-}" ] || set -- "$@" --ca-cert "$OM_CA_CERT"
set -- "$@" backup --products "${PRODUCTS:-all}" --store "$STORE"
[ -z "${REPLICA_STORE:-}" ] || set -- "$@" --store "$REPLICA_STORE"
[ -z "${AGE_RECIPIENT:-}" ] || set -- "$@" --encrypt-to "$AGE_RECIPIENT"
[ -z "${DIRECTOR_HOST_PUBLIC_KEY:-}" ] || set -- "$@" --host-public-key "$DIRECTOR_HOST_PUBLIC_KEY"
[ -z "${DIRECTOR_SSH:-}" ] || set -- "$@" --director-ssh "$DIRECTOR_SSH"
[ -z "${DIRECTOR_URL:-}" ] || set -- "$@" --director-url "$DIRECTOR_URL"

# The log goes on to the build's, and is kept to find the record lockstep names
# ("Platform backup platform_<time> in <store>: <members>").
log=$(mktemp)
fifo=$(mktemp -u)
mkfifo "$fifo"
tee "$log" <"$fifo" >&2 &
status=0
lockstep_exec "$@" 2>"$fifo" || status=$?
wait
rm -f "$fifo"
[ "$status" -eq 0 ] || exit "$status"

record=$(sed -n 's/.*Platform backup \(platform_[0-9]*T[0-9]*Z\) in .*/\1/p' "$log" | tail -n 1)
[ -n "$record" ] || die "lockstep succeeded but named no platform record in its log"
mkdir -p platform
printf '%s\n' "$record" >platform/record
echo "Platform record: $record" >&2
