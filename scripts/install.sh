#!/usr/bin/env bash
# Installs vg as a system service: the binaries in $PREFIX/bin (default /usr/local), the
# mount helper /sbin/mount.vg (so that fstab lines of type vg and mount -t vg work), the
# systemd units (vg-nameserver.service, vg-storage@NAME.service) and example settings
# in /etc/vg. DESTDIR stages it all under another root (packaging, tests).
#
#   cargo build --release && scripts/install.sh        (as root)
#
# Then: certificates in /etc/vg/certs (vgctl certs init --dir /etc/vg/certs), settings
# in /etc/vg/nameserver.env and /etc/vg/storage-NAME.env (from the .example files), and
# systemctl enable --now vg-nameserver vg-storage@NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
log=/dev/null source scripts/lib.sh
prefix=${PREFIX:-/usr/local}
root=${DESTDIR:-}
bin=${VG_BIN:-target/release}
[[ -n $root ]] || need_root "installs into $prefix/bin, /sbin and /etc"
for tool in vg-nameserver vg-storage vg-fuse vgctl; do
  [[ -x $bin/$tool ]] || { echo "install.sh: $bin/$tool is missing: run cargo build --release first" >&2; exit 1; }
done

install -d "$root$prefix/bin" "$root/sbin" "$root/etc/vg" "$root/etc/systemd/system"
install -m 755 "$bin/vg-nameserver" "$bin/vg-storage" "$bin/vg-fuse" "$bin/vgctl" "$root$prefix/bin/"
ln -sf "$prefix/bin/vg-fuse" "$root/sbin/mount.vg"
for unit in vg-nameserver.service vg-storage@.service; do
  sed "s,/usr/local/bin/,$prefix/bin/," "scripts/systemd/$unit" >"$root/etc/systemd/system/$unit"
done
# Examples only: settings already in /etc/vg stay as they are.
install -m 644 scripts/systemd/nameserver.env "$root/etc/vg/nameserver.env.example"
install -m 644 scripts/systemd/storage.env "$root/etc/vg/storage.env.example"
if [[ -z $root && -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi
echo "installed vg in $root$prefix/bin, /sbin/mount.vg, units in $root/etc/systemd/system"
