#!/usr/bin/env bash
# Remote destinations benchmark (issue 16; docs/remote.md): a 4 GiB sparse source (10% data) to
# xapi's chunked import and through the NBD upgrade to nbdkit memory, over loopback TCP, http and
# https, next to nbdcopy and a Python sender of xapi's chunked frames. Prints a Markdown table.
#
# Usage: bash scripts/bench_remote.sh
# Environment: BENCH_RUNS=N (default 3), BENCH_REMOTE_SIZE=BYTES (default 4 GiB), BENCH_ONLY=REGEX,
#              SPARSE_DD="cmd" (default: deno run -A main.ts)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_deno
ensure_apt libnbd-bin nbdkit openssl python3 time

exec deno run -A --quiet --no-lock scripts/bench_remote.ts
