#!/bin/sh
# tasks/verify.yml: download, decrypt and decompress every file of an artifact in the store
# and re-hash it against its metadata, without writing anything to disk.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require LOCKSTEP_CONFIG "${LOCKSTEP_CONFIG:-}"

if [ -n "${ARTIFACT:-}" ]; then
  set -- verify "$ARTIFACT"
else
  echo "ARTIFACT is empty: verifying the newest artifact in the store." >&2
  set -- verify
fi
status=0
lockstep_run "$@" || status=$?
exit "$status"
