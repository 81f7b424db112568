#!/usr/bin/env bash
# Benchmark scenario S5 (issue 7): a 4 GiB sparse raw file → an nbdkit memory export, sparse_dd
# against nbdcopy and qemu-img convert, over a unix socket (S5) and loopback TCP (S5t).
#
# scripts/bench.sh *sources* this file after S4 and it uses that harness (scenario / prep / ours /
# peer / measure / on_exit, $WORK, $SD, $SCALE). Run on its own, it runs the harness with only
# these scenarios and writes BENCHMARKS.s5.md:
#
#   bash scripts/bench_s5.sh              (BENCH_QUICK=1 for sizes / 8)
#
# The export is not known to be zero (nobody passes -prezeroed / --target-is-zero): every tool
# must make the holes zero, with WRITE_ZEROES. Each run overwrites the previous run's copy in the
# same export, after an untimed prep has scribbled 0xFF over eight 1 MiB spots (mostly in holes),
# so a tool that skipped zeroing fails the check. The harness's cmp check reads the export
# through nbdfuse (a FUSE file; prep drops its page cache first), and its `sync -d` on that file
# sends an NBD flush.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  BENCH_ONLY=${BENCH_ONLY:-"S5 S5t"} BENCH_OUT=${BENCH_OUT:-$PWD/BENCHMARKS.s5.md} \
    BENCH_CMDLINE=${BENCH_CMDLINE:-"bash scripts/bench_s5.sh"} exec bash scripts/bench.sh "$@"
fi

S5_SIZE=$((4 * GiB / SCALE))

# s5_server ID TRANSPORT: starts nbdkit memory (killed at exit) and mounts it with nbdfuse;
# sets S5_URI and S5_FUSE.
s5_server() {
  local id=$1 transport=$2 pid port
  local sock=$W/$id.sock fuse=$W/$id.fuse
  rm -f "$sock"
  if [ "$transport" = unix ]; then
    nbdkit -f --exit-with-parent -U "$sock" memory "$S5_SIZE" &
    pid=$!
    S5_URI="nbd+unix:///?socket=$sock"
  else
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" memory "$S5_SIZE" &
    pid=$!
    S5_URI="nbd://127.0.0.1:$port/"
  fi
  on_exit "kill $pid 2>/dev/null; rm -f $sock"
  S5_STOP="umount $fuse 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f $sock $fuse"
  local i
  for ((i = 0; i < 100; i++)); do nbdinfo --size "$S5_URI" >/dev/null 2>&1 && break; sleep 0.1; done
  : >"$fuse"
  nbdfuse -P "$W/$id.fuse.pid" "$fuse" "$S5_URI" &
  on_exit "umount $fuse 2>/dev/null; rm -f $fuse"
  for ((i = 0; i < 100; i++)); do [ -s "$W/$id.fuse.pid" ] && break; sleep 0.1; done
  S5_FUSE=$fuse
}

if bench_want S5 || bench_want S5t; then
  ensure_apt nbdkit libnbd-bin qemu-utils
  S5_SRC=$W/s5.raw
  log "making S5: $((S5_SIZE / MiB)) MiB sparse, 10% of 2 MiB blocks random"
  data sparse "$S5_SRC" "$S5_SIZE" $((2 * MiB)) 0.10 5
  # The untimed prep: 0xFF over eight 1 MiB spots of the export, then drop the FUSE file's cache.
  cat >"$W/s5_scribble.py" <<'PY'
import os, sys
f = os.open(sys.argv[1], os.O_RDWR)
size = int(sys.argv[2])
for k in range(8):
    os.pwrite(f, b"\xff" * 1048576, k * (size // 8) + 1048576)
os.fsync(f)
os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(f)
PY
  for S5_ID in S5 S5t; do
    bench_want "$S5_ID" || continue
    if [ "$S5_ID" = S5 ]; then S5_T=unix; S5_HOW="unix socket"; else S5_T=tcp; S5_HOW="loopback TCP"; fi
    s5_server "$S5_ID" "$S5_T"
    scenario "$S5_ID" "$(human $S5_SIZE) sparse raw (10% of 2 MiB blocks data) → nbdkit memory over $S5_HOW (not prezeroed)" \
      "$S5_SRC" "$S5_FUSE" "$S5_SIZE"
    describe "$S5_ID" "$(human $S5_SIZE) sparse raw file, ext4" "nbdkit memory, $S5_HOW" \
      "10%, 2 MiB blocks" "a VDI exported to an NBD server"
    ours "sparse_dd" "$SD -src $S5_SRC -dest '$S5_URI' -size $S5_SIZE"
    peer "nbdcopy" "nbdcopy $S5_SRC '$S5_URI'"
    peer "qemu-img convert -n" "qemu-img convert -n -f raw -O raw $S5_SRC '$S5_URI'"
    prep "python3 $W/s5_scribble.py $S5_FUSE $S5_SIZE"
    measure
    eval "$S5_STOP"
  done
  rm -f "$S5_SRC"
fi
