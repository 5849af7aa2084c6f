#!/usr/bin/env bash
# The crash loop at length: a fleet publishes at QoS 1 while a release tidegate forwarding to
# Tansu is killed with SIGKILL again and again (500 times by default), each time after a
# random short run (0.2–2 s once its MQTT port answers), and restarted on the same journal.
# At the end every acknowledged reading must be in Kafka exactly once, in order per device:
# 0 lost and 0 duplicated, checked by `firmware-sim verify --report` against the fleet's
# report of what tidegate acknowledged (the check tests/crash_loop.rs makes with 20 kills).
#
# The kills come in rounds (CRASH_ROUND_KILLS, 50 by default, about a minute), each with a
# fresh Tansu, journal, fleet and check: the test bed's in-memory Tansu drops a topic's
# oldest records after a few minutes and, in a long crash loop, then answered the gateway's
# tail read (what the topic already holds, read after each restart) with empty partitions,
# so one long run measures the broker, not the gateway.
#
# Usage: scripts/crash-loop.sh [--kills N]       (or CRASH_KILLS=N)
# Environment (defaults in brackets): CRASH_KILLS [500], CRASH_ROUND_KILLS [50], CRASH_SEED
# [random; printed, and replays the same kill moments], CRASH_MIN_UP_MS / CRASH_MAX_UP_MS [200 / 2000], CRASH_DEVICES
# [20], CRASH_RATE [100] (readings/s per device), CRASH_OUT [a new /tmp dir]: logs, fleet
# report, journal, per round. CARGO_TARGET_DIR is honoured.
#
# Prints "kill N of M" as it goes and the result; exits non-zero on any reading lost or
# duplicated, a reading left unacknowledged, or readings out of order. Loopback only;
# installs the brokers as scripts/bench.sh does; stops everything it started on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/endurance-common.sh
source scripts/endurance-common.sh
one_flag kills CRASH_KILLS "$@"

KILLS="${CRASH_KILLS:-500}"
ROUND_KILLS="${CRASH_ROUND_KILLS:-50}"
SEED="${CRASH_SEED:-$(( $(od -An -N2 -tu2 /dev/urandom) ))}"
MIN_UP_MS="${CRASH_MIN_UP_MS:-200}"
MAX_UP_MS="${CRASH_MAX_UP_MS:-2000}"
DEVICES="${CRASH_DEVICES:-20}"
RATE="${CRASH_RATE:-100}"
OUT="${CRASH_OUT:-$(mktemp -d /tmp/tidegate-crash.XXXXXX)}"
mkdir -p "$OUT"

endurance_setup

# As tests/crash_loop.rs: small batches and a short linger, so that many batches are in
# flight or awaiting their cursor store at any moment and kills land in the window the
# Kafka sink's tail read has to cover.
write_config() {
    cat >"$1/tidegate.toml" <<EOF
[gateway]
id = "gw-crash"
[journal]
dir = "$1/journal"
commit_interval = "1ms"
[mqtt]
listen = "127.0.0.1:$MQTT_PORT"
[http]
enabled = false
[[upstream]]
name = "cluster"
kind = "kafka"
brokers = ["127.0.0.1:$KAFKA_PORT"]
topic = "crash-loop"
partitions = 3
max_batch = 100
linger = "2ms"
request_timeout = "5s"
backoff_initial = "50ms"
backoff_max = "500ms"
EOF
}

# The running tidegate, Tansu and fleet each hold one slot of PIDS (a stopped one is never
# signalled again).
TG_SLOT="${#PIDS[@]}"
TANSU_SLOT=$(( TG_SLOT + 1 ))
FLEET_SLOT=$(( TG_SLOT + 2 ))
TG_PID=""
start_tidegate() {
    RUST_LOG=info "$TIDEGATE" run --config "$ROUND_DIR/tidegate.toml" >>"$ROUND_DIR/tidegate.log" 2>&1 &
    TG_PID=$!
    PIDS[TG_SLOT]="$TG_PID"
    wait_port "$MQTT_PORT" 30
}

elapsed() {
    awk -v s="$STARTED" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'
}

step "$KILLS kills in rounds of $ROUND_KILLS, seed $SEED (CRASH_SEED=$SEED replays the moments)"
RANDOM="$SEED"
STARTED="$(date +%s.%N)"
ACKED=0 MISSING=0 DUPLICATES=0 REPLAYS=0 OUT_OF_ORDER=0 FAILED=0 KILL_SECONDS=0
kill_no=0
round=0
while [ "$kill_no" -lt "$KILLS" ]; do
    round=$(( round + 1 ))
    ROUND_DIR="$OUT/round-$round"
    mkdir -p "$ROUND_DIR"
    KAFKA_PORT="$(free_port)"
    MQTT_PORT="$(free_port)"
    start_tansu "$KAFKA_PORT" "$KAFKA_PORT" "$ROUND_DIR/tansu.log"
    PIDS[TANSU_SLOT]="$TANSU_PID"
    wait_port "$KAFKA_PORT"
    write_config "$ROUND_DIR"
    start_tidegate
    "$SIM" fleet --broker "127.0.0.1:$MQTT_PORT" -n "$DEVICES" --rate "$RATE" --qos 1 \
        --window 10 --payload-size 100 --reconnect-max 300ms --drain-timeout 120s \
        --report "$ROUND_DIR/fleet-report.json" >"$ROUND_DIR/fleet.log" 2>&1 &
    FLEET_PID=$!
    PIDS[FLEET_SLOT]="$FLEET_PID"

    round_start="$(date +%s.%N)"
    for (( i = 0; i < ROUND_KILLS && kill_no < KILLS; i++ )); do
        up_ms=$(( MIN_UP_MS + RANDOM % (MAX_UP_MS - MIN_UP_MS + 1) ))
        sleep "$(awk -v ms="$up_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
        if ! kill -0 "$TG_PID" 2>/dev/null; then
            echo "tidegate exited by itself before kill $(( kill_no + 1 )); see $ROUND_DIR/tidegate.log" >&2
            exit 1
        fi
        kill -KILL "$TG_PID"
        wait "$TG_PID" 2>/dev/null || true
        kill_no=$(( kill_no + 1 ))
        printf 'kill %d of %d (round %d, up %d ms) at %s s\n' "$kill_no" "$KILLS" "$round" "$up_ms" "$(elapsed)"
        start_tidegate
    done
    KILL_SECONDS="$(awk -v k="$KILL_SECONDS" -v s="$round_start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", k + n - s }')"

    # The fleet waits for its outstanding PUBACKs, then the topic must hold every
    # acknowledged reading once.
    kill -TERM "$FLEET_PID"
    fleet_status=0
    wait "$FLEET_PID" || fleet_status=$?
    acked="$(sed -n 's/.* acked \([0-9][0-9]*\) .*/\1/p' "$ROUND_DIR/fleet.log" | head -n 1)"
    verify_status=0
    "$SIM" verify --brokers "127.0.0.1:$KAFKA_PORT" --topic crash-loop \
        --report "$ROUND_DIR/fleet-report.json" --timeout 300s >"$ROUND_DIR/verify.log" 2>&1 \
        || verify_status=$?
    read -r missing duplicates replays out_of_order \
        <<<"$(verify_counts "$(grep ' records: ' "$ROUND_DIR/verify.log" | tail -n 1)")"
    echo "round $round: acknowledged ${acked:-?}, lost ${missing:-?}, duplicated ${duplicates:-?} (replayed by the gateway ${replays:-?}), out of order ${out_of_order:-?}"
    if [ "$fleet_status" -ne 0 ] || [ "$verify_status" -ne 0 ] || [ "${missing:-x}" != "0" ] \
        || [ "${duplicates:-x}" != "0" ]; then
        echo "FAIL in round $round: fleet exit $fleet_status, verify exit $verify_status (see $ROUND_DIR)"
        FAILED=$(( FAILED + 1 ))
    fi
    ACKED=$(( ACKED + ${acked:-0} ))
    MISSING=$(( MISSING + ${missing:-0} ))
    DUPLICATES=$(( DUPLICATES + ${duplicates:-0} ))
    REPLAYS=$(( REPLAYS + ${replays:-0} ))
    OUT_OF_ORDER=$(( OUT_OF_ORDER + ${out_of_order:-0} ))

    kill "$TG_PID" "$TANSU_PID" 2>/dev/null || true
    wait "$TG_PID" "$TANSU_PID" 2>/dev/null || true
    PIDS[TG_SLOT]="" PIDS[TANSU_SLOT]="" PIDS[FLEET_SLOT]=""
    rm -rf "$ROUND_DIR/journal"
done

echo
echo "crash loop: $KILLS SIGKILLs in $round rounds (seed $SEED), ${KILL_SECONDS} s of killing, $(elapsed) s in all" \
    "with the drains and checks; acknowledged $ACKED, lost $MISSING, duplicated $DUPLICATES" \
    "(replayed by the gateway $REPLAYS), out of order $OUT_OF_ORDER"
if [ "$FAILED" -eq 0 ] && [ "$MISSING" -eq 0 ] && [ "$DUPLICATES" -eq 0 ] && [ "$OUT_OF_ORDER" -eq 0 ]; then
    echo "crash loop: OK (outputs in $OUT)"
else
    echo "crash loop: FAILED in $FAILED of $round rounds (outputs in $OUT)"
    exit 1
fi
