#!/usr/bin/env bash
# The main job on a built-in sample: makes a 2 GiB sparse disk holding a little data and a
# 512 MiB dense disk that is mostly zero runs, copies each with sparse_dd (progress bar and stats),
# checks the copies with cmp and compares allocation with du.
# Needs only node/npm on a fresh Debian machine: Deno comes from npm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_deno
ensure_apt coreutils util-linux

work=$(mktemp -d "${TMPDIR:-/tmp}/sparse_dd_demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
sparse_dd() { "$DENO" run -A --quiet --no-lock "$ROOT/main.ts" "$@"; }

echo "== making a 2 GiB sparse disk with 40 MiB of data in 20 places"
truncate -s 2G "$work/sparse.raw"
for i in $(seq 0 19); do
  head -c 2M /dev/urandom | dd of="$work/sparse.raw" bs=1M seek=$((i * 97 + 5)) conv=notrunc status=none
done
echo "== sparse_dd -src sparse.raw -dest copy.raw"
sparse_dd -src "$work/sparse.raw" -dest "$work/copy.raw" -progress bar
cmp "$work/sparse.raw" "$work/copy.raw" && echo "cmp: identical"
du -h --apparent-size "$work/sparse.raw" | sed 's/\t.*/ apparent size/'
du -h "$work/sparse.raw" "$work/copy.raw"

echo
echo "== making a 512 MiB fully allocated disk that is 90% zero runs"
: >"$work/dense.raw"
for i in $(seq 0 63); do
  if [ $((i % 10)) -eq 3 ]; then head -c 8M /dev/urandom; else head -c 8M /dev/zero; fi
done >>"$work/dense.raw"
echo "== sparse_dd -src dense.raw -dest copy2.raw (a new file is known zero: zero runs are skipped)"
sparse_dd -src "$work/dense.raw" -dest "$work/copy2.raw" -progress bar
cmp "$work/dense.raw" "$work/copy2.raw" && echo "cmp: identical"
du -h "$work/dense.raw" "$work/copy2.raw"

echo
echo "== the same copy as xapi runs it: -machine writes only framed Progress records to stdout"
sparse_dd -machine -src "$work/dense.raw" -dest "$work/copy3.raw" -size $((512 * 1024 * 1024)) \
  -good-ciphersuites ECDHE-RSA-AES256-GCM-SHA384 >"$work/machine.out"
od -A d -c "$work/machine.out" | head -4
echo "... $(wc -c <"$work/machine.out") bytes of records, ending with the 12-byte all-zero end record"
echo "== stats as JSON"
sparse_dd -src "$work/sparse.raw" -dest "$work/copy4.raw" --json
