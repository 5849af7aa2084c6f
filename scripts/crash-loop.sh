#!/usr/bin/env bash
# The crash loop at length: a fleet publishes at QoS 1 while a release tidegate forwarding to
# Tansu is killed with SIGKILL again and again (500 times by default), each time after a
# random short run (0.2–2 s once its MQTT port answers), and restarted on the same journal.
# At the end every acknowledged reading must be in Kafka exactly once, in order per device:
# 0 lost and 0 duplicated, checked by `firmware-sim verify --report` against the fleet's
# report of what tidegate acknowledged (the check tests/crash_loop.rs makes with 20 kills).
#
# Usage: scripts/crash-loop.sh [--kills N]       (or CRASH_KILLS=N)
# Environment (defaults in brackets): CRASH_KILLS [500], CRASH_SEED [random; printed, and
# replays the same kill moments], CRASH_MIN_UP_MS / CRASH_MAX_UP_MS [200 / 2000], CRASH_DEVICES
# [20], CRASH_RATE [100] (readings/s per device), CRASH_OUT [a new /tmp dir]: logs, fleet
# report, journal. CARGO_TARGET_DIR is honoured.
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
SEED="${CRASH_SEED:-$(( $(od -An -N2 -tu2 /dev/urandom) ))}"
MIN_UP_MS="${CRASH_MIN_UP_MS:-200}"
MAX_UP_MS="${CRASH_MAX_UP_MS:-2000}"
DEVICES="${CRASH_DEVICES:-20}"
RATE="${CRASH_RATE:-100}"
OUT="${CRASH_OUT:-$(mktemp -d /tmp/tidegate-crash.XXXXXX)}"
mkdir -p "$OUT"

endurance_setup

KAFKA_PORT="$(free_port)"
MQTT_PORT="$(free_port)"

step "Tansu on 127.0.0.1:$KAFKA_PORT"
start_tansu "$KAFKA_PORT" "$KAFKA_PORT" "$OUT/tansu.log"

# As tests/crash_loop.rs: small batches and a short linger, so that many batches are in
# flight or awaiting their cursor store at any moment and kills land in the window the
# Kafka sink's tail read has to cover.
CONFIG="$OUT/tidegate.toml"
cat >"$CONFIG" <<EOF
[gateway]
id = "gw-crash"
[journal]
dir = "$OUT/journal"
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

# The running tidegate holds one slot of PIDS (a killed one is never signalled again).
TG_PID=""
TG_SLOT="${#PIDS[@]}"
start_tidegate() {
    RUST_LOG=info "$TIDEGATE" run --config "$CONFIG" >>"$OUT/tidegate.log" 2>&1 &
    TG_PID=$!
    PIDS[TG_SLOT]="$TG_PID"
    wait_port "$MQTT_PORT" 30
}

step "tidegate on 127.0.0.1:$MQTT_PORT ($CONFIG)"
start_tidegate

step "fleet: $DEVICES devices × $RATE readings/s, QoS 1, until the kills are done"
"$SIM" fleet --broker "127.0.0.1:$MQTT_PORT" -n "$DEVICES" --rate "$RATE" --qos 1 \
    --window 10 --payload-size 100 --reconnect-max 300ms --drain-timeout 120s \
    --report "$OUT/fleet-report.json" >"$OUT/fleet.log" 2>&1 &
FLEET_PID=$!
PIDS+=("$FLEET_PID")

step "$KILLS kills, seed $SEED (CRASH_SEED=$SEED replays the moments)"
RANDOM="$SEED"
STARTED="$(date +%s.%N)"
for (( i = 1; i <= KILLS; i++ )); do
    up_ms=$(( MIN_UP_MS + RANDOM % (MAX_UP_MS - MIN_UP_MS + 1) ))
    sleep "$(awk -v ms="$up_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
    if ! kill -0 "$TG_PID" 2>/dev/null; then
        echo "tidegate exited by itself before kill $i; see $OUT/tidegate.log" >&2
        exit 1
    fi
    kill -KILL "$TG_PID"
    wait "$TG_PID" 2>/dev/null || true
    printf 'kill %d of %d (up %d ms) at %.1f s\n' "$i" "$KILLS" "$up_ms" \
        "$(awk -v s="$STARTED" -v n="$(date +%s.%N)" 'BEGIN { print n - s }')"
    start_tidegate
done
KILL_SECONDS="$(awk -v s="$STARTED" -v n="$(date +%s.%N)" 'BEGIN { printf "%.0f", n - s }')"

step "stopping the fleet (it waits for its outstanding PUBACKs)"
kill -TERM "$FLEET_PID"
FLEET_STATUS=0
wait "$FLEET_PID" || FLEET_STATUS=$?
grep -E '^devices ' "$OUT/fleet.log" || true
ACKED="$(sed -n 's/.* acked \([0-9][0-9]*\) .*/\1/p' "$OUT/fleet.log" | head -n 1)"

step "delivery: every acknowledged reading in Kafka once, in order"
VERIFY_STATUS=0
"$SIM" verify --brokers "127.0.0.1:$KAFKA_PORT" --topic crash-loop \
    --report "$OUT/fleet-report.json" --timeout 300s >"$OUT/verify.log" 2>&1 || VERIFY_STATUS=$?
SUMMARY="$(grep ' records: ' "$OUT/verify.log" | tail -n 1)"
echo "$SUMMARY"
read -r MISSING DUPLICATES REPLAYS OUT_OF_ORDER <<<"$(verify_counts "$SUMMARY")"
TOTAL_SECONDS="$(awk -v s="$STARTED" -v n="$(date +%s.%N)" 'BEGIN { printf "%.0f", n - s }')"

echo
echo "crash loop: $KILLS SIGKILLs in ${KILL_SECONDS} s (seed $SEED), ${TOTAL_SECONDS} s with the drain and check;" \
    "acknowledged ${ACKED:-?}, lost ${MISSING:-?}, duplicated ${DUPLICATES:-?}" \
    "(replayed by the gateway ${REPLAYS:-?}), out of order ${OUT_OF_ORDER:-?}"
ok=1
[ "$FLEET_STATUS" -eq 0 ] || { echo "FAIL: the fleet exited $FLEET_STATUS (readings left unacknowledged; see $OUT/fleet.log)"; ok=0; }
[ "$VERIFY_STATUS" -eq 0 ] || { echo "FAIL: verify found missing or reordered readings (see $OUT/verify.log)"; ok=0; }
[ "${MISSING:-x}" = "0" ] || { echo "FAIL: ${MISSING:-unknown} acknowledged readings lost"; ok=0; }
[ "${DUPLICATES:-x}" = "0" ] || { echo "FAIL: ${DUPLICATES:-unknown} readings duplicated"; ok=0; }
if [ "$ok" -eq 1 ]; then
    echo "crash loop: OK (outputs in $OUT)"
else
    echo "crash loop: FAILED (outputs in $OUT)"
    exit 1
fi
