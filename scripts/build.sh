#!/usr/bin/env bash
# Builds sparse_dd into $DIST (default dist/):
#   sparse_dd.bundle.js        one self-contained JavaScript file (`deno bundle`);
#   release/                   what a host needs, nothing from this checkout: install.sh,
#                              README.md (docs/deploy.md) and sparse_dd.d/: deno (the Deno binary,
#                              or the compiled program, see DENORT_BIN), sparse_dd.js and
#                              sparse_dd.core.js (the bundle as Deno runs it fastest with no cache:
#                              scripts/eval_bundle.ts), lib/ and sparse_dd (the glibc deno runs
#                              with, and its loader), VERSION;
#   sparse_dd-VERSION-linux-x86_64.tar.gz
#                              release/ as sparse_dd-VERSION-linux-x86_64/: on the host,
#                              `tar xzf ... && sh sparse_dd-*/install.sh` (no node, npm or network);
#   sparse_dd-VERSION-1.x86_64.rpm
#                              the same as an RPM, when rpmbuild is installed (apt-get install rpm).
# With DENORT_BIN=/path/to/denort (the `denort` runtime of Deno 2.9.6, see docs/deploy.md), it also
# runs `deno compile` into $DIST/sparse_dd, runs that binary and refuses it unless it answers
# --version as sparse_dd; the release then ships it instead of runtime + bundle.
# With DESTDIR (or --install), the release is then installed under $DESTDIR (scripts/install.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_deno

DIST=${DIST:-$ROOT/dist}
VERSION=$(sed -n 's/^export const VERSION = "\(.*\)";$/\1/p' src/version.ts)
[ -n "$VERSION" ] || { echo "cannot read VERSION from src/version.ts" >&2; exit 1; }
NAME=sparse_dd-$VERSION-linux-x86_64

mkdir -p "$DIST"
echo "== deno bundle -> $DIST/sparse_dd.bundle.js" >&2
"$DENO" bundle --quiet --platform=deno -o "$DIST/sparse_dd.bundle.js" main.ts

# What `sparse_dd --version` prints: the check that a binary really is this program.
version_ok() {
  local out
  out=$(env -i PATH=/usr/bin:/bin DENO_DIR=/dev/null/sparse_dd "$@" --version 2>&1) || return 1
  [[ "$out" == "sparse_dd $VERSION "* ]]
}

compiled=""
rm -f "$DIST/sparse_dd"
if [ -n "${DENORT_BIN:-}" ]; then
  echo "== deno compile (DENORT_BIN=$DENORT_BIN) -> $DIST/sparse_dd" >&2
  [ -x "$DENORT_BIN" ] || { echo "DENORT_BIN=$DENORT_BIN is not an executable file" >&2; exit 1; }
  if ! "$DENO" compile --quiet -A --no-check --output "$DIST/sparse_dd" main.ts 2>"$DIST/compile.log"; then
    echo "deno compile failed with DENORT_BIN=$DENORT_BIN: see $DIST/compile.log" >&2
    exit 1
  fi
  rm -f "$DIST/compile.log"
  if ! version_ok "$DIST/sparse_dd"; then
    got=$(env -i PATH=/usr/bin:/bin "$DIST/sparse_dd" --version 2>&1 | head -n 1 || true)
    rm -f "$DIST/sparse_dd"
    echo "refusing the compiled binary: '$DIST/sparse_dd --version' printed '$got', not" >&2
    echo "'sparse_dd $VERSION ...': DENORT_BIN must be the denort runtime of Deno" >&2
    echo "$DENO_VERSION (denort-x86_64-unknown-linux-gnu), not deno itself (docs/deploy.md)" >&2
    exit 1
  fi
  compiled="$DIST/sparse_dd"
  echo "built $DIST/sparse_dd ($(du -h "$DIST/sparse_dd" | cut -f1)); it runs as sparse_dd $VERSION" >&2
else
  echo "== no DENORT_BIN: the release ships the Deno runtime (named sparse_dd) and the bundle" >&2
fi

echo "== $DIST/release -> $DIST/$NAME.tar.gz" >&2
rel=$DIST/release
rt=$rel/sparse_dd.d
rm -rf "$rel"
mkdir -p "$rt/lib"
install -m 755 scripts/install.sh "$rel/install.sh"
install -m 644 docs/deploy.md "$rel/README.md"
echo "$VERSION" >"$rt/VERSION"
if [ -n "$compiled" ]; then
  install -m 755 "$compiled" "$rt/deno"
else
  # The real file, not the .tools symlink: the release must not point into this checkout.
  install -m 755 "$(readlink -f "$DENO")" "$rt/deno"
  "$DENO" run --quiet --no-config -R -W scripts/eval_bundle.ts "$DIST/sparse_dd.bundle.js" "$rt"
  chmod 644 "$rt/sparse_dd.js" "$rt/sparse_dd.core.js"
fi
# Deno's Linux build needs glibc 2.27; dom0 (CentOS 7 based) has 2.17. So the runtime runs with
# the glibc it was built for, from this machine: its libraries in lib/ and its dynamic loader as
# sparse_dd.d/sparse_dd, which the launcher runs (`sparse_dd --library-path lib deno ...`). The
# process's /proc/PID/exe is then that loader, named sparse_dd, as xapi's stray-process check
# wants; programs sparse_dd starts (tap-ctl, logger) use the host's own libraries.
while read -r name arrow path _; do
  case "$name" in
    linux-vdso.so.*) ;;
    /*ld-linux*) install -m 755 "$(readlink -f "$name")" "$rt/sparse_dd" ;;
    *) [ "$arrow" = "=>" ] && install -m 644 "$(readlink -f "$path")" "$rt/lib/$name" ;;
  esac
done < <(ldd "$rt/deno")
[ -x "$rt/sparse_dd" ] || { echo "no dynamic loader found for $rt/deno" >&2; exit 1; }
if [ -n "$compiled" ]; then
  version_ok "$rt/sparse_dd" --library-path "$rt/lib" "$rt/deno" ||
    { echo "the compiled binary does not run with its loader" >&2; exit 1; }
else
  version_ok "$rt/sparse_dd" --library-path "$rt/lib" "$rt/deno" run -A --quiet --no-config \
    --no-lock "$rt/sparse_dd.js" || { echo "the bundle does not run" >&2; exit 1; }
fi
rm -f "$DIST/$NAME.tar.gz"
# SPARSE_DD_GZIP: the gzip level (tests use 1: faster, ~8% larger).
tar -C "$rel" --owner=0 --group=0 --numeric-owner --transform "s,^\\.,$NAME," -cf - . |
  gzip "-${SPARSE_DD_GZIP:-6}" >"$DIST/$NAME.tar.gz.tmp"
mv -f "$DIST/$NAME.tar.gz.tmp" "$DIST/$NAME.tar.gz"
echo "built $DIST/$NAME.tar.gz ($(du -h "$DIST/$NAME.tar.gz" | cut -f1))" >&2

if command -v rpmbuild >/dev/null 2>&1 && [ "${SPARSE_DD_RPM:-1}" = 1 ]; then
  SPARSE_DD_GZIP=${SPARSE_DD_GZIP:-6} bash "$ROOT/scripts/rpm.sh" "$rel" "$VERSION" \
    "$DIST/sparse_dd-$VERSION-1.x86_64.rpm"
else
  echo "== no RPM: SPARSE_DD_RPM=0, or no rpmbuild (Debian: apt-get install rpm)" >&2
fi

if [ -n "${DESTDIR:-}" ] || [ "${1:-}" = "--install" ]; then
  sh "$rel/install.sh"
fi
