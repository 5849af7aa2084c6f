#!/usr/bin/env bash
# Installs tidegate as a systemd service. Idempotent: re-running upgrades the binary and the
# unit and keeps an existing /etc/tidegate/tidegate.toml and the journal.
#   sudo deploy/install.sh [--binary PATH]         install or upgrade
#   sudo deploy/install.sh --uninstall             remove binary and unit; keep config and journal
#   sudo deploy/install.sh --uninstall --purge     also delete /etc/tidegate, /var/lib/tidegate, the user
#   deploy/install.sh --root DIR [...]             the same into DIR (or DESTDIR=DIR): for packaging
#                                                  and tests; no user, no systemctl, no root needed
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
binary="$here/../target/release/tidegate"
root="${DESTDIR:-}"
uninstall=0
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --root) root="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
  echo "--purge only goes with --uninstall" >&2
  exit 2
fi
# A root of "/" is the live system.
root="${root%/}"
live=0
[ -z "$root" ] && live=1

bin_path="$root/usr/local/bin/tidegate"
unit_path="$root/etc/systemd/system/tidegate.service"
sysusers_path="$root/usr/lib/sysusers.d/tidegate.conf"
doc_dir="$root/usr/share/doc/tidegate"
conf_dir="$root/etc/tidegate"
state_dir="$root/var/lib/tidegate"

if [ "$live" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0 $*), or install into a directory with --root DIR" >&2
  exit 1
fi

# systemctl only on the live system, and only when systemd runs (not in a container build).
have_systemd() { [ "$live" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }

if [ "$uninstall" = 1 ]; then
  if have_systemd; then
    systemctl disable --now tidegate.service 2>/dev/null || true
  fi
  rm -f "$unit_path" "$bin_path" "$sysusers_path"
  rm -rf "$doc_dir"
  if have_systemd; then
    systemctl daemon-reload || true
  fi
  if [ "$purge" = 1 ]; then
    rm -rf "$conf_dir" "$state_dir"
    if [ "$live" = 1 ] && id tidegate >/dev/null 2>&1; then
      userdel tidegate 2>/dev/null || true
    fi
    echo "tidegate removed, with its configuration and journal."
  else
    echo "tidegate removed; kept $conf_dir and the journal in $state_dir (--uninstall --purge deletes them)."
  fi
  exit 0
fi

if [ ! -x "$binary" ]; then
  echo "no binary at $binary: build it with 'cargo build --release' or pass --binary PATH" >&2
  exit 1
fi

# Refuse a broken example before touching anything.
"$binary" check-config --config "$here/tidegate.toml" >/dev/null

install -d -m 0755 "$(dirname "$bin_path")" "$(dirname "$unit_path")" "$(dirname "$sysusers_path")" "$doc_dir"
# Through a temporary name and a rename, so a running daemon's binary is replaced, not
# overwritten in place ("text file busy"); it runs on until the restart below.
install -m 0755 "$binary" "$bin_path.new"
mv -f "$bin_path.new" "$bin_path"
install -m 0644 "$here/tidegate.service" "$unit_path"
install -m 0644 "$here/../README.md" "$doc_dir/README.md"
# The README links into docs/: install the pages beside it so the links resolve.
install -d -m 0755 "$doc_dir/docs"
install -m 0644 "$here"/../docs/*.md "$doc_dir/docs/"

# The dedicated user, declared for systemd-sysusers (which also creates it at boot if it is
# ever missing) and in the dialout group for serial ports.
install -m 0644 "$here/tidegate.sysusers" "$sysusers_path"
if [ "$live" = 1 ] && ! id tidegate >/dev/null 2>&1; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$sysusers_path"
  else
    useradd --system --home-dir /var/lib/tidegate --shell /usr/sbin/nologin tidegate
  fi
fi
if [ "$live" = 1 ] && getent group dialout >/dev/null; then
  usermod -a -G dialout tidegate
fi

install -d -m 0755 "$conf_dir"
if [ ! -e "$conf_dir/tidegate.toml" ]; then
  if [ "$live" = 1 ]; then
    install -m 0640 -g tidegate "$here/tidegate.toml" "$conf_dir/tidegate.toml"
  else
    install -m 0640 "$here/tidegate.toml" "$conf_dir/tidegate.toml"
  fi
  echo "installed the commented example config $conf_dir/tidegate.toml: set [gateway] id and your [[upstream]]"
else
  echo "kept the existing $conf_dir/tidegate.toml"
fi
# Secrets (upstream passwords, TLS keys, the device credentials file) go in here: readable
# by the service's group only, so the config loader has no reason to warn about them.
if [ "$live" = 1 ]; then
  install -d -m 0750 -g tidegate "$conf_dir/secrets"
else
  install -d -m 0750 "$conf_dir/secrets"
fi
# An existing config that the new binary refuses is reported, not overwritten.
if ! "$bin_path" check-config --config "$conf_dir/tidegate.toml" >/dev/null; then
  echo "warning: $conf_dir/tidegate.toml is not valid for this tidegate (see above); fix it before starting" >&2
fi

if have_systemd; then
  systemctl daemon-reload
  systemctl enable tidegate.service
  systemctl restart tidegate.service
  echo "tidegate enabled and started: systemctl status tidegate; journalctl -u tidegate"
elif [ "$live" = 1 ]; then
  echo "systemd is not running here; unit installed, start it with systemctl once it is."
else
  echo "installed into $root (no user created, no systemctl run)."
fi
