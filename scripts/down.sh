#!/usr/bin/env bash
# Stops the local cluster that scripts/up.sh started, by the PIDs it recorded: first
# unmounts (vg-fuse commits what was written), then stops the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
home=${VG_HOME:-$(pwd)/.vg}
pids=$home/pids
if [[ ! -f $pids ]]; then
  echo "down.sh: no cluster recorded in $home" >&2; exit 0
fi
while read -r name pid mountpoint; do
  if [[ $name == vg-fuse && -n ${mountpoint:-} ]] && mountpoint -q "$mountpoint"; then
    umount "$mountpoint" || umount -l "$mountpoint" || true
    # vg-fuse exits once the kernel has released the mount.
    eventually 10 exited "$pid" || true
  fi
done < "$pids"
# Whether PID still runs what was recorded under NAME: a process that died (a test kills
# some) may have had its PID reused by something that is not ours.
ours() {
  local name=$1 pid=$2 cmd
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  case $name in
    nameserver | ns[0-9]*) [[ $cmd == *vg-nameserver* ]] ;;
    vg-fuse) [[ $cmd == *vg-fuse* ]] ;;
    *) [[ $cmd == *vg-storage*"--name $name "* ]] ;;
  esac
}
while read -r name pid _; do
  if ours "$name" "$pid" && kill "$pid" 2>/dev/null; then
    eventually 5 exited "$pid" || kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
done < "$pids"
rm -f "$pids"
