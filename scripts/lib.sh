#!/usr/bin/env bash
# Shared helpers for the project's scripts: sourced, never run.
# ensure_deno puts Deno 2.9.6 (from npm; JSR and deno.land are unreachable here) on PATH;
# ensure_apt installs Debian packages that are missing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DENO_VERSION=2.9.6
TOOLS="$ROOT/.tools"
# losetup, mknod, rpm and the like live in sbin, which a non-login PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;; esac
export PATH

ensure_deno() {
  if command -v deno >/dev/null 2>&1 && deno --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
    DENO=$(command -v deno)
  else
    local bin="$TOOLS/node_modules/@deno/linux-x64-glibc/deno"
    if [ ! -x "$bin" ]; then
      echo "installing deno@$DENO_VERSION from npm into $TOOLS" >&2
      mkdir -p "$TOOLS"
      npm install --silent --no-audit --no-fund --prefix "$TOOLS" "deno@$DENO_VERSION" >&2
    fi
    [ -x "$bin" ] || bin="$TOOLS/node_modules/deno/deno"
    [ -x "$bin" ] || { echo "deno@$DENO_VERSION did not install" >&2; return 1; }
    mkdir -p "$TOOLS/bin"
    ln -sfn "$(readlink -f "$bin")" "$TOOLS/bin/deno"
    export PATH="$TOOLS/bin:$PATH"
    DENO="$TOOLS/bin/deno"
  fi
  # xapi runs us with no HOME; Deno needs somewhere for its cache.
  export DENO_DIR="${DENO_DIR:-$TOOLS/deno-dir}"
  export DENO_NO_UPDATE_CHECK=1
  # deno bundle fetches esbuild from the npm registry with Deno's own TLS stack, which trusts
  # only Mozilla's roots by default; where egress goes through a proxy with its own CA (CI
  # here), npm trusts it through the system store, so Deno must too.
  export DENO_TLS_CA_STORE="${DENO_TLS_CA_STORE:-mozilla,system}"
  export DENO
}

APT_UPDATED=0
# ensure_apt PACKAGE...: installs the packages dpkg does not list as installed.
ensure_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    echo "apt-get update" >&2
    $sudo apt-get update -qq >&2 || return 1
    APT_UPDATED=1
  fi
  echo "apt-get install ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
