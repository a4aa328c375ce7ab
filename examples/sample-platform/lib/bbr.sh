# Shared by every BBR script of the sample platform (bash); the installer copies it into each
# job as ROOT/var/vcap/jobs/<job>/lib/bbr.sh. Sourced, not run: `. "$(dirname "$0")/../../lib/bbr.sh"`.
#
# - ROOT: the instance root, from the script's own path. Scripts live at
#   ROOT/var/vcap/jobs/<job>/bin/bbr/<name>, so ROOT is six levels up: `/` on a VM (where it
#   becomes the empty string, so "$ROOT/var/vcap" is /var/vcap), a directory standing in for
#   `/` on lockstep's local transport.
# - The job's configuration, ROOT/var/vcap/jobs/<job>/config/env (KEY='value' lines written by
#   the installer), is read and exported: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE reach
#   psql and pg_dump as libpq's own variables.
# - Every script appends one line to ROOT/var/vcap/sys/log/<job>/bbr.log when it exits:
#       <start epoch> <end epoch> <script> exit=<status>
#   timed by the script itself, so a test can tell the scripts' own run time from lockstep's.

# Bash, for $EPOCHREALTIME: the self-timing and the lock token cost no extra process.
BBR_SCRIPT_START=$EPOCHREALTIME
BBR_SCRIPT=${0##*/}
bbr_bin=${0%/*}
ROOT=$(cd "$bbr_bin/../../../../../.." && pwd)
[ "$ROOT" = / ] && ROOT=
JOB_DIR="$bbr_bin/../.."
JOB=$(cd "$JOB_DIR" && pwd)
JOB=${JOB##*/}
VCAP="$ROOT/var/vcap"
BBR_LOG_DIR="$VCAP/sys/log/$JOB"
[ -d "$BBR_LOG_DIR" ] || mkdir -p "$BBR_LOG_DIR"
trap 'bbr_rc=$?; printf "%s %s %s exit=%s\n" "$BBR_SCRIPT_START" "$EPOCHREALTIME" "$BBR_SCRIPT" "$bbr_rc" >>"$BBR_LOG_DIR/bbr.log"' EXIT

if [ -f "$JOB_DIR/config/env" ]; then
  set -a
  . "$JOB_DIR/config/env"
  set +a
fi

# --- The API's lock protocol (cloud_controller) -------------------------------------------
#
# The API process (api.py) polls $API_CONTROL/lock-request between operations. When it sees a
# request it stops starting operations ("unavailable"), waits until none is in flight, and
# writes the request's token to $API_CONTROL/lock-ack. When the request is gone it resumes,
# logs that it is available again, and removes lock-ack.
#
# api_pause returns once the running API has acknowledged this very request (a fresh token, so
# an old acknowledgement never counts), or at once when no API runs (a freshly restored
# platform): an API that starts later sees the request before its first operation and starts
# paused. api_resume removes the request and returns once the API has resumed (lock-ack gone),
# so the caller's lock window ends after the API's downtime, not before. Both are idempotent.
API_CONTROL="$VCAP/data/cloud_controller"
API_PID_FILE="$VCAP/sys/run/cloud_controller/api.pid"
# Polling every 5 ms, for at most LOCK_TIMEOUT_SECONDS (default 60).
BBR_POLL_MAX=$(( ${LOCK_TIMEOUT_SECONDS:-60} * 200 ))

api_running() {
  bbr_pid=
  [ -f "$API_PID_FILE" ] && read -r bbr_pid 2>/dev/null <"$API_PID_FILE" || return 1
  [ -n "$bbr_pid" ] && [ -d "/proc/$bbr_pid" ]
}

api_pause() {
  [ -d "$API_CONTROL" ] || mkdir -p "$API_CONTROL"
  bbr_token="$EPOCHREALTIME-$$"
  # One short write: the API reads the whole token or, at worst, an empty file (which it
  # also takes as a request, then acknowledges the token once it is there).
  printf '%s\n' "$bbr_token" >"$API_CONTROL/lock-request"
  bbr_n=0
  while api_running; do
    bbr_ack=
    [ -f "$API_CONTROL/lock-ack" ] && read -r bbr_ack 2>/dev/null <"$API_CONTROL/lock-ack" || true
    if [ "$bbr_ack" = "$bbr_token" ]; then
      return 0
    fi
    bbr_n=$((bbr_n + 1))
    if [ "$bbr_n" -gt "$BBR_POLL_MAX" ]; then
      echo "the API (pid $bbr_pid) did not stop its writes within ${LOCK_TIMEOUT_SECONDS:-60}s" >&2
      return 1
    fi
    sleep 0.005
  done
  return 0
}

api_resume() {
  rm -f "$API_CONTROL/lock-request"
  bbr_n=0
  while api_running && [ -e "$API_CONTROL/lock-ack" ]; do
    bbr_n=$((bbr_n + 1))
    if [ "$bbr_n" -gt "$BBR_POLL_MAX" ]; then
      echo "the API (pid $bbr_pid) did not resume within ${LOCK_TIMEOUT_SECONDS:-60}s" >&2
      return 1
    fi
    sleep 0.005
  done
  return 0
}

# --- Databases ------------------------------------------------------------------------------

# Dumps the job's database (libpq's PG* variables from config/env) into FILE: one consistent
# snapshot, with DROP ... IF EXISTS first so it restores onto a fresh or a used database.
pg_backup() {
  pg_dump --no-password --clean --if-exists --no-owner --no-privileges -f "$1"
}

# Replays FILE into the job's database in one transaction; any error rolls all of it back.
pg_restore_file() {
  psql --no-password -X -q -v ON_ERROR_STOP=1 --single-transaction -f "$1" >/dev/null
}
