#!/usr/bin/env bash
# rpm.sh RELEASE_DIR VERSION OUT.rpm: packages a release directory (made by scripts/build.sh) as
# an RPM, since XenServer's dom0 manages its software with RPM: `rpm -Uvh sparse_dd-*.rpm`,
# `rpm -e sparse_dd`. The files are the ones install.sh puts in place (it lays them out here);
# RPM owns them, so `rpm -e` removes them. A pre-existing /etc/xapi.conf.d/sparse_dd.conf or
# /opt/xensource/libexec/sparse_dd that no package owns is kept in /var/lib/sparse_dd/rpm-backup
# and put back when the package is erased. gzip payload and no strip: dom0's older rpm reads it,
# and the runtime stays byte for byte what was tested.
set -euo pipefail
rel=$1 version=$2 out=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/root
mkdir -p "$root"
DESTDIR=$root sh "$rel/install.sh" >/dev/null 2>&1 || {
  DESTDIR=$root sh "$rel/install.sh"
  exit 1
}
# RPM keeps the record: no install.sh manifest (its --uninstall is for tarball installs).
rm -f "$root"/opt/xensource/libexec/sparse_dd.d/{MANIFEST,MANIFEST.dirs,install.sh}

cat >"$work/sparse_dd.spec" <<EOF
Name: sparse_dd
Version: $version
Release: 1
Summary: Sparse-aware disk copier for xapi (drop-in sparse_dd) and XAPI host plugin
License: Proprietary
BuildArch: x86_64
AutoReqProv: no
%define _build_id_links none
%define _binary_payload w${SPARSE_DD_GZIP:-6}.gzdio
%define __os_install_post %{nil}
%define debug_package %{nil}

%description
sparse_dd copies VDIs for xapi (VDI.copy, storage migration) reading only allocated data.
Installs /opt/xensource/libexec/sparse_dd (the Deno runtime and the program under
/opt/xensource/libexec/sparse_dd.d), the host plugin /etc/xapi.d/plugins/sparse_dd and
/etc/xapi.conf.d/sparse_dd.conf, which makes xapi run it after a restart of xapi.

%install
cp -a $root/. %{buildroot}/

%pre
if [ "\$1" = 1 ]; then
  for f in /etc/xapi.conf.d/sparse_dd.conf /opt/xensource/libexec/sparse_dd; do
    if [ -e "\$f" ] && ! rpm -qf "\$f" >/dev/null 2>&1; then
      mkdir -p "/var/lib/sparse_dd/rpm-backup\${f%/*}"
      mv "\$f" "/var/lib/sparse_dd/rpm-backup\$f"
      echo "sparse_dd: moved \$f to /var/lib/sparse_dd/rpm-backup\$f (restored by rpm -e)" >&2
    fi
  done
fi

%post
echo "sparse_dd: restart xapi (systemctl restart xapi) to make it run /opt/xensource/libexec/sparse_dd" >&2

%postun
if [ "\$1" = 0 ]; then
  for f in /etc/xapi.conf.d/sparse_dd.conf /opt/xensource/libexec/sparse_dd; do
    if [ -e "/var/lib/sparse_dd/rpm-backup\$f" ] && [ ! -e "\$f" ]; then
      mv "/var/lib/sparse_dd/rpm-backup\$f" "\$f"
    fi
  done
  find /var/lib/sparse_dd -depth -type d -empty -delete 2>/dev/null || true
  echo "sparse_dd: restart xapi (systemctl restart xapi) so it runs its own sparse_dd again" >&2
fi

%files
%defattr(-,root,root,-)
/opt/xensource/libexec/sparse_dd
/opt/xensource/libexec/sparse_dd.d
/etc/xapi.d/plugins/sparse_dd
%config(noreplace) /etc/xapi.conf.d/sparse_dd.conf
EOF

echo "== rpmbuild -> $out" >&2
HOME=$work rpmbuild -bb --quiet \
  --define "_topdir $work/top" \
  --define "_rpmdir $work/out" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  "$work/sparse_dd.spec" >"$work/log" 2>&1 || {
  cat "$work/log" >&2
  exit 1
}
mv -f "$work/out/sparse_dd-$version-1.x86_64.rpm" "$out"
echo "built $out ($(du -h "$out" | cut -f1))" >&2
