#!/usr/bin/env bash
# Runs every check and test of the project on a fresh Debian machine with only node/npm:
# installs Deno (npm) and the Debian packages the tests drive, runs scripts/setup/*.sh (services
# and helper builds), then deno fmt --check, deno lint, deno check and deno test.
# Tests need root (loop devices, mknod) as CI runs them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

# Packages the tests drive as real peers and oracles.
TEST_PACKAGES=(
  qemu-utils nbdkit libnbd-bin python3 python3-libvhdi util-linux coreutils e2fsprogs mount openssl
  strace rpm tmux time
  xenstore-utils libxenmisc4.17 libxenevtchn1 libxengnttab1 gcc libc6-dev
)

ensure_deno
ensure_apt "${TEST_PACKAGES[@]}"
for setup in scripts/setup/*.sh; do
  [ -e "$setup" ] || continue
  echo "== setup: $setup" >&2
  bash "$setup"
done

echo "== deno fmt --check" >&2
"$DENO" fmt --check
echo "== deno lint" >&2
"$DENO" lint
echo "== deno check --doc (the code and every JSDoc @example)" >&2
shopt -s nullglob
"$DENO" check --doc main.ts src/ plugin/ tests/ scripts/*.ts
echo "== deno test" >&2
"$DENO" test -A --no-lock "$@" tests/
