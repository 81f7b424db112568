#!/usr/bin/env bash
# Test setup: a real xenstored (Debian's xen-utils-4.17, unpacked, not installed) plus the
# LD_PRELOAD shim from tests/fixtures/xs-shim.c, so the discovery tests can run the stock xenstore-read
# against a real daemon on a machine without Xen. Idempotent; everything lands in .tools/xen.
# Installing xen-utils-4.17 would drag in udev and systemd, hence apt-get download + dpkg -x.
# Prints nothing on stdout; tests start and stop the daemon themselves.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

XEN="$TOOLS/xen"
DAEMON="$XEN/root/usr/lib/xen-4.17/bin/xenstored"
SHIM_SRC="$ROOT/tests/fixtures/xs-shim.c"
SHIM="$XEN/xs-shim.so"

# The daemon links against these; the clients come from xenstore-utils.
ensure_apt xenstore-utils libxenmisc4.17 libxenevtchn1 libxengnttab1 gcc libc6-dev >&2

mkdir -p "$XEN"
if [ ! -x "$DAEMON" ]; then
  tmp=$(mktemp -d "$XEN/dl.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # _apt cannot write into root-owned temp dirs; let it, so apt does not warn.
  chmod 0777 "$tmp"
  echo "downloading xen-utils-4.17 into $XEN" >&2
  (cd "$tmp" && apt-get download -q xen-utils-4.17 >&2) || {
    [ "$APT_UPDATED" -eq 0 ] && apt-get update -qq >&2 && APT_UPDATED=1
    (cd "$tmp" && apt-get download -q xen-utils-4.17 >&2)
  }
  rm -rf "$XEN/root"
  dpkg -x "$tmp"/xen-utils-4.17_*.deb "$XEN/root"
  rm -rf "$tmp"
  trap - EXIT
fi
[ -x "$DAEMON" ] || { echo "xenstored missing after unpacking: $DAEMON" >&2; exit 1; }

if [ ! -f "$SHIM" ] || [ "$SHIM_SRC" -nt "$SHIM" ]; then
  echo "building $SHIM" >&2
  gcc -shared -fPIC -O2 -Wall -Wextra -o "$SHIM.tmp" "$SHIM_SRC" -ldl
  mv "$SHIM.tmp" "$SHIM"
fi
