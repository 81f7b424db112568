#!/bin/sh
# Installs sparse_dd on a XenServer/XCP-ng host (dom0), self-contained and reversibly:
#
#   sh install.sh                 install (or upgrade) under $DESTDIR (default: the real root)
#   sh install.sh --uninstall     remove exactly what was installed; restore what it replaced
#
# POSIX sh and coreutils only: dom0 has no node, npm, Deno or network. It installs
#   /opt/xensource/libexec/sparse_dd            launcher: execs the runtime below, so the pid xapi
#                                               records runs a binary named sparse_dd
#   /opt/xensource/libexec/sparse_dd.d/         deno (the Deno runtime, or the `deno compile`d
#                                               program), sparse_dd.js + sparse_dd.core.js (the
#                                               bundle, unless compiled),
#                                               lib/ + sparse_dd (the glibc deno needs, and its
#                                               dynamic loader, which runs deno), VERSION,
#                                               install.sh (this script, for --uninstall),
#                                               MANIFEST, backup/ (files it replaced)
#   /etc/xapi.d/plugins/sparse_dd               the XAPI host plugin (execs the launcher)
#   /etc/xapi.conf.d/sparse_dd.conf             `sparse_dd = /opt/xensource/libexec/sparse_dd`:
#                                               xapi runs this program after its next restart
# xapi's own /usr/libexec/xapi/sparse_dd and /etc/xapi.conf are never touched. A file that exists
# at one of these paths and was not installed by this script is moved to sparse_dd.d/backup/ and
# put back by --uninstall. MANIFEST lists every installed file with its SHA-256: --uninstall
# removes a file only if it is still the one installed.
#
# What to install comes from the directory holding this script (the release tarball made by
# scripts/build.sh: install.sh beside sparse_dd.d/), or from dist/release/ of a build checkout.
set -eu

LIBEXEC_REL=opt/xensource/libexec
PROGRAM=/$LIBEXEC_REL/sparse_dd
CONF_REL=etc/xapi.conf.d/sparse_dd.conf
PLUGIN_REL=etc/xapi.d/plugins/sparse_dd

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
LIBEXEC=$DESTDIR/$LIBEXEC_REL
STATE=$LIBEXEC/sparse_dd.d
MANIFEST=$STATE/MANIFEST
BACKUP=$STATE/backup

say() { printf '%s\n' "install.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Manifest lines: "file SHA256 REL" (installed by us), "backup - REL" (the file that was at REL
# is in backup/REL), "dir - REL" (a directory we created). REL is relative to DESTDIR.
manifest_has() { [ -f "$MANIFEST" ] && grep -q "^$1 [^ ]* $2\$" "$MANIFEST"; }
manifest_sha() { [ -f "$MANIFEST" ] && sed -n "s|^file \\([^ ]*\\) $1\$|\\1|p" "$MANIFEST" | head -n 1; }

uninstall() {
  [ -f "$MANIFEST" ] || die "nothing to uninstall: $MANIFEST does not exist"
  status=0
  # Installed files first, then backups back in place, then the directories we created.
  while read -r kind sum rel; do
    [ "$kind" = file ] || continue
    path=$DESTDIR/$rel
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
      continue
    elif [ "$(sha "$path")" = "$sum" ]; then
      rm -f "$path"
    else
      say "left /$rel in place: it changed since it was installed"
      status=1
    fi
  done <"$MANIFEST"
  while read -r kind _ rel; do
    [ "$kind" = backup ] || continue
    if [ -e "$DESTDIR/$rel" ]; then
      say "cannot restore /$rel: a file is there again; the original stays in $BACKUP/$rel"
      status=1
    else
      mv "$BACKUP/$rel" "$DESTDIR/$rel"
      say "restored /$rel"
    fi
  done <"$MANIFEST"
  if [ "$status" -eq 0 ]; then
    dirs=$(grep '^dir ' "$MANIFEST.dirs" 2>/dev/null | cut -d' ' -f3 | sort -r || true)
    rm -f "$MANIFEST" "$MANIFEST.dirs"
    if [ -d "$BACKUP" ]; then find "$BACKUP" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    rmdir "$STATE" 2>/dev/null || say "left $STATE: it holds files this script did not install"
    # Directories we created, deepest first; rmdir leaves any that is not empty.
    for rel in $dirs; do
      rmdir "$DESTDIR/$rel" 2>/dev/null || true
    done
    say "uninstalled; restart xapi (systemctl restart xapi) so it runs its own sparse_dd again"
  else
    say "uninstall incomplete; MANIFEST kept"
  fi
  return "$status"
}

# The payload: release tarball layout (beside this script) or a build checkout's dist/release.
find_payload() {
  here=$(cd "$(dirname "$0")" && pwd)
  for p in "$here" "$here/../dist/release"; do
    if [ -f "$p/sparse_dd.d/sparse_dd" ] && [ -f "$p/sparse_dd.d/VERSION" ]; then
      (cd "$p" && pwd)
      return 0
    fi
  done
  return 1
}

# mkdir -p that records each directory it creates (no recursion: sh has no local variables).
make_dir() {
  _sofar=
  _old_ifs=$IFS
  IFS=/
  for _part in $1; do
    [ -n "$_part" ] || continue
    _sofar=${_sofar:+$_sofar/}$_part
    if [ ! -d "$DESTDIR/$_sofar" ]; then
      mkdir -m 755 "$DESTDIR/$_sofar"
      echo "dir - $_sofar" >>"$NEW_DIRS"
    fi
  done
  IFS=$_old_ifs
}

# put SRC REL MODE: installs SRC at DESTDIR/REL atomically (running copies keep the old file).
put() {
  src=$1 rel=$2 mode=$3
  path=$DESTDIR/$rel
  make_dir "$(dirname "$rel")"
  if [ -e "$path" ] || [ -L "$path" ]; then
    if manifest_has file "$rel"; then
      : # ours, from an earlier install: replaced below
    elif manifest_has backup "$rel"; then
      : # already backed up by an earlier install
    else
      mkdir -p "$BACKUP/$(dirname "$rel")"
      mv "$path" "$BACKUP/$rel"
      echo "backup - $rel" >>"$NEW_MANIFEST"
      say "moved the existing /$rel to $BACKUP/$rel (restored by --uninstall)"
    fi
  fi
  cp "$src" "$path.new.$$"
  chmod "$mode" "$path.new.$$"
  mv -f "$path.new.$$" "$path"
  echo "file $(sha "$path") $rel" >>"$NEW_MANIFEST"
}

install_all() {
  payload=$(find_payload) || die "nothing to install next to $0: run scripts/build.sh first"
  version=$(cat "$payload/sparse_dd.d/VERSION")
  # The runtime must run here before anything is replaced.
  rt=$payload/sparse_dd.d
  DENO_DIR=/dev/null/sparse_dd DENO_NO_UPDATE_CHECK=1 "$rt/sparse_dd" --library-path "$rt/lib" \
    "$rt/deno" --version >/dev/null 2>&1 || die "$rt/deno does not run on this machine"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  NEW_MANIFEST=$tmp/manifest
  NEW_DIRS=$tmp/dirs
  : >"$NEW_MANIFEST"
  if [ -f "$MANIFEST.dirs" ]; then cp "$MANIFEST.dirs" "$NEW_DIRS"; else : >"$NEW_DIRS"; fi
  # Keep the backups of earlier installs.
  if [ -f "$MANIFEST" ]; then grep '^backup ' "$MANIFEST" >>"$NEW_MANIFEST" || true; fi
  [ -z "$DESTDIR" ] || mkdir -p "$DESTDIR"
  make_dir "$LIBEXEC_REL/sparse_dd.d"

  put "$rt/deno" "$LIBEXEC_REL/sparse_dd.d/deno" 755
  put "$rt/sparse_dd" "$LIBEXEC_REL/sparse_dd.d/sparse_dd" 755
  for lib in "$rt"/lib/*; do
    put "$lib" "$LIBEXEC_REL/sparse_dd.d/lib/${lib##*/}" 644
  done
  # The launcher: glibc's loader (named sparse_dd) runs deno with the libraries beside it, so
  # /proc/PID/exe is .../sparse_dd.d/sparse_dd. SPARSE_DD_LAUNCHER: how the program starts
  # itself again (the plugin's workers and copies), since its executable is the loader.
  if [ -f "$rt/sparse_dd.js" ]; then
    # The code first, then the module that loads it (scripts/eval_bundle.ts).
    put "$rt/sparse_dd.core.js" "$LIBEXEC_REL/sparse_dd.d/sparse_dd.core.js" 644
    put "$rt/sparse_dd.js" "$LIBEXEC_REL/sparse_dd.d/sparse_dd.js" 644
    # DENO_DIR names a directory that cannot exist: Deno keeps its caches in memory, so a copy
    # writes nothing but its destination (no /root/.cache/deno). -A: devices, /proc, /sys, /etc.
    run='"$d/deno" run -A --quiet --no-config --no-lock "$d/sparse_dd.js"'
  else
    run='"$d/deno"'
  fi
  cat >"$tmp/launcher" <<EOF
#!/bin/sh
# sparse_dd (installed by sparse_dd's install.sh): runs sparse_dd.d/deno with the glibc in
# sparse_dd.d/lib through its loader sparse_dd.d/sparse_dd. exec: the pid xapi records is that of
# a process whose /proc/PID/exe is named sparse_dd, as xapi's stray-process check expects.
self=\$0
[ -L "\$self" ] && self=\$(readlink -f -- "\$self")
case \$self in /*) ;; *) self=\$PWD/\$self ;; esac
d=\${self%/*}/sparse_dd.d
SPARSE_DD_LAUNCHER=\$self DENO_DIR=/dev/null/sparse_dd DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
export SPARSE_DD_LAUNCHER DENO_DIR DENO_NO_UPDATE_CHECK DENO_NO_PROMPT
exec "\$d/sparse_dd" --library-path "\$d/lib" $run "\$@"
EOF
  put "$payload/sparse_dd.d/VERSION" "$LIBEXEC_REL/sparse_dd.d/VERSION" 644
  put "$tmp/launcher" "$LIBEXEC_REL/sparse_dd" 755

  # The plugin finds the launcher by its fixed place relative to itself, so an install under a
  # DESTDIR runs where it lies; on the host, that is /opt/xensource/libexec/sparse_dd.
  cat >"$tmp/plugin" <<'EOF'
#!/bin/sh
# XAPI host plugin sparse_dd (installed by sparse_dd's install.sh): xapi passes the whole XML-RPC
# methodCall as $1. The program is /opt/xensource/libexec/sparse_dd.
exec "${0%/*}/../../../opt/xensource/libexec/sparse_dd" --xapi-plugin "$1"
EOF
  put "$tmp/plugin" "$PLUGIN_REL" 755

  cat >"$tmp/conf" <<EOF
# Installed by sparse_dd's install.sh: xapi runs this sparse_dd for VDI.copy and storage
# migration; takes effect when xapi restarts. Removed by $PROGRAM.d/install.sh --uninstall.
sparse_dd = $PROGRAM
EOF
  put "$tmp/conf" "$CONF_REL" 644

  cp "$0" "$tmp/install.sh"
  put "$tmp/install.sh" "$LIBEXEC_REL/sparse_dd.d/install.sh" 755

  # Files an earlier install had that this one does not (e.g. the bundle, now compiled).
  if [ -f "$MANIFEST" ]; then
    while read -r kind sum rel; do
      [ "$kind" = file ] || continue
      grep -q "^file [^ ]* $rel\$" "$NEW_MANIFEST" && continue
      if [ -f "$DESTDIR/$rel" ] && [ "$(sha "$DESTDIR/$rel")" = "$sum" ]; then
        rm -f "$DESTDIR/$rel"
      fi
    done <"$MANIFEST"
  fi
  cp "$NEW_DIRS" "$MANIFEST.dirs"
  cp "$NEW_MANIFEST" "$MANIFEST.new.$$"
  mv -f "$MANIFEST.new.$$" "$MANIFEST"

  # xapi reads /etc/xapi.conf.d/* in sorted order; a later file that sets sparse_dd wins.
  if [ -d "$DESTDIR/etc/xapi.conf.d" ]; then
    for f in "$DESTDIR"/etc/xapi.conf.d/*; do
      [ -f "$f" ] && [ "${f##*/}" != sparse_dd.conf ] || continue
      last=$(printf '%s\n%s\n' sparse_dd.conf "${f##*/}" | LC_ALL=C sort | tail -n 1)
      if [ "$last" != sparse_dd.conf ] && grep -q '^[[:space:]]*sparse_dd[[:space:]]*=' "$f"; then
        say "warning: $f also sets sparse_dd and is read after sparse_dd.conf: xapi will use that"
      fi
    done
  fi
  say "installed sparse_dd $version: $PROGRAM, /$PLUGIN_REL, /$CONF_REL"
  say "restart xapi (systemctl restart xapi) to make it run $PROGRAM for VDI copies"
  say "to uninstall: $PROGRAM.d/install.sh --uninstall"
}

case "${1:-}" in
  "") install_all ;;
  --uninstall) uninstall ;;
  -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown argument '$1' (use --uninstall, or nothing to install)" ;;
esac
