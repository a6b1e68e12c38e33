#!/usr/bin/env bash
# POSIX conformance: pjdfstest (the suite FreeBSD, ZFS, MooseFS and JuiceFS are measured
# with: 238 files, about 8,800 checks of chmod, chown, link, mkdir, mkfifo, mknod, open,
# rename, rmdir, symlink, truncate, unlink and utimensat, their errnos and times) on a
# fresh loopback cluster's mount, as root. Not part of the README's test command: the
# suite's source is on GitHub, which CI cannot reach. About 4 minutes.
#
#   scripts/conformance.sh PJDFSTEST_SOURCE   (a checkout of github.com/pjd/pjdfstest;
#                                             uses the binaries in $VG_BIN, default
#                                             target/debug; KEEP=1 keeps the work dir)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_binaries_as_root vg-nameserver vg-storage vg-fuse vgctl
src=${1:?usage: scripts/conformance.sh PJDFSTEST_SOURCE (a checkout of github.com/pjd/pjdfstest)}
[[ -f $src/pjdfstest.c && -d $src/tests ]] || { echo "conformance.sh: $src is not a pjdfstest checkout" >&2; exit 1; }
src=$(cd "$src" && pwd)

need_packages autoconf automake gcc make perl \
  || { echo "conformance.sh: cannot install autoconf, automake, gcc, make and perl (apt-get failed)" >&2; exit 1; }
if [[ ! -x $src/pjdfstest ]]; then
  (cd "$src" && autoreconf -ifs && ./configure && make pjdfstest) >/dev/null \
    || { echo "conformance.sh: pjdfstest did not build in $src" >&2; exit 1; }
fi

work=$(mktemp -d /tmp/vg-conformance.XXXXXX)
export VG_BIN=$bin VG_CERTS=$work/certs VG_HOME=$work/cluster
cleanup() {
  [[ -f $VG_HOME/pids ]] && scripts/down.sh >>"$work/up.log" 2>&1
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
VG_NS_PORT=$(random_port) scripts/up.sh -n 2 -c 1GiB -m "$work/mnt" >"$work/up.log" 2>&1 \
  || { echo "conformance.sh: the cluster did not start; log:"; tail -n 30 "$work/up.log"; exit 1; }
# pjdfstest works in the current directory, and needs root's view of every file.
# In a subshell: the cleanup must not stand in the mount it unmounts.
mkdir "$work/mnt/pjd" && (cd "$work/mnt/pjd" && prove -r "$src/tests")
