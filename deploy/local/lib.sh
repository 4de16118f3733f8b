# Shared settings and helpers for the scripts in deploy/local.
# Source this file instead of running it.
# shellcheck shell=bash disable=SC2034 # The sourcing scripts use the variables set here.

LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LOCAL_DIR/../.." && pwd)
STATE_DIR=$LOCAL_DIR/state
LOG_DIR=$STATE_DIR/logs
PID_DIR=$STATE_DIR/pids
CACHE_DIR=${ACCOUNTS_CACHE_DIR:-$HOME/.cache/accounts-settings}

# The services, in the order deploy/local/up starts them.
SERVICES=(accounts-projector accounts-command accounts-query)

export DEBIAN_FRONTEND=noninteractive

# runuser is in /usr/sbin, which minimal environments (env -i, some cron setups) leave out of PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin ;;
esac
# rustup installs cargo in ~/.cargo/bin and puts that on PATH only through shell startup
# files, which non-interactive shells skip.
if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi

log() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Sources deploy/local/state/env, if present, and exports every variable it sets.
load_env_file() {
    local env_file=$STATE_DIR/env
    if [[ -f $env_file ]]; then
        set -a
        # shellcheck disable=SC1090
        source "$env_file"
        set +a
    fi
}

# Exports the settings the services read, keeping any value the caller already set.
export_stack_settings() {
    export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
    export DATABASE_URL=${DATABASE_URL:-postgres://accounts:accounts@127.0.0.1:5432/accounts}
    export COMMAND_ADDR=${COMMAND_ADDR:-127.0.0.1:8080}
    export QUERY_ADDR=${QUERY_ADDR:-127.0.0.1:8081}
    export PROJECTOR_ADDR=${PROJECTOR_ADDR:-127.0.0.1:8082}
    export TOPIC_PREFIX=${TOPIC_PREFIX:-}
    export RUST_LOG=${RUST_LOG:-info}
}

require_commands() {
    local name
    for name in "$@"; do
        command -v "$name" >/dev/null ||
            die "command '$name' not found; run deploy/local/packages to install it"
    done
}

# Installs Debian packages. Runs 'apt-get update' first, at most once per script process.
APT_UPDATED=false
apt_install() {
    if [[ $APT_UPDATED == false ]]; then
        log "running apt-get update"
        apt-get update -q
        APT_UPDATED=true
    fi
    log "installing $*"
    apt-get install -y -q --no-install-recommends "$@"
}

# Succeeds when something accepts TCP connections on HOST:PORT.
port_open() {
    local host=$1 port=$2
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# Runs COMMAND every half second until it succeeds, and fails after TIMEOUT seconds.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Runs CHECK every half second until it succeeds. Fails, printing the log tail of NAME,
# when the process NAME (identified as in running_pid) exits or TIMEOUT seconds pass first.
wait_for_ready() {
    local name=$1 marker=$2 timeout=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ! running_pid "$name" "$marker" >/dev/null; then
            print_log_tail "$name"
            die "$name exited before it became ready"
        fi
        if ((SECONDS >= deadline)); then
            print_log_tail "$name"
            die "$name did not become ready within $timeout s"
        fi
        sleep 0.5
    done
}

# Prints the HTTP status of GET URL, or 000 when no response arrives within 3 seconds.
http_status() {
    curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$1" || true
}

pid_file() {
    printf '%s/%s.pid\n' "$PID_DIR" "$1"
}

log_file() {
    printf '%s/%s.log\n' "$LOG_DIR" "$1"
}

# Prints the pid of process NAME and succeeds if its pid file names a live process whose
# command line contains MARKER. The kernel may have given the pid of a stale pid file to
# another program since, and the marker check keeps that program from counting as ours.
running_pid() {
    local name=$1 marker=$2 file pid cmdline
    file=$(pid_file "$name")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    [[ $cmdline == *"$marker"* ]] || return 1
    printf '%s\n' "$pid"
}

# Starts COMMAND detached from this shell (own session, output appended to the log of NAME)
# and writes its pid file.
start_detached() {
    local name=$1
    shift
    local log
    log=$(log_file "$name")
    mkdir -p "$LOG_DIR" "$PID_DIR"
    printf '\n=== %s: starting %s\n' "$(date --iso-8601=seconds)" "$*" >>"$log"
    # nohup execs, and setsid execs too unless it leads its process group, which a background
    # job of a shell without job control never does. So $! is the pid of COMMAND itself.
    setsid nohup "$@" >>"$log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$(pid_file "$name")"
    log "started $name (pid $!), log in ${log#"$REPO_DIR"/}"
}

# Stops process NAME (identified as in running_pid) with SIGTERM, then SIGKILL after
# 20 seconds, and removes its pid file.
stop_process() {
    local name=$1 marker=$2 pid
    if pid=$(running_pid "$name" "$marker"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until 20 process_gone "$pid"; then
            log "$name (pid $pid) still running after 20 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_until 5 process_gone "$pid" || die "could not stop $name (pid $pid)"
        fi
    else
        log "$name is not running"
    fi
    rm -f "$(pid_file "$name")"
}

process_gone() {
    ! kill -0 "$1" 2>/dev/null
}

# Prints to stderr the last 100 lines that the latest start of NAME wrote to its log.
print_log_tail() {
    local log start_line
    log=$(log_file "$1")
    [[ -f $log ]] || return 0
    start_line=$(grep -n '^=== ' "$log" | tail -n 1 | cut -d : -f 1)
    log "last lines of ${log#"$REPO_DIR"/}:"
    tail -n "+${start_line:-1}" "$log" | tail -n 100 >&2
}

# Prints the PostgreSQL major version to use: that of the newest existing cluster named
# 'main', else the newest version installed from Debian packages. Fails when none is installed.
postgres_version() {
    [[ -d /usr/lib/postgresql ]] || return 1
    local version=
    if command -v pg_lsclusters >/dev/null; then
        version=$(pg_lsclusters -h | awk '$2 == "main" { print $1 }' | sort -V | tail -n 1)
    fi
    if [[ -z $version ]]; then
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    fi
    [[ -n $version ]] || return 1
    printf '%s\n' "$version"
}

# Prints the target directory cargo builds into.
cargo_target_dir() {
    printf '%s\n' "${CARGO_TARGET_DIR:-$REPO_DIR/target}"
}

# Cargo arguments that make cargo fail instead of changing Cargo.lock, when there is one.
CARGO_LOCK_ARGS=()
if [[ -f $REPO_DIR/Cargo.lock ]]; then
    CARGO_LOCK_ARGS=(--locked)
fi
