# Shared by the deploy/local scripts. Sourced, not run.
#
# Layout: the repository's .ledgerline/ holds the local stack's state (git-ignored):
#   bin/        the Ledgerline binaries `up` built
#   run/        one pid file per process
#   log/        one log per process
#   tansu/      the broker's SQLite database (durable across restarts)
#   clickhouse/ ClickHouse config, credentials and data
#   archive/    the audit archive's development signing key and its public key
#   dev-keys.env the query API's development keys (analyst, auditor, admin; mode 0600)
# ~/.cache/ledgerline (LEDGERLINE_CACHE_DIR) holds what outlives a checkout: the Tansu binary.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${LEDGERLINE_STATE_DIR:-$REPO_ROOT/.ledgerline}"
CACHE_DIR="${LEDGERLINE_CACHE_DIR:-$HOME/.cache/ledgerline}"

TANSU_VERSION="0.6.0"
TANSU_BIN="$CACHE_DIR/tansu-$TANSU_VERSION/bin/tansu"
PYTHON_VENV="$CACHE_DIR/python-venv"

# Default ports of the local stack.
BROKER_PORT=9092
CLICKHOUSE_HTTP_PORT=8123
CLICKHOUSE_TCP_PORT=9000
REGISTRY_PORT=8081
PROJECTOR_PORT=9101
ARCHIVE_PORT=9102
API_PORT=8080
PROMETHEUS_PORT=9090
ALERTMANAGER_PORT=9093

# Debian packages: librdkafka's cmake build (curl headers are needed even though curl is
# unused), Debian's ClickHouse 18.16, the venv of the Python test clients, Chromium for the
# console's browser tests, Prometheus and Alertmanager (`up --monitoring`, the monitoring
# test), ZooKeeper (the replicated-ClickHouse test) and docker-compose (which checks the
# compose file; no Docker engine runs here).
APT_PACKAGES=(cmake libcurl4-openssl-dev zlib1g-dev libzstd-dev libssl-dev libsasl2-dev
  clickhouse-server clickhouse-client curl python3-venv
  chromium chromium-driver
  prometheus prometheus-alertmanager zookeeper docker-compose)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Steps of a long script, each announced with how long it took the last time on this machine
# (or an estimate, the first time), and timed: `step KEY "what it does" "first-time estimate"`.
# The measured seconds go to $CACHE_DIR/step-timings (one `KEY SECONDS` line per step).
STEP_TIMINGS="$CACHE_DIR/step-timings"
STEP_NUMBER=0
STEP_TOTAL="${STEP_TOTAL:-0}"
STEP_KEY=""
STEP_STARTED=0
step_done() {
  [[ -n "$STEP_KEY" ]] || return 0
  local took=$((SECONDS - STEP_STARTED)) rest=""
  mkdir -p "$CACHE_DIR"
  [[ -f "$STEP_TIMINGS" ]] && rest="$(grep -v "^$STEP_KEY " "$STEP_TIMINGS" || true)"
  printf '%s\n%s %s\n' "$rest" "$STEP_KEY" "$took" | sed '/^$/d' >"$STEP_TIMINGS.new"
  mv "$STEP_TIMINGS.new" "$STEP_TIMINGS"
  ((took < 2)) || log "    done in ${took}s"
  STEP_KEY=""
}
step() {
  local key="$1" what="$2" estimate="$3" last
  step_done
  STEP_NUMBER=$((STEP_NUMBER + 1))
  last=""
  [[ -f "$STEP_TIMINGS" ]] && last="$(sed -n "s/^$key //p" "$STEP_TIMINGS" | head -1)"
  if [[ -n "$last" ]]; then
    estimate="took ${last}s last time"
  fi
  log "[$STEP_NUMBER/$STEP_TOTAL] $what ($estimate)"
  STEP_KEY="$key"
  STEP_STARTED=$SECONDS
}
die() { log "error: $*"; exit 1; }

# start_time PID -> prints the process's start time (clock ticks since boot, field 22 of
# /proc/PID/stat): with the pid, it names one process, whatever later reuses the pid.
start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  # The command name (field 2) may hold spaces; the fields after its closing parenthesis don't.
  stat="${stat##*) }"
  # shellcheck disable=SC2086 # split on purpose
  set -- $stat
  echo "${20}"
}

# is_live PID [START]: the process exists and is neither a zombie nor exiting (`kill -0`
# succeeds for both: a killed service whose parent has not reaped it yet), and, when START is
# given, it is the same process that was started (not another program that got the pid).
is_live() {
  local pid="$1" expected="${2:-}" stat state
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  state="${stat%% *}"
  [[ "$state" != Z && "$state" != X && "$state" != x ]] || return 1
  [[ -z "$expected" || "$(start_time "$pid")" == "$expected" ]]
}

# pid_of NAME -> prints the pid when the process recorded for NAME is alive (see is_live).
pid_of() {
  local pid_file="$STATE_DIR/run/$1.pid" pid started
  [[ -f "$pid_file" ]] || return 1
  read -r pid started <"$pid_file" || true
  [[ -n "$pid" ]] && is_live "$pid" "${started:-}" || return 1
  echo "$pid"
}

# start_process NAME DIR COMMAND... : starts COMMAND in DIR in its own session, in the
# background, with output to log/NAME.log, and records its pid and start time.
start_process() {
  local name="$1" dir="$2" pid
  shift 2
  mkdir -p "$STATE_DIR/run" "$STATE_DIR/log"
  (cd "$dir" && exec setsid "$@" >>"$STATE_DIR/log/$name.log" 2>&1 </dev/null) &
  pid=$!
  echo "$pid $(start_time "$pid")" >"$STATE_DIR/run/$name.pid"
}

# stop_process NAME: SIGTERM, then SIGKILL after 15 s; removes the pid file.
stop_process() {
  local name="$1" pid started=""
  if ! pid="$(pid_of "$name")"; then
    rm -f "$STATE_DIR/run/$name.pid"
    return 0
  fi
  read -r _ started <"$STATE_DIR/run/$name.pid" || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    is_live "$pid" "$started" || break
    sleep 0.1
  done
  if is_live "$pid" "$started"; then
    log "$name (pid $pid) ignored SIGTERM for 15s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/run/$name.pid"
  log "stopped $name"
}

# wait_until SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds.
wait_until() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

broker_healthy() {
  "$STATE_DIR/bin/ledgerline-admin" --brokers "127.0.0.1:$BROKER_PORT" kafka-health --timeout-secs 2
}

projector_healthy() {
  curl -fsS "http://127.0.0.1:$PROJECTOR_PORT/health" >/dev/null 2>&1
}

archive_healthy() {
  curl -fsS "http://127.0.0.1:$ARCHIVE_PORT/health" >/dev/null 2>&1
}

api_healthy() {
  curl -fsS "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1
}

registry_healthy() {
  curl -fsS "http://127.0.0.1:$REGISTRY_PORT/health" >/dev/null 2>&1
}

prometheus_healthy() {
  curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1
}

alertmanager_healthy() {
  curl -fsS "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" >/dev/null 2>&1
}

# metric_sum URL NAME -> prints the sum of every series of NAME in the Prometheus text at URL
# (0 when there is none; nothing when URL does not answer).
metric_sum() {
  local text
  text="$(curl -fsS --max-time 3 "$1" 2>/dev/null)" || return 1
  awk -v name="$2" '
    $1 == name || index($1, name "{") == 1 { sum += $NF }
    END { printf "%d\n", sum }' <<<"$text"
}

clickhouse_healthy() {
  [[ "$(curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null)" == "Ok." ]]
}

# One `user=password` line per ClickHouse user (`default`, the admin, and one per role),
# written by `up`, which renders them into users.xml.
CLICKHOUSE_CREDENTIALS="$STATE_DIR/clickhouse/credentials"

# clickhouse_password USER -> prints USER's password from CLICKHOUSE_CREDENTIALS.
clickhouse_password() {
  sed -n "s/^$1=//p" "$CLICKHOUSE_CREDENTIALS" 2>/dev/null
}

# clickhouse_sql SQL: runs SQL as the loopback-only admin user `default` (POST: GET is
# read-only). The password reaches curl on stdin, not on its command line, which every local
# user can read in /proc.
clickhouse_sql() {
  local password
  password="$(clickhouse_password default)"
  [[ -n "$password" ]] || die "no default= line in $CLICKHOUSE_CREDENTIALS (deploy/local/up writes it)"
  printf 'user = "default:%s"\n' "$password" \
    | curl -fsS --config - "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/" --data-binary "$1"
}
