# Shared by scripts/soak.sh and scripts/crash-loop.sh (sourced, not run): the brokers (through
# scripts/brokers.sh), the open-file limit, the release binaries, free loopback ports, and the
# processes a script starts, stopped when it exits. Defines TIDEGATE and SIM (the release
# binaries), PIDS (append every background process), `step`, `free_port`, `wait_port`,
# `seconds` and `verify_counts`.

# shellcheck source=scripts/brokers.sh
source scripts/brokers.sh

# One socket per device in the fleet and in tidegate, and some headroom.
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

# Every background process the script starts; all are stopped (SIGTERM, then waited for) on
# exit, whatever the exit.
PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

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
