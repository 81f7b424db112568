#!/usr/bin/env bash
# Side-by-side benchmark of sparse_dd against cp --sparse=always, dd conv=sparse, qemu-img convert
# and nbdcopy (issue 6). Builds the scenarios in a temporary directory, runs every tool of a
# scenario interleaved (round 0 = warm-up, then BENCH_RUNS counted rounds of A B C ... each),
# times each command *including* `sync -d DEST` (every tool's data is durable when the clock
# stops: sparse_dd flushes, cp/dd/nbdcopy do not), and records peak RSS (/usr/bin/time %M),
# destination allocation (du) and a cmp check. Writes BENCHMARKS.md (scripts/bench_report.ts).
#
# Usage: bash scripts/bench.sh            (or: deno task bench)
# Environment:
#   BENCH_QUICK=1        sizes / 8 and 3 counted runs: a try-out in about two minutes
#   BENCH_RUNS=N         counted runs per tool (default 5; quick 3)
#   BENCH_ONLY="S1 S4"   only these scenario ids (START S1 S2a S2b S2t RNDt VM S3 S4 S5* BIG)
#   BENCH_DIR=DIR        work directory (default: a new one under /var/tmp, removed at the end)
#   BENCH_KEEP=1         keep the work directory
#   BENCH_OUT=FILE       report file (default BENCHMARKS.md; quick mode: BENCHMARKS.quick.md)
#   SPARSE_DD="cmd"      how to run sparse_dd (default: the `deno bundle` of main.ts as the
#                        release ships it, run as scripts/install.sh's launcher runs it)
#
# scripts/bench_s5.sh, when present, is *sourced* after S4 and defines its scenarios with the same
# functions S1-S4 use:
#   scenario ID "title" REF DEST SIZE [ALLOC_PATH]   REF: raw file DEST must equal (cmp -n SIZE);
#                                                    ALLOC_PATH: what du measures (default DEST)
#   describe ID "source" "destination" "data" "what it stands for"   a row of the report's
#                                                    scenario table
#   prep 'shell'      run (untimed) before every run of every tool of the scenario
#   ours NAME 'cmd'   a sparse_dd row (the first one is the headline)
#   peer NAME 'cmd'   a peer row
#   measure           runs the scenario
#   on_exit 'shell'   cleanup at exit (kill a server you started, ...)
# and may use $WORK, $SD (the sparse_dd command), $SCALE (1, or 8 in quick mode), $S2_SRC
# (a dense raw file, 70% zero regions), $S2_SIZE, bench_want ID (true if the id is selected).
#
# Every run records wall time, CPU seconds (user + sys of the timed command and its children,
# /usr/bin/time), peak RSS and the 1-minute load average; the warm-up run also records the
# destination's allocation (du) and extent count (filefrag). BENCHMARKS.md embeds one SVG chart
# per scenario, written beside it into bench/ (scripts/bench_chart.ts).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_deno
ensure_apt time qemu-utils libnbd-bin nbdkit coreutils util-linux e2fsprogs

QUICK=${BENCH_QUICK:-0}
SCALE=1
RUNS=${BENCH_RUNS:-5}
if [ "$QUICK" = 1 ]; then
  SCALE=8
  RUNS=${BENCH_RUNS:-3}
fi
OUT=${BENCH_OUT:-$ROOT/$([ "$QUICK" = 1 ] && echo BENCHMARKS.quick.md || echo BENCHMARKS.md)}
MiB=$((1024 * 1024))
GiB=$((1024 * MiB))
# sparse_dd runs as it is shipped without a compiled binary (scripts/install.sh's launcher): the
# bundle as scripts/eval_bundle.ts ships it, under `deno run -A` with no Deno cache (DENO_DIR
# names a directory that cannot exist, as the launcher's does): start-up is what xapi would see.
BUNDLE=""
if [ -z "${SPARSE_DD:-}" ]; then
  BUNDLE=$(mktemp -d /var/tmp/sparse_dd_bench_bundle.XXXXXX)
  "$DENO" bundle --quiet --platform=deno -o "$BUNDLE/bundle.js" "$ROOT/main.ts"
  "$DENO" run --quiet --no-config -R -W "$ROOT/scripts/eval_bundle.ts" "$BUNDLE/bundle.js" "$BUNDLE"
fi
if [ -n "${BENCH_DIR:-}" ]; then
  WORK=$BENCH_DIR
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d /var/tmp/sparse_dd_bench.XXXXXX)
fi
SD=${SPARSE_DD:-"env DENO_DIR=/dev/null/sparse_dd $DENO run -A --quiet --no-config --no-lock $BUNDLE/sparse_dd.js"}
SD_PREFIX=$SD # what the rows show instead of the full command
RESULTS=$WORK/results.tsv
# The block device under the work directory: its write requests and busy time (io_ticks) are
# recorded around every timed run, to show when the disk, not the tool, sets the pace.
DEV=$(basename "$(df --output=source "$WORK" | tail -n 1)")
grep -qw "$DEV" /proc/diskstats || DEV=""
# Fields: writes completed, io_ticks (ms busy), ms spent flushing (the 20th: Linux 5.5 and later).
devstat() {
  [ -n "$DEV" ] && awk -v d="$DEV" '$3 == d { print $8, $13, ($20 == "" ? 0 : $20) }' /proc/diskstats ||
    echo "0 0 0"
}
SCENARIOS=$WORK/scenarios.tsv
DESCRIBED=$WORK/described.tsv
: >"$RESULTS"
: >"$SCENARIOS"
: >"$DESCRIBED"

EXIT_CMDS=()
on_exit() { EXIT_CMDS+=("$1"); }
cleanup() {
  local i
  for ((i = ${#EXIT_CMDS[@]} - 1; i >= 0; i--)); do eval "${EXIT_CMDS[$i]}" || true; done
  if [ "${BENCH_KEEP:-0}" != 1 ] && [ -z "${BENCH_DIR:-}" ]; then rm -rf "$WORK"; fi
  if [ -n "$BUNDLE" ]; then rm -rf "$BUNDLE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# human BYTES: "4 GiB" or "512 MiB".
human() {
  if (($1 >= GiB && $1 % GiB == 0)); then echo "$(($1 / GiB)) GiB"; else echo "$(($1 / MiB)) MiB"; fi
}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

bench_want() {
  [ -z "${BENCH_ONLY:-}" ] && return 0
  local id
  for id in $BENCH_ONLY; do [ "$id" = "$1" ] && return 0; done
  return 1
}

# Free page reporting (a virtio balloon's, as on this virtual machine): memory that stays free for
# a moment is handed back to the host, and whoever next writes into it waits while the host backs
# each page again. 2 GiB written into a new tmpfs file took 0.31 s right after the previous file
# was deleted and 1.0-2.5 s six seconds after (Python's os.pwrite, 2026-12-05): which tool of a
# scenario met it depended on when the host had last taken memory back, not on the tool. A dom0
# has no such balloon. So, for the benchmark's duration, reporting is off (the reporting order set
# past the largest page order; restored at exit), and the free memory is written once so that it
# is backed again. Recorded in the report.
REPORTING_PARAM=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING="no free page reporting on this machine"
if [ -e "$REPORTING_PARAM" ]; then
  REPORTING="free page reporting left on (cannot change $REPORTING_PARAM)"
  reporting_was=$(cat "$REPORTING_PARAM")
  # Page orders the allocator has: the columns after "at order" in /proc/pagetypeinfo.
  orders=$(awk '/at order/ { print NF - 8; exit }' /proc/pagetypeinfo 2>/dev/null || true)
  if [ -n "$orders" ] && [ "$reporting_was" -lt "$orders" ] &&
    echo "$orders" 2>/dev/null >"$REPORTING_PARAM" && [ "$(cat "$REPORTING_PARAM")" = "$orders" ]; then
    on_exit "echo $reporting_was >$REPORTING_PARAM"
    free_kib=$(awk '/^MemFree:/ { print $2 }' /proc/meminfo)
    # All of it but 1 GiB, at most 16 GiB (the benchmark needs a few GiB of new pages at a time,
    # and reuses what it frees first).
    touch_kib=$((free_kib > 1048576 ? free_kib - 1048576 : 0))
    touch_bytes=$(((touch_kib > 16777216 ? 16777216 : touch_kib) * 1024))
    log "free page reporting off (page_reporting_order $reporting_was -> $orders); writing $((touch_bytes / MiB)) MiB of free memory once"
    "$DENO" run -A --quiet --no-lock "$ROOT/scripts/bench_data.ts" touch "$touch_bytes" >/dev/null
    REPORTING="free page reporting (virtio balloon) off during the runs (page_reporting_order $reporting_was → $orders, restored after) and $((touch_bytes / MiB)) MiB of free memory written once before them"
  elif [ "$reporting_was" -ge "${orders:-99}" ]; then
    REPORTING="free page reporting already off (page_reporting_order $reporting_was)"
  fi
fi

# --- the harness ------------------------------------------------------------------------------

SC_ID="" SC_TITLE="" SC_REF="" SC_DEST="" SC_SIZE=0 SC_ALLOC="" SC_PREP=":" SC_SYNC=1
NAMES=() CMDS=() KINDS=()

scenario() {
  SC_ID=$1 SC_TITLE=$2 SC_REF=$3 SC_DEST=$4 SC_SIZE=$5 SC_ALLOC=${6:-$4} SC_PREP=":" SC_SYNC=1
  NAMES=() CMDS=() KINDS=()
}
describe() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$DESCRIBED"; }
prep() { SC_PREP=$1; }
# nosync: time the command alone (start-up: nothing to make durable).
nosync() { SC_SYNC=0; }
ours() { NAMES+=("$1") CMDS+=("$2") KINDS+=(ours); }
peer() { NAMES+=("$1") CMDS+=("$2") KINDS+=(peer); }

# run_one TOOL_INDEX ROUND: prep, then the timed command + sync; appends a row to $RESULTS.
run_one() {
  local i=$1 round=$2 rc=0 t0 t1 rss cpu alloc="" same="" d0 d1 extents="" load cmd
  local w0 b0 f0 w1 b1 f1
  eval "$SC_PREP" >/dev/null 2>&1 || { log "prep failed for $SC_ID"; return 1; }
  sync
  cmd=${CMDS[$i]}
  [ "$SC_SYNC" = 1 ] && cmd="$cmd && sync -d '$SC_DEST'"
  load=$(cut -d' ' -f1 /proc/loadavg)
  d0=$(devstat)
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%M %U %S' -o "$WORK/rss" bash -c "$cmd" >"$WORK/out" 2>"$WORK/err" || rc=$?
  t1=$EPOCHREALTIME
  d1=$(devstat)
  rss=$(tail -n 1 "$WORK/rss" 2>/dev/null | awk '{ print $1 }')
  cpu=$(tail -n 1 "$WORK/rss" 2>/dev/null | awk '{ print $2 + $3 }')
  if [ "$round" = 0 ]; then
    # Allocation and correctness once per tool, after the warm-up run; a global sync first, so
    # that every tool's file-system metadata (extent-tree blocks) is settled alike.
    sync
    alloc=$(du -B1 "$SC_ALLOC" 2>/dev/null | cut -f1 || true)
    extents=$(filefrag "$SC_ALLOC" 2>/dev/null | sed -n 's/.*: \([0-9]*\) extents\? found.*/\1/p' || true)
    if [ "$rc" = 0 ] && cmp -s -n "$SC_SIZE" "$SC_REF" "$SC_DEST"; then same=ok; else same=DIFF; fi
  fi
  if [ "$rc" != 0 ]; then
    log "  ${NAMES[$i]} failed (exit $rc): $(head -c 300 "$WORK/err" | tr '\n' ' ')"
    same=FAIL
  fi
  read -r w0 b0 f0 w1 b1 f1 <<<"$d0 $d1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SC_ID" "$i" \
    "$round" "$(awk "BEGIN { print $t1 - $t0 }")" "${rss:-0}" "$alloc" "$same" "$rc" "${KINDS[$i]}" \
    $((w1 - w0)) $((b1 - b0)) "${cpu:-}" "$extents" "$load" $((f1 - f0)) >>"$RESULTS"
}

measure() {
  local rounds=${1:-$RUNS} round i
  local shown
  log "$SC_ID: $SC_TITLE (${#NAMES[@]} tools, 1 warm-up + $rounds runs each, interleaved)"
  for i in "${!NAMES[@]}"; do
    shown=${CMDS[$i]//"$SD_PREFIX"/sparse_dd}
    shown=${shown//"$WORK"/\$W}
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SC_ID" "$i" "${NAMES[$i]}" "${KINDS[$i]}" \
      "$SC_TITLE" "$SC_SIZE" "$shown" >>"$SCENARIOS"
  done
  printf '%s\tload\t%s\n' "$SC_ID" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/load.tsv"
  for ((round = 0; round <= rounds; round++)); do
    for i in "${!NAMES[@]}"; do run_one "$i" "$round" || true; done
    log "  round $round done"
  done
  printf '%s\tload\t%s\n' "$SC_ID" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/load.tsv"
}

data() { "$DENO" run -A --quiet --no-lock "$ROOT/scripts/bench_data.ts" "$@"; }

# Some helpers use the machine at the same time: say how busy it was.
log "work directory $WORK; quick=$QUICK runs=$RUNS"

W=$WORK
D=$W/dest.raw

# --- START: start-up, which xapi and the plugin pay for every operation -----------------------------
if bench_want START; then
  E=$W/empty.raw
  : >"$E"
  # Nothing to compare: the reference and the "destination" are the empty source itself.
  scenario START "start-up: --version, and a 0-byte copy into a new file" "$E" "$E" 0
  describe START "0-byte file" "new file" "–" "xapi and the plugin start sparse_dd for every operation"
  prep "rm -f $D"
  nosync
  ours "sparse_dd --version" "$SD --version"
  ours "sparse_dd, 0-byte copy" "$SD -src $E -dest $D -size 0"
  peer "cp, 0-byte file" "cp --sparse=always $E $D"
  peer "qemu-img convert, 0-byte file" "qemu-img convert -f raw -O raw $E $D"
  peer "nbdcopy, 0-byte file" "nbdcopy $E $D"
  measure $((RUNS * 2))
fi

# --- S1: sparse raw -> fresh file -----------------------------------------------------------------
S1_SIZE=$((4 * GiB / SCALE))
if bench_want S1; then
  S1=$W/s1.raw
  log "making S1: $((S1_SIZE / MiB)) MiB sparse, 10% of 2 MiB blocks random"
  data sparse "$S1" "$S1_SIZE" $((2 * MiB)) 0.10 1
  scenario S1 "$(human $S1_SIZE) sparse raw (10% of 2 MiB blocks data) → new file" "$S1" "$D" "$S1_SIZE"
  describe S1 "$(human $S1_SIZE) sparse raw file, ext4" "new file, ext4" "10%, whole 2 MiB blocks" \
    "a thin VDI exported to a file"
  prep "rm -f $D"
  ours "sparse_dd" "$SD -src $S1 -dest $D -size $S1_SIZE"
  ours "sparse_dd -unbuffered true" "$SD -src $S1 -dest $D -size $S1_SIZE -unbuffered true"
  peer "cp --sparse=always" "cp --sparse=always $S1 $D"
  peer "dd conv=sparse bs=1M" "dd if=$S1 of=$D bs=1M conv=sparse status=none"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $S1 $D"
  peer "qemu-img convert -S 16k" "qemu-img convert -f raw -O raw -S 16k $S1 $D"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f raw -O raw -m 8 -W $S1 $D"
  peer "qemu-img convert --target-is-zero -n" "truncate -s $S1_SIZE $D && qemu-img convert -f raw -O raw --target-is-zero -n $S1 $D"
  peer "nbdcopy" "nbdcopy $S1 $D"
  measure
  rm -f "$D"
fi

# --- S2: dense raw with 70% zero regions -> fresh file, and -> an existing non-zero file -------
S2_SIZE=$((2 * GiB / SCALE))
S2_SRC=$W/s2.raw
NZ=$W/nonzero.raw
if bench_want S2a || bench_want S2b || bench_want S2t || bench_want S4; then
  log "making S2: $((S2_SIZE / MiB)) MiB dense, 70% of 64 KiB regions zero"
  data regions "$S2_SRC" "$S2_SIZE" 65536 0.70 2
fi
if bench_want S2b || bench_want S4; then
  data fill "$NZ" "$S2_SIZE" 255
fi
if bench_want S2a; then
  scenario S2a "$(human $S2_SIZE) dense raw, 70% zero 64 KiB regions → new file" "$S2_SRC" "$D" "$S2_SIZE"
  describe S2a "$(human $S2_SIZE) fully allocated raw file, ext4" "new file, ext4" \
    "30%, 64 KiB regions" "a thick VDI: only the scan finds its zeroes"
  prep "rm -f $D"
  ours "sparse_dd" "$SD -src $S2_SRC -dest $D -size $S2_SIZE"
  ours "sparse_dd -threads 2" "$SD -src $S2_SRC -dest $D -size $S2_SIZE -threads 2"
  ours "sparse_dd -unbuffered true" "$SD -src $S2_SRC -dest $D -size $S2_SIZE -unbuffered true"
  peer "cp --sparse=always" "cp --sparse=always $S2_SRC $D"
  peer "dd conv=sparse bs=64K" "dd if=$S2_SRC of=$D bs=64K conv=sparse status=none"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $S2_SRC $D"
  peer "qemu-img convert -S 16k" "qemu-img convert -f raw -O raw -S 16k $S2_SRC $D"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f raw -O raw -m 8 -W $S2_SRC $D"
  peer "qemu-img convert --target-is-zero -n" "truncate -s $S2_SIZE $D && qemu-img convert -f raw -O raw --target-is-zero -n $S2_SRC $D"
  peer "nbdcopy" "nbdcopy $S2_SRC $D"
  measure
  rm -f "$D"
fi
if bench_want S2b; then
  scenario S2b "$(human $S2_SIZE) dense raw, 70% zero 64 KiB regions → existing non-zero file (not prezeroed)" "$S2_SRC" "$D" "$S2_SIZE"
  describe S2b "as S2a" "existing file of 0xFF, ext4" "30%, 64 KiB regions" \
    "overwriting an old copy: the zeroes must land"
  # Every run starts from a file full of 0xFF: the zeroes must land.
  prep "cp $NZ $D"
  ours "sparse_dd" "$SD -src $S2_SRC -dest $D -size $S2_SIZE"
  ours "sparse_dd -threads 2" "$SD -src $S2_SRC -dest $D -size $S2_SIZE -threads 2"
  ours "sparse_dd -unbuffered true" "$SD -src $S2_SRC -dest $D -size $S2_SIZE -unbuffered true"
  peer "cp --sparse=always" "cp --sparse=always $S2_SRC $D"
  peer "dd conv=sparse bs=64K" "dd if=$S2_SRC of=$D bs=64K conv=sparse status=none"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $S2_SRC $D"
  peer "qemu-img convert -n" "qemu-img convert -f raw -O raw -n $S2_SRC $D"
  peer "qemu-img convert -S 16k -n" "qemu-img convert -f raw -O raw -S 16k -n $S2_SRC $D"
  peer "qemu-img convert -m 8 -W -n" "qemu-img convert -f raw -O raw -m 8 -W -n $S2_SRC $D"
  peer "nbdcopy" "nbdcopy $S2_SRC $D"
  measure
  rm -f "$D"
fi

# --- S2t, RNDt: memory to memory (tmpfs): no disk in the way, the CPU is the limit -----------------
if bench_want S2t || bench_want RNDt; then
  TM=$W/tmpfs
  mkdir -p "$TM"
  mount -t tmpfs -o size=$((5 * S2_SIZE / MiB))m sparse_dd_bench "$TM"
  on_exit "umount $TM"
  TD=$TM/dest.raw
fi
if bench_want S2t; then
  cp "$S2_SRC" "$TM/s2.raw"
  scenario S2t "$(human $S2_SIZE) dense raw, 70% zero 64 KiB regions, tmpfs → new file on tmpfs" "$TM/s2.raw" "$TD" "$S2_SIZE"
  describe S2t "the S2 source, on tmpfs" "new file, tmpfs" "30%, 64 KiB regions" \
    "the CPU cost of reading, scanning and writing, no disk"
  prep "rm -f $TD"
  ours "sparse_dd" "$SD -src $TM/s2.raw -dest $TD -size $S2_SIZE"
  ours "sparse_dd -threads 2" "$SD -src $TM/s2.raw -dest $TD -size $S2_SIZE -threads 2"
  peer "cp --sparse=always" "cp --sparse=always $TM/s2.raw $TD"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $TM/s2.raw $TD"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f raw -O raw -m 8 -W $TM/s2.raw $TD"
  peer "nbdcopy" "nbdcopy $TM/s2.raw $TD"
  measure
  rm -f "$TD" "$TM/s2.raw"
fi
if bench_want RNDt; then
  data random "$TM/rnd.raw" "$S2_SIZE" 6
  scenario RNDt "$(human $S2_SIZE) random data, tmpfs → new file on tmpfs" "$TM/rnd.raw" "$TD" "$S2_SIZE"
  describe RNDt "$(human $S2_SIZE) random raw file, tmpfs" "new file, tmpfs" "100%, no zeroes" \
    "the CPU-bound limit: every byte read, scanned and written"
  prep "rm -f $TD"
  ours "sparse_dd" "$SD -src $TM/rnd.raw -dest $TD -size $S2_SIZE"
  peer "cp --sparse=always" "cp --sparse=always $TM/rnd.raw $TD"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $TM/rnd.raw $TD"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f raw -O raw -m 8 -W $TM/rnd.raw $TD"
  peer "nbdcopy" "nbdcopy $TM/rnd.raw $TD"
  measure
  rm -f "$TD" "$TM/rnd.raw"
fi

# --- VM: a VM-shaped sparse disk: scattered extents of 4 KiB-1 MiB with zero runs inside ------------
VM_SIZE=$((16 * GiB / SCALE))
if bench_want VM; then
  VM=$W/vm.raw
  log "making VM: $((VM_SIZE / GiB)) GiB sparse, scattered 4 KiB-1 MiB extents with zero runs inside"
  data vm "$VM" "$VM_SIZE" 0.06 8
  scenario VM "$(human $VM_SIZE) VM-shaped sparse raw (scattered 4 KiB–1 MiB extents, zero runs inside) → new file" "$VM" "$D" "$VM_SIZE"
  describe VM "$(human $VM_SIZE) sparse raw file, ext4" "new file, ext4" \
    "6% allocated in 4 KiB–1 MiB extents, a third of them zero runs" "a used VM's disk"
  prep "rm -f $D"
  ours "sparse_dd" "$SD -src $VM -dest $D -size $VM_SIZE"
  ours "sparse_dd -threads 2" "$SD -src $VM -dest $D -size $VM_SIZE -threads 2"
  peer "cp --sparse=always" "cp --sparse=always $VM $D"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $VM $D"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f raw -O raw -m 8 -W $VM $D"
  peer "nbdcopy" "nbdcopy $VM $D"
  measure
  rm -f "$D" "$VM"
fi

# --- S3: dynamic VHD (qemu-img, 10% written with qemu-io) -> raw ---------------------------------
S3_SIZE=$((4 * GiB / SCALE))
if bench_want S3; then
  S3=$W/s3.vhd
  S3_REF=$W/s3.ref.raw
  log "making S3: $((S3_SIZE / MiB)) MiB dynamic VHD, 10% of 2 MiB blocks written by qemu-io"
  qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$S3" "$S3_SIZE"
  mapfile -t offs < <(data offsets "$S3_SIZE" $((2 * MiB)) 0.10 3)
  args=()
  for k in "${!offs[@]}"; do
    # A few different random patterns, so blocks differ.
    p=$W/pattern$((k % 4))
    [ -e "$p" ] || data random "$p" $((2 * MiB)) $((10 + k % 4))
    args+=(-c "write -q -s $p ${offs[$k]} 2M")
  done
  qemu-io -f vpc "${args[@]}" "$S3"
  qemu-img convert -f vpc -O raw "$S3" "$S3_REF"
  scenario S3 "$(human $S3_SIZE) dynamic VHD (10% of blocks written) → raw new file" "$S3_REF" "$D" "$S3_SIZE"
  describe S3 "$(human $S3_SIZE) dynamic VHD (qemu-img), ext4" "new raw file, ext4" \
    "10%, 2 MiB blocks" "a VHD-format SR's VDI"
  prep "rm -f $D"
  ours "sparse_dd" "$SD -src $S3 -dest $D -size $S3_SIZE"
  ours "sparse_dd -unbuffered true" "$SD -src $S3 -dest $D -size $S3_SIZE -unbuffered true"
  peer "qemu-img convert" "qemu-img convert -f vpc -O raw $S3 $D"
  peer "qemu-img convert -S 16k" "qemu-img convert -f vpc -O raw -S 16k $S3 $D"
  peer "qemu-img convert -m 8 -W" "qemu-img convert -f vpc -O raw -m 8 -W $S3 $D"
  peer "qemu-img convert --target-is-zero -n" "truncate -s $S3_SIZE $D && qemu-img convert -f vpc -O raw --target-is-zero -n $S3 $D"
  peer "nbdcopy via qemu-nbd" "nbdcopy -- [ qemu-nbd -r -f vpc $S3 ] $D"
  measure
  rm -f "$D" "$S3_REF" "$W"/pattern*
fi

# --- S4: loop device -> loop device, not prezeroed -------------------------------------------------
if bench_want S4; then
  B=$W/s4.dest.img
  cp "$NZ" "$B"
  LA=$(losetup -f --show -r "$S2_SRC")
  on_exit "losetup -d $LA"
  LB=$(losetup -f --show "$B")
  on_exit "losetup -d $LB"
  log "S4: $LA (ro, over the S2 source) → $LB (over a file of 0xFF)"
  scenario S4 "$(human $S2_SIZE) loop device → loop device holding 0xFF (not prezeroed)" "$S2_SRC" "$LB" "$S2_SIZE" "$B"
  describe S4 "loop device over the S2 source" "loop device over a file of 0xFF" \
    "30%, 64 KiB regions" "LVM-based SRs: block device to block device"
  prep "dd if=$NZ of=$LB bs=4M oflag=direct status=none"
  ours "sparse_dd" "$SD -src $LA -dest $LB -size $S2_SIZE"
  ours "sparse_dd -threads 1" "$SD -src $LA -dest $LB -size $S2_SIZE -threads 1"
  ours "sparse_dd -unbuffered true" "$SD -src $LA -dest $LB -size $S2_SIZE -unbuffered true"
  peer "dd bs=1M" "dd if=$LA of=$LB bs=1M status=none"
  peer "qemu-img convert -n" "qemu-img convert -f raw -O raw -n $LA $LB"
  peer "qemu-img convert -S 16k -n" "qemu-img convert -f raw -O raw -S 16k -n $LA $LB"
  peer "qemu-img convert -m 8 -W -n" "qemu-img convert -f raw -O raw -m 8 -W -n $LA $LB"
  peer "nbdcopy" "nbdcopy $LA $LB"
  measure
fi

# --- S5: written by the NBD helper ----------------------------------------------------------------
if [ -f "$ROOT/scripts/bench_s5.sh" ]; then
  # shellcheck source=/dev/null
  source "$ROOT/scripts/bench_s5.sh"
fi

# --- BIG: peak RSS with a 64 GiB sparse disk --------------------------------------------------------
BIG_SIZE=$((64 * GiB / SCALE))
if bench_want BIG; then
  BIG=$W/big.raw
  log "making BIG: $((BIG_SIZE / GiB)) GiB sparse, 0.5% of 2 MiB blocks random"
  data sparse "$BIG" "$BIG_SIZE" $((2 * MiB)) 0.005 4
  scenario BIG "$(human $BIG_SIZE) sparse raw (0.5% of 2 MiB blocks data) → new file: peak RSS" "$BIG" "$D" "$BIG_SIZE"
  describe BIG "$(human $BIG_SIZE) sparse raw file, ext4" "new file, ext4" "0.5%, 2 MiB blocks" \
    "a large, nearly empty disk: memory must not grow with size"
  prep "rm -f $D"
  ours "sparse_dd" "$SD -src $BIG -dest $D -size $BIG_SIZE"
  peer "cp --sparse=always" "cp --sparse=always $BIG $D"
  peer "qemu-img convert" "qemu-img convert -f raw -O raw $BIG $D"
  peer "nbdcopy" "nbdcopy $BIG $D"
  measure 2
  rm -f "$D" "$BIG"
fi

# --- the report --------------------------------------------------------------------------------------
{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "quick=$QUICK"
  echo "runs=$RUNS"
  echo "cpus=$(nproc)"
  echo "mem=$(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "kernel=$(uname -r)"
  echo "fs=$(findmnt -no FSTYPE -T "$WORK")"
  echo "dev=${DEV:-?}, mounted $(findmnt -no OPTIONS -T "$WORK")"
  echo "deno=$("$DENO" --version | head -1)"
  echo "qemu=$(qemu-img --version | head -1)"
  echo "nbdcopy=$(nbdcopy --version | head -1)"
  echo "coreutils=$(cp --version | head -1)"
  echo "reporting=$REPORTING"
  echo "command=${BENCH_CMDLINE:-$( [ "$QUICK" = 1 ] && echo 'BENCH_QUICK=1 ')deno task bench}"
} >"$WORK/meta.txt"
"$DENO" run --allow-read --allow-write --no-lock "$ROOT/scripts/bench_report.ts" "$WORK" "$OUT"
log "wrote $OUT"
