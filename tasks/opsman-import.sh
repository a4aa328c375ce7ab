#!/bin/sh
# tasks/opsman-import.yml: `lockstep opsman import` of ARTIFACT from STORE into OM_TARGET.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
require OM_TARGET "${OM_TARGET:-}"
require OM_DECRYPTION_PASSPHRASE "${OM_DECRYPTION_PASSPHRASE:-}"
require ARTIFACT "${ARTIFACT:-}"
require STORE "${STORE:-}"
opsman_env
export OM_DECRYPTION_PASSPHRASE

set -- opsman
[ -z "${OM_CA_CERT:-}" ] || set -- "$@" --ca-cert "$OM_CA_CERT"
set -- "$@" import --artifact "$ARTIFACT" --store "$STORE" --polling-interval "${POLLING_INTERVAL:-10s}"
[ -z "${REPLICA_STORE:-}" ] || set -- "$@" --store "$REPLICA_STORE"
status=0
lockstep_with_identity "$@" || status=$?
exit "$status"
