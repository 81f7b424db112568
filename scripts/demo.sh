#!/usr/bin/env bash
# The main job on built-in samples: makes a 2 GiB sparse disk holding a little data and a
# 512 MiB dense disk that is mostly zero runs, copies each with sparse_dd (progress bar and
# summary), checks the copies with cmp, compares allocation with du, runs the copy as xapi does
# (-machine), prints the stats as JSON, shows a failure, and ends with a one-screen summary.
# Needs only node/npm on a fresh Debian machine: Deno comes from npm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_deno
ensure_apt coreutils util-linux

work=$(mktemp -d "${TMPDIR:-/tmp}/sparse_dd_demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
sparse_dd() { "$DENO" run -A --quiet --no-lock "$ROOT/main.ts" -config /nonexistent "$@"; }
# Allocated size of a file, for people (du without its file name).
allocated() { du -h "$1" | cut -f1; }

echo "== making a 2 GiB sparse disk with 40 MiB of data in 20 places"
truncate -s 2G "$work/sparse.raw"
for i in $(seq 0 19); do
  dd if=/dev/urandom of="$work/sparse.raw" bs=1M count=2 seek=$((i * 97 + 5)) conv=notrunc \
    status=none
done
echo "== sparse_dd -src sparse.raw -dest copy.raw -p"
sparse_dd -src "$work/sparse.raw" -dest "$work/copy.raw" -p -stats-file "$work/s1.json"
cmp "$work/sparse.raw" "$work/copy.raw" && echo "cmp: identical"
alloc1="$(allocated "$work/sparse.raw") -> $(allocated "$work/copy.raw")"
echo "allocated: sparse.raw -> copy.raw: $alloc1"

echo
echo "== making a 512 MiB fully allocated disk that is 90% zero runs"
for i in $(seq 0 63); do
  if [ $((i % 10)) -eq 3 ]; then src=/dev/urandom; else src=/dev/zero; fi
  dd if="$src" of="$work/dense.raw" bs=1M count=8 seek=$((i * 8)) conv=notrunc status=none
done
echo "== sparse_dd -src dense.raw -dest copy2.raw -p (a new file is known zero: zero runs are skipped)"
sparse_dd -src "$work/dense.raw" -dest "$work/copy2.raw" -p -stats-file "$work/s2.json"
cmp "$work/dense.raw" "$work/copy2.raw" && echo "cmp: identical"
alloc2="$(allocated "$work/dense.raw") -> $(allocated "$work/copy2.raw")"
echo "allocated: dense.raw -> copy2.raw: $alloc2"

echo
echo "== the same copy as xapi runs it: -machine writes only framed Progress records to stdout"
sparse_dd -machine -src "$work/dense.raw" -dest "$work/copy3.raw" -size $((512 * 1024 * 1024)) \
  -good-ciphersuites ECDHE-RSA-AES256-GCM-SHA384 >"$work/machine.out"
# The first two records: a 12-byte header (offset 0, length) and "Progress: N".
od -A d -c -N 47 "$work/machine.out"
records=$(grep -a -o 'Progress: [0-9]*' "$work/machine.out" | wc -l)
last=$(grep -a -o 'Progress: [0-9]*' "$work/machine.out" | tail -n 1 || true)
echo "... $(wc -c <"$work/machine.out") bytes: $records records up to '$last', then the 12-byte all-zero end record"

echo
echo "== stats as JSON (sparse_dd -src sparse.raw -dest copy4.raw --json)"
sparse_dd -src "$work/sparse.raw" -dest "$work/copy4.raw" --json | tee "$work/s4.json"

echo
echo "== a failure: one line on stderr, a documented exit code, and the stats file says so"
rc=0
sparse_dd -src "$work/sparse.raw" -dest "$work/no/such/dir/copy.raw" \
  -stats-file "$work/s5.json" || rc=$?
echo "exit code $rc (4: destination error)"

echo
echo "== what this demo showed"
"$DENO" eval --quiet --no-lock '
const [dir, records, last, rc, alloc1, alloc2] = Deno.args;
const read = (n) => JSON.parse(Deno.readTextFileSync(`${dir}/${n}`));
const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const line = (what, s) =>
  console.log(`  ${what.padEnd(34)} read ${mib(s.bytesRead)}, wrote ${mib(s.bytesWritten)}, ` +
    `skipped ${mib(s.skippedBytes)} of zeroes, ${s.seconds} s`);
line("2 GiB sparse disk, 40 MiB of data:", read("s1.json"));
line("512 MiB dense disk, 90% zero runs:", read("s2.json"));
console.log(`  ${"both copies:".padEnd(34)} identical to their sources (cmp); allocated ${alloc1}, ${alloc2} (du)`);
console.log(`  ${"as xapi runs it (-machine):".padEnd(34)} ${records} framed records up to "${last}", then the end record`);
const j = read("s4.json");
console.log(`  ${"--json / -stats-file:".padEnd(34)} ${Object.keys(j).length} fields (version ${j.version}, exitCode ${j.exitCode}, ...)`);
const f = read("s5.json");
console.log(`  ${"a destination that cannot exist:".padEnd(34)} exit ${rc}, stats: exitCode ${f.exitCode}, "${f.error.slice(0, 40)}..."`);
console.log("  next: README.md (quick start, exit codes, JSON fields), bash scripts/test.sh");
' "$work" "$records" "$last" "$rc" "$alloc1" "$alloc2"
