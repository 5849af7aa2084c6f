#!/usr/bin/env bash
# Installs tidegate as a systemd service. Idempotent: re-running upgrades the binary and
# unit and keeps an existing /etc/tidegate/tidegate.toml and the journal.
#   sudo deploy/install.sh [--binary PATH]     install or upgrade
#   sudo deploy/install.sh --uninstall         remove binary and unit, keep config and journal
#   sudo deploy/install.sh --uninstall --purge also delete /etc/tidegate and /var/lib/tidegate
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
binary="$here/../target/release/tidegate"
uninstall=0
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0 $*)" >&2
  exit 1
fi

if [ "$uninstall" = 1 ]; then
  systemctl disable --now tidegate.service 2>/dev/null || true
  rm -f /etc/systemd/system/tidegate.service /usr/local/bin/tidegate
  systemctl daemon-reload 2>/dev/null || true
  if [ "$purge" = 1 ]; then
    rm -rf /etc/tidegate /var/lib/tidegate
    userdel tidegate 2>/dev/null || true
    echo "tidegate removed, with its configuration and journal."
  else
    echo "tidegate removed; kept /etc/tidegate and the journal in /var/lib/tidegate (--purge deletes them)."
  fi
  exit 0
fi

if [ ! -x "$binary" ]; then
  echo "no binary at $binary: build it with 'cargo build --release' or pass --binary PATH" >&2
  exit 1
fi

id tidegate >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tidegate --shell /usr/sbin/nologin tidegate
getent group dialout >/dev/null && usermod -a -G dialout tidegate
install -m 0755 "$binary" /usr/local/bin/tidegate
install -d -m 0755 /etc/tidegate
if [ ! -e /etc/tidegate/tidegate.toml ]; then
  install -m 0640 -g tidegate "$here/tidegate.toml" /etc/tidegate/tidegate.toml
  echo "installed example config /etc/tidegate/tidegate.toml: set [gateway] id and your [[upstream]]"
else
  echo "kept existing /etc/tidegate/tidegate.toml"
fi
/usr/local/bin/tidegate check-config --config /etc/tidegate/tidegate.toml >/dev/null
install -m 0644 "$here/tidegate.service" /etc/systemd/system/tidegate.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable tidegate.service
  systemctl restart tidegate.service
  echo "tidegate enabled and started: systemctl status tidegate; journalctl -u tidegate"
else
  echo "systemd is not running here; unit installed, start it with systemctl once it is."
fi
