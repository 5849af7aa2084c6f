#!/usr/bin/env bash
# Builds the Debian package target/debian/tidegate_<version>_<arch>.deb with cargo-deb
# (installed from crates.io if missing): the release binary, stripped; the unit of
# deploy/tidegate.service with the binary at /usr/bin/tidegate; the example config as a
# conffile; the sysusers.d and tmpfiles.d entries; the maintainer scripts of deploy/debian/.
#   scripts/build-deb.sh                 build (release profile) and package
#   scripts/build-deb.sh --no-build      package the binary already in target/release
#   scripts/build-deb.sh --target T      cross build for the Rust target T (see
#                                        docs/operations.md for what that needs)
# Extra arguments go to `cargo deb`. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb (cargo install, from crates.io)"
    cargo install --locked cargo-deb
fi

# The unit as the package installs it: the same file as deploy/install.sh's, with the
# binary where Debian puts a packaged one.
mkdir -p target/deb-assets
sed 's|/usr/local/bin/tidegate|/usr/bin/tidegate|g' deploy/tidegate.service \
    >target/deb-assets/tidegate.service
if grep -q /usr/local/ target/deb-assets/tidegate.service; then
    echo "error: the packaged unit still names /usr/local/" >&2
    exit 1
fi

out="$(cargo deb --strip "$@" 2>&1 | tee /dev/stderr | tail -n 1)"
case "$out" in
    *.deb) echo "$out" ;;
    *) echo "error: cargo deb printed no package path" >&2; exit 1 ;;
esac
