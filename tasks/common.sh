# What the task scripts share. Sourced by tasks/*.sh, never run on its own.
# POSIX sh: the image has busybox's ash, nothing more.
#
# Nothing here prints the value of LOCKSTEP_CONFIG, DRILL_CONFIG or SMOKE_CHECK: they hold
# SSH keys, S3 secrets and age identities. Never add `set -x` to a task script.

# die MESSAGE: print an error and exit 1.
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# require NAME VALUE: fail clearly when a required param is empty.
require() {
  [ -n "$2" ] && return 0
  die "the task param $1 is empty. In a pipeline, set it in the task step's params; with fly execute, set it in your environment (fly fills every param the task declares from the variable of the same name)."
}

# flag NAME VALUE: succeed for true, fail for false (or empty); anything else is an error,
# so a typo never silently means false.
flag() {
  case "$2" in
    true | True | TRUE | 1 | yes) return 0 ;;
    false | False | FALSE | 0 | no | "") return 1 ;;
    *) die "the task param $1 must be true or false, not '$2'" ;;
  esac
}

# lockstep_run ARGS...: runs `lockstep run ARGS...` (see lockstep_exec).
lockstep_run() {
  lockstep_exec run "$@"
}

# lockstep_exec ARGS...: runs `lockstep ARGS...` (with --debug when LOCKSTEP_DEBUG is true)
# and returns its exit status. An aborted build sends SIGTERM to this script, not to its
# children: pass it on, then wait for lockstep to finish the unlocks and the cleanup it owes.
lockstep_exec() {
  if flag LOCKSTEP_DEBUG "${LOCKSTEP_DEBUG:-false}"; then
    set -- --debug "$@"
  fi
  lockstep "$@" &
  _lockstep_pid=$!
  trap 'kill -TERM "$_lockstep_pid" 2>/dev/null || :' TERM INT
  _lockstep_status=0
  wait "$_lockstep_pid" || _lockstep_status=$?
  # A trapped signal ends `wait` early (status > 128): wait again until lockstep has exited.
  while kill -0 "$_lockstep_pid" 2>/dev/null; do
    _lockstep_status=0
    wait "$_lockstep_pid" || _lockstep_status=$?
  done
  trap - TERM INT
  return "$_lockstep_status"
}

# explain_exit STATUS CLEANUP_TASK: after a backup or restore, say what lockstep's exit code
# (bbr's bits, OR-ed) asks of the operator.
explain_exit() {
  _code=$1
  _cleanup=$2
  [ "$_code" -ne 0 ] || return 0
  {
    echo
    if [ "$_code" -gt 31 ]; then
      echo "lockstep exited with $_code (killed by a signal?): the instances may still be locked."
      echo "Run the $_cleanup task (tasks/$_cleanup.yml), then look at the log above."
      return 0
    fi
    echo "lockstep exited with $_code (bbr's exit bits):"
    [ $((_code & 1)) -eq 0 ] || echo "   1  an error: the messages above name it and its cause."
    [ $((_code & 4)) -eq 0 ] || echo "   4  a lock script failed: nothing was backed up or restored; every lock that ran was undone."
    [ $((_code & 8)) -eq 0 ] || echo "   8  an unlock script failed: the deployment may still be locked (its API down). Run the $_cleanup task now."
    [ $((_code & 16)) -eq 0 ] || echo "  16  a cleanup failed: staging data is left on the instances and fails the next run. Run the $_cleanup task."
    echo "If lockstep advised a cleanup above, run the $_cleanup task (tasks/$_cleanup.yml) with the same LOCKSTEP_CONFIG."
  } >&2
}

# only_records DIR: succeed when DIR holds only what a get with skip_download writes
# (version, metadata, lockstep.json): the artifact itself is then read from the store.
only_records() {
  [ -f "$1/version" ] || return 1
  for _f in "$1"/* "$1"/.[!.]*; do
    [ -e "$_f" ] || continue
    case "${_f##*/}" in
      version | metadata | lockstep.json) ;;
      *) return 1 ;;
    esac
  done
  return 0
}

# find_artifact_dir DIR: print the bbr artifact directory in DIR (DIR itself when it holds
# `metadata`, as a `get` of the lockstep resource leaves it, else its only subdirectory that
# does), or fail.
find_artifact_dir() {
  if [ -f "$1/metadata" ]; then
    printf '%s\n' "$1"
    return 0
  fi
  _found=
  for _d in "$1"/*/; do
    [ -f "${_d}metadata" ] || continue
    [ -z "$_found" ] || die "the input $1 holds more than one artifact directory; give exactly one"
    _found=${_d%/}
  done
  [ -n "$_found" ] || die "the input $1 is not a bbr artifact directory: no metadata file in it or in a subdirectory"
  printf '%s\n' "$_found"
}

# unset_empty NAME...: unset each variable that is set but empty. Concourse sets every param
# a task declares, "" when the pipeline gives none; lockstep reads OM_*, AWS_* and
# OM_DECRYPTION_PASSPHRASE from the environment, where an empty value is a value.
unset_empty() {
  for _v in "$@"; do
    eval "[ -n \"\${$_v:-}\" ] || unset $_v"
  done
}

# lockstep_with_identity ARGS...: lockstep_exec ARGS..., with --identity FILE when
# LOCKSTEP_AGE_IDENTITY (the age key file's text) is set: written to a file only this user
# can read, removed afterwards. Returns lockstep's exit status.
lockstep_with_identity() {
  _id=
  if [ -n "${LOCKSTEP_AGE_IDENTITY:-}" ]; then
    _id=$(umask 077 && mktemp)
    printf '%s\n' "$LOCKSTEP_AGE_IDENTITY" >"$_id"
    set -- "$@" --identity "$_id"
  fi
  _status=0
  lockstep_exec "$@" || _status=$?
  [ -z "$_id" ] || rm -f "$_id"
  return "$_status"
}

# opsman_env: the Ops Manager and S3 params as lockstep reads them from the environment
# (om's variables, the AWS CLI's), empty ones unset.
opsman_env() {
  unset_empty OM_USERNAME OM_PASSWORD OM_CLIENT_ID OM_CLIENT_SECRET OM_SKIP_SSL_VALIDATION \
    OM_DECRYPTION_PASSPHRASE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  export OM_TARGET
}
