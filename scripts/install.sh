#!/usr/bin/env bash
# Installs sparse_dd where xapi looks for it, under $DESTDIR (default: the real root):
#   $DESTDIR/opt/xensource/libexec/sparse_dd   the program (xapi's sparse_dd and the plugin);
#   $DESTDIR/etc/xapi.d/plugins/sparse_dd      the XAPI host plugin: a thin script that execs the
#                                              program in plugin mode with xapi's argv[1].
# The program comes from $DIST (default dist/, made by scripts/build.sh): the compiled binary
# dist/sparse_dd when there is one; otherwise dist/sparse_dd.bundle.js is installed next to a
# launcher script named sparse_dd that runs it with `deno run -A`. xapi runs both with PATH only
# (/sbin:/usr/sbin:/bin:/usr/bin), so the launcher names Deno by absolute path: $DENO_BIN, or the
# deno found on PATH now.
# Note: xapi kills stray copies after a restart only if /proc/<pid>/exe is named sparse_dd, which
# holds for the compiled binary and not for the launcher (its process is deno).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIST=${DIST:-$ROOT/dist}
DESTDIR=${DESTDIR:-}
LIBEXEC=$DESTDIR/opt/xensource/libexec
PLUGINS=$DESTDIR/etc/xapi.d/plugins

install -d -m 755 "$LIBEXEC" "$PLUGINS"

if [ -x "$DIST/sparse_dd" ]; then
  install -m 755 "$DIST/sparse_dd" "$LIBEXEC/sparse_dd.new"
  rm -f "$LIBEXEC/sparse_dd.bundle.js"
  echo "installed the compiled binary: $LIBEXEC/sparse_dd" >&2
elif [ -f "$DIST/sparse_dd.bundle.js" ]; then
  deno_bin=${DENO_BIN:-$(command -v deno || true)}
  if [ -z "$deno_bin" ] || [ ! -x "$deno_bin" ]; then
    echo "install.sh: only the bundle was built and no deno was found (set DENO_BIN)" >&2
    exit 1
  fi
  case "$deno_bin" in
    /*) ;;
    *) deno_bin=$(cd "$(dirname "$deno_bin")" && pwd)/$(basename "$deno_bin") ;;
  esac
  install -m 644 "$DIST/sparse_dd.bundle.js" "$LIBEXEC/sparse_dd.bundle.js"
  # The launcher finds the bundle next to itself, so a DESTDIR install runs where it lies.
  cat >"$LIBEXEC/sparse_dd.new" <<EOF
#!/bin/sh
# sparse_dd launcher: the compiled binary could not be built, so this runs the bundle with Deno.
dir=\$(dirname -- "\$(readlink -f -- "\$0")")
DENO_NO_UPDATE_CHECK=1 exec '$deno_bin' run -A --quiet --no-config --no-lock "\$dir/sparse_dd.bundle.js" "\$@"
EOF
  chmod 755 "$LIBEXEC/sparse_dd.new"
  echo "installed a launcher for the bundle (deno: $deno_bin): $LIBEXEC/sparse_dd" >&2
else
  echo "install.sh: nothing to install in $DIST: run scripts/build.sh first" >&2
  exit 1
fi
# Replace atomically: xapi may be running the old one.
mv -f "$LIBEXEC/sparse_dd.new" "$LIBEXEC/sparse_dd"

cat >"$PLUGINS/sparse_dd.new" <<'EOF'
#!/bin/sh
# XAPI host plugin sparse_dd: xapi passes the whole XML-RPC methodCall as $1.
exec /opt/xensource/libexec/sparse_dd --xapi-plugin "$1"
EOF
chmod 755 "$PLUGINS/sparse_dd.new"
mv -f "$PLUGINS/sparse_dd.new" "$PLUGINS/sparse_dd"
echo "installed the XAPI plugin: $PLUGINS/sparse_dd" >&2
