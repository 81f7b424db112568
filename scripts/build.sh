#!/usr/bin/env bash
# Builds sparse_dd:
#   dist/sparse_dd.bundle.js  always: one self-contained JavaScript file (`deno bundle`), run with
#                             `deno run -A dist/sparse_dd.bundle.js ...`;
#   dist/sparse_dd            where `deno compile` can get its runtime (denort): a self-contained
#                             binary. deno compile downloads denort from dl.deno.land unless
#                             DENORT_BIN names a local copy; on a machine that reaches neither,
#                             this step is reported and skipped, and the bundle is still built.
# With DESTDIR or --install, the result is installed as xapi expects:
#   $DESTDIR/opt/xensource/libexec/sparse_dd (see scripts/install.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_deno

mkdir -p dist
echo "== deno bundle -> dist/sparse_dd.bundle.js" >&2
"$DENO" bundle --quiet --platform=deno -o dist/sparse_dd.bundle.js main.ts

echo "== deno compile -> dist/sparse_dd" >&2
if [ -n "${DENORT_BIN:-}" ]; then
  [ -x "$DENORT_BIN" ] || { echo "DENORT_BIN=$DENORT_BIN is not an executable file" >&2; exit 1; }
  echo "using DENORT_BIN=$DENORT_BIN" >&2
fi
rm -f dist/sparse_dd
if "$DENO" compile --quiet -A --no-check --output dist/sparse_dd main.ts 2>dist/compile.log; then
  rm -f dist/compile.log
  echo "built dist/sparse_dd ($(du -h dist/sparse_dd | cut -f1))" >&2
else
  echo "deno compile could not build dist/sparse_dd: it needs the denort runtime, which it" >&2
  echo "downloads from dl.deno.land (unreachable here) unless DENORT_BIN points at a local" >&2
  echo "denort-x86_64-unknown-linux-gnu binary. Details: dist/compile.log" >&2
  echo "dist/sparse_dd.bundle.js is built and runs with: deno run -A dist/sparse_dd.bundle.js" >&2
  [ "${REQUIRE_BINARY:-0}" = 1 ] && exit 1
fi

if [ -n "${DESTDIR:-}" ] || [ "${1:-}" = "--install" ]; then
  bash "$ROOT/scripts/install.sh"
fi
