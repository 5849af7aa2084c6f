#!/usr/bin/env bash
# The soak: hours of steady load with an upstream that keeps flapping, watching whether the
# gateway's memory, open files, journal or PUBACK latency creep, and checking at the end that
# every acknowledged reading reached Kafka once and in order.
#
#   devices ──MQTT QoS 1──▶ tidegate (release) ──▶ firmware-sim link ──▶ Tansu (Kafka)
#   1,000 × 5 readings/s     journal on disk        down OUTAGE every      in memory
#   5 % reconnect a minute                          FLAP_EVERY
#
# - the fleet is `firmware-sim soak`: 1,000 devices at 5 readings/s (5,000 readings/s), QoS 1,
#   100-byte payloads, each device dropping its connection (no DISCONNECT) with a probability
#   per reading that makes SOAK_RECONNECT_SHARE of the fleet reconnect each minute
#   (`--flap-rate`); it writes one row per SOAK_SAMPLE_EVERY with that interval's
#   publish→PUBACK p50/p99/max;
# - the upstream path goes through `firmware-sim link`, which cuts every connection for
#   SOAK_OUTAGE every SOAK_FLAP_EVERY (`--outage AFTER+LASTING`, one per flap), so a backlog
#   builds in the journal and drains after each outage; Tansu advertises the link's address so
#   the gateway's Kafka client stays behind it;
# - every SOAK_SAMPLE_EVERY a row goes to samples.csv: the gateway's RssAnon and RssFile
#   (/proc/PID/status), open fds (/proc/PID/fd), the journal as `tidegate status --json`
#   reports it (readings held, bytes held, bytes on disk, the upstream's backlog), tidegate's
#   CPU (share of one core over the interval), Tansu's RSS (it keeps the topic in memory,
#   roughly 100 bytes a reading) and the fleet's latest interval row;
# - the fleet reads the topic back while it runs (through the link, so with the same outages)
#   and at the end checks it against its report as `firmware-sim verify --report` does: every
#   acknowledged reading in Kafka, per device in order, none duplicated. Read as it arrives,
#   not once at the end, because the in-memory Tansu drops a topic's oldest records after a
#   few minutes;
# - at the end it prints the first 10 minutes against the last 10 (means and maxima) and the
#   delivery check. Exits non-zero if any of that fails.
#
# Usage: scripts/soak.sh [--duration 2h]      (or SOAK_DURATION=2h; s, m, h units)
# Environment (defaults in brackets): SOAK_DURATION [2h], SOAK_DEVICES [1000], SOAK_RATE [5]
# (readings/s per device), SOAK_FLAP_EVERY [5m], SOAK_OUTAGE [60s], SOAK_RECONNECT_SHARE
# [0.05] (of the devices, per minute), SOAK_SAMPLE_EVERY [15s], SOAK_OUT [a new /tmp dir]:
# where the logs, CSVs, fleet report and journal go. CARGO_TARGET_DIR is honoured.
#
# Loopback only; installs the brokers as scripts/bench.sh does (scripts/brokers.sh); builds
# the release binaries first; stops everything it started on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/endurance-common.sh
source scripts/endurance-common.sh
one_flag duration SOAK_DURATION "$@"

DURATION="${SOAK_DURATION:-2h}"
DEVICES="${SOAK_DEVICES:-1000}"
RATE="${SOAK_RATE:-5}"
FLAP_EVERY="${SOAK_FLAP_EVERY:-5m}"
OUTAGE="${SOAK_OUTAGE:-60s}"
RECONNECT_SHARE="${SOAK_RECONNECT_SHARE:-0.05}"
SAMPLE_EVERY="${SOAK_SAMPLE_EVERY:-15s}"
OUT="${SOAK_OUT:-$(mktemp -d /tmp/tidegate-soak.XXXXXX)}"
mkdir -p "$OUT"

endurance_setup

DURATION_S="$(seconds "$DURATION")"
FLAP_S="$(seconds "$FLAP_EVERY")"
OUTAGE_S="$(seconds "$OUTAGE")"
SAMPLE_S="$(seconds "$SAMPLE_EVERY")"
if [ "$OUTAGE_S" -ge "$FLAP_S" ]; then
    echo "SOAK_OUTAGE ($OUTAGE) must be shorter than SOAK_FLAP_EVERY ($FLAP_EVERY)" >&2
    exit 2
fi

KAFKA_PORT="$(free_port)"
LINK_PORT="$(free_port)"
MQTT_PORT="$(free_port)"
HTTP_PORT="$(free_port)"

step "Tansu on 127.0.0.1:$KAFKA_PORT, advertised through the link on 127.0.0.1:$LINK_PORT"
start_tansu "$KAFKA_PORT" "$LINK_PORT" "$OUT/tansu.log"
PIDS+=("$TANSU_PID")
wait_port "$KAFKA_PORT"

# One outage per flap period that ends before the run does.
OUTAGES=()
for (( t = FLAP_S; t + OUTAGE_S < DURATION_S; t += FLAP_S )); do
    OUTAGES+=(--outage "${t}s+${OUTAGE_S}s")
done
step "link 127.0.0.1:$LINK_PORT -> $KAFKA_PORT with $(( ${#OUTAGES[@]} / 2 )) outages of ${OUTAGE_S}s every ${FLAP_S}s"
"$SIM" link --listen "127.0.0.1:$LINK_PORT" --target "127.0.0.1:$KAFKA_PORT" \
    --report-every 60s "${OUTAGES[@]}" >"$OUT/link.log" 2>&1 &
PIDS+=($!)
wait_port "$LINK_PORT"

CONFIG="$OUT/tidegate.toml"
cat >"$CONFIG" <<EOF
[gateway]
id = "gw-soak"
[journal]
dir = "$OUT/journal"
max_size = "4GiB"
[mqtt]
listen = "127.0.0.1:$MQTT_PORT"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[[upstream]]
name = "kafka"
kind = "kafka"
brokers = ["127.0.0.1:$LINK_PORT"]
topic = "soak"
partitions = 4
EOF
step "tidegate on 127.0.0.1:$MQTT_PORT ($CONFIG)"
RUST_LOG=info "$TIDEGATE" run --config "$CONFIG" >"$OUT/tidegate.log" 2>&1 &
PIDS+=($!)
TG_PID=$!
wait_port "$MQTT_PORT"

# Per reading, so that RECONNECT_SHARE of the devices reconnect each minute.
FLAP_RATE="$(awk -v s="$RECONNECT_SHARE" -v r="$RATE" 'BEGIN { printf "%.9f", s / (r * 60) }')"
step "fleet: $DEVICES devices × $RATE readings/s for ${DURATION_S}s, QoS 1, flap rate $FLAP_RATE per reading"
"$SIM" soak --broker "127.0.0.1:$MQTT_PORT" -n "$DEVICES" --rate "$RATE" \
    --duration "${DURATION_S}s" --payload-size 100 --qos 1 --window 10 --ramp-up 10s \
    --flap-rate "$FLAP_RATE" --drain-timeout 120s \
    --samples "$OUT/fleet.csv" --sample-every "${SAMPLE_S}s" \
    --report "$OUT/fleet-report.json" \
    --kafka "127.0.0.1:$LINK_PORT" --topic soak --kafka-timeout 600s >"$OUT/fleet.log" 2>&1 &
FLEET_PID=$!
PIDS+=("$FLEET_PID")

# --- Sampler --------------------------------------------------------------------------------
SAMPLES="$OUT/samples.csv"
echo "unix_s,elapsed_s,rss_anon_kb,rss_file_kb,fds,journal_records,journal_bytes_held,journal_disk_bytes,backlog,tidegate_cpu_pct,tansu_rss_kb,fleet_acked,fleet_connected,fleet_disconnects,acked_in_interval,puback_p50_ms,puback_p99_ms,puback_max_ms,kafka_received" >"$SAMPLES"
# One row; a figure that cannot be read is left empty rather than ending the soak.
LAST_TICKS=0
LAST_NOW=0
sample() {
    local now elapsed anon file fds journal fleet ticks cpu tansu
    set +e
    now="$(date +%s)"
    elapsed=$(( now - START ))
    anon="$(awk '/^RssAnon:/ { print $2 }' "/proc/$TG_PID/status" 2>/dev/null || echo)"
    file="$(awk '/^RssFile:/ { print $2 }' "/proc/$TG_PID/status" 2>/dev/null || echo)"
    fds="$(ls "/proc/$TG_PID/fd" 2>/dev/null | wc -l)"
    # utime + stime (clock ticks) since the last row, as a share of one core.
    ticks="$(awk '{ print $14 + $15 }' "/proc/$TG_PID/stat" 2>/dev/null)"
    cpu=""
    if [ -n "$ticks" ] && [ "$LAST_NOW" -gt 0 ] && [ "$now" -gt "$LAST_NOW" ]; then
        cpu="$(awk -v t="$(( ticks - LAST_TICKS ))" -v hz="$(getconf CLK_TCK)" -v s="$(( now - LAST_NOW ))" \
            'BEGIN { printf "%.1f", 100 * t / hz / s }')"
    fi
    LAST_TICKS="${ticks:-0}"
    LAST_NOW="$now"
    tansu="$(awk '/^VmRSS:/ { print $2 }' "/proc/$TANSU_PID/status" 2>/dev/null)"
    journal="$("$TIDEGATE" status --json --config "$CONFIG" 2>/dev/null | python3 -c '
import json, sys
try:
    j = json.load(sys.stdin)
    backlog = sum(u["backlog"] for u in j.get("upstreams", []))
    print(j["records"], j["bytes_held"], j["disk_bytes"], backlog, sep=",")
except Exception:
    print(",,,")
')"
    # The fleet's latest interval row: acked, connected, disconnects, acked_in_interval, p50,
    # p99, max, readings read back from Kafka.
    fleet="$(tail -n 1 "$OUT/fleet.csv" 2>/dev/null | awk -F, 'NR == 1 && $1 ~ /^[0-9]+$/ { print $4 "," $5 "," $6 "," $7 "," $8 "," $9 "," $10 "," $11 }')"
    [ -n "$fleet" ] || fleet=",,,,,,,"
    echo "$now,$elapsed,$anon,$file,$fds,$journal,$cpu,$tansu,$fleet" >>"$SAMPLES"
    set -e
}
START="$(date +%s)"
(
    while kill -0 "$FLEET_PID" 2>/dev/null; do
        sleep "$SAMPLE_S"
        sample
    done
) &
SAMPLER_PID=$!
PIDS+=("$SAMPLER_PID")

step "soaking for ${DURATION_S}s (samples: $SAMPLES, logs: $OUT)"
FLEET_STATUS=0
wait "$FLEET_PID" || FLEET_STATUS=$?
wait "$SAMPLER_PID" 2>/dev/null || true
grep -E "^devices " "$OUT/fleet.log" || true

if ! kill -0 "$TG_PID" 2>/dev/null; then
    echo "tidegate exited during the soak; see $OUT/tidegate.log" >&2
    exit 1
fi

step "first 10 minutes against the last 10"
python3 - "$SAMPLES" "$DURATION_S" <<'PY'
import csv, sys
# The rows of the run itself (not the one taken after the fleet stopped).
rows = [r for r in csv.DictReader(open(sys.argv[1])) if float(r["elapsed_s"]) <= float(sys.argv[2])]
def num(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError):
        return None
end = max(num(r, "elapsed_s") or 0 for r in rows)
first = [r for r in rows if (num(r, "elapsed_s") or 0) <= 600]
last = [r for r in rows if (num(r, "elapsed_s") or 0) > end - 600]
cols = [("rss_anon_kb", "RssAnon KiB"), ("rss_file_kb", "RssFile KiB"), ("fds", "open fds"),
        ("journal_records", "journal readings"), ("journal_bytes_held", "journal bytes held"),
        ("journal_disk_bytes", "journal bytes on disk"), ("backlog", "upstream backlog"),
        ("tidegate_cpu_pct", "tidegate CPU %"), ("tansu_rss_kb", "Tansu RSS KiB"),
        ("fleet_connected", "devices connected"), ("acked_in_interval", "acked per sample"),
        ("puback_p99_ms", "PUBACK p99 ms"), ("puback_max_ms", "PUBACK max ms")]
def stats(rs, k):
    v = [x for x in (num(r, k) for r in rs) if x is not None]
    if not v:
        return "-", "-"
    return f"{sum(v) / len(v):.1f}", f"{max(v):.1f}"
print(f"{len(rows)} samples over {end:.0f} s; first 10 min: {len(first)} samples, last 10 min: {len(last)}")
print(f"{'':24} {'first mean':>14} {'first max':>14} {'last mean':>14} {'last max':>14}")
for k, name in cols:
    fm, fx = stats(first, k)
    lm, lx = stats(last, k)
    print(f"{name:24} {fm:>14} {fx:>14} {lm:>14} {lx:>14}")
PY

step "delivery: every acknowledged reading in Kafka, per device in order, none duplicated"
SUMMARY="$(grep ' records: ' "$OUT/fleet.log" | tail -n 1)"
echo "$SUMMARY"
read -r MISSING DUPLICATES _ _ <<<"$(verify_counts "$SUMMARY")"
grep -E '^(devices|acked rate|publish)' "$OUT/fleet.log" || true
echo "tidegate: $(grep -c 'ERROR' "$OUT/tidegate.log" || true) ERROR lines in its log"

ok=1
[ "$FLEET_STATUS" -eq 0 ] || { echo "FAIL: the fleet exited $FLEET_STATUS: readings left unacknowledged, or missing (${MISSING:-?}) or out of order in Kafka (see $OUT/fleet.log)"; ok=0; }
[ "${DUPLICATES:-x}" = "0" ] || { echo "FAIL: ${DUPLICATES:-unknown} duplicates in Kafka"; ok=0; }
if [ "$ok" -eq 1 ]; then
    echo "soak: OK — every acknowledged reading in Kafka once, in order (outputs in $OUT)"
else
    echo "soak: FAILED (outputs in $OUT)"
    exit 1
fi
