# Shared by scripts/soak.sh and scripts/crash-loop.sh (sourced, not run). Sourcing defines
# functions only:
# - `one_flag NAME VAR "$@"`: the one flag a script takes, `--NAME VALUE` or `--NAME=VALUE`
#   into the variable VAR, or -h/--help (prints the script's header comment and exits);
# - `endurance_setup`: the brokers (scripts/brokers.sh, as scripts/bench.sh installs them),
#   the open-file limit, the release binaries (TIDEGATE and SIM), and PIDS, the background
#   processes of the script, all stopped when it exits, whatever the exit;
# - `start_tansu PORT ADVERTISED LOG`, `free_port`, `wait_port`, `seconds` and
#   `verify_counts`.

one_flag() {
    local flag="$1" var="$2"
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            "--$flag") printf -v "$var" '%s' "$2"; shift 2 ;;
            "--$flag="*) printf -v "$var" '%s' "${1#*=}"; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
        esac
    done
}

endurance_setup() {
    # shellcheck source=scripts/brokers.sh
    source scripts/brokers.sh

    # One socket per device in the fleet and in tidegate, and some headroom.
    local hard
    hard="$(ulimit -Hn)"
    if [ "$hard" != "unlimited" ] && [ "$hard" -lt 65536 ]; then
        ulimit -Hn 65536 2>/dev/null || true
        hard="$(ulimit -Hn)"
    fi
    ulimit -Sn "$hard"

    step "building release binaries (tidegate, firmware-sim)"
    cargo build --release -p tidegate --bin tidegate -p firmware-sim --bin firmware-sim
    TIDEGATE="${CARGO_TARGET_DIR:-$PWD/target}/release/tidegate"
    SIM="${CARGO_TARGET_DIR:-$PWD/target}/release/firmware-sim"
    echo "tidegate: $TIDEGATE ($(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"

    PIDS=()
    trap stop_all EXIT
    trap 'exit 130' INT TERM
}

# SIGTERM to every process in PIDS, then waits for them.
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# Tansu (Kafka protocol, in-memory storage) on 127.0.0.1:$1, telling clients to connect to
# 127.0.0.1:$2 (a link in front of it, or $1 itself), logging to $3; sets TANSU_PID (the
# caller keeps it in PIDS).
start_tansu() {
    "$TIDEGATE_TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$1" \
        --advertised-listener-url "tcp://127.0.0.1:$2" \
        --storage-engine memory://tansu/ >"$3" 2>&1 &
    TANSU_PID=$!
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 accepts connections, up to $2 seconds (default 30).
wait_port() {
    local i tries=$(( ${2:-30} * 50 ))
    for (( i = 0; i < tries; i++ )); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.02
    done
    echo "nothing listens on 127.0.0.1:$1 after ${2:-30} s" >&2
    return 1
}

# "90", "90s", "65m", "2h" → seconds.
seconds() {
    local v="$1"
    case "$v" in
        *h) echo $(( ${v%h} * 3600 )) ;;
        *m) echo $(( ${v%m} * 60 )) ;;
        *s) echo $(( ${v%s} )) ;;
        *) echo $(( v )) ;;
    esac
}

# From the summary line of `firmware-sim verify` ($1): "MISSING DUPLICATES REPLAYS
# OUT_OF_ORDER", or nothing if the line is not there.
verify_counts() {
    sed -n 's/.* \([0-9][0-9]*\) missing, .* \([0-9][0-9]*\) duplicates (\([0-9][0-9]*\) replayed by the gateway), \([0-9][0-9]*\) out of order.*/\1 \2 \3 \4/p' <<<"$1"
}
