#!/usr/bin/env bash
# Power loss, as Jepsen tests it with LazyFS: the nameserver's --meta-dir and every
# storage's --rootpath live on lossyfs (vg-fuse/examples/lossyfs.rs), a passthrough file
# system that holds every write not yet fsynced in its memory. Twenty times, at a seeded
# moment during mixed metadata and file writes through the mount, power is cut: lossyfs
# and every vg process are SIGKILLed at once, so that what was not synced is gone. Then
# the cluster restarts on what survived and scripts/powerloss.pl checks that the tree is
# what a prefix of the ops left, holding at least every op an fsync or fsyncdir covered;
# trees of earlier rounds must be unchanged, and vgctl fsck clean. In even rounds the
# storages' disk is slow (an fsync of their files takes effect 40 ms late), so that a
# log record written before the blocks it names are synced would be caught. Every fifth round
# mounts with --sync-on-close, and there every close counts as an fsync. A negative
# control first shows that lossyfs does drop unsynced writes.
#
#   scripts/powerloss-test.sh     (as root; binaries in $VG_BIN, default target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_root "FUSE mounts"
lossyfs=$bin/examples/lossyfs
for tool in vg-nameserver vg-storage vg-fuse vgctl examples/lossyfs; do
  [[ -x $bin/$tool ]] || { echo "powerloss-test.sh: $bin/$tool is missing: run cargo build --workspace --all-targets first" >&2; exit 1; }
done
rounds=${ROUNDS:-20}

work=$(mktemp -d /tmp/vg-powerloss.XXXXXX)
log=$work/test.log
backing=$work/backing disk=$work/disk mnt=$work/mnt
mkdir -p "$backing" "$disk" "$mnt"
export VG_BIN=$bin VG_CERTS=$work/certs VG_HOME=$work/home VG_DATA=$disk
VG_NS_PORT=$(random_port)
export VG_NS_PORT VG_HEARTBEAT_TIMEOUT=3s
# A power cut reboots the machine: the nameserver tells a power loss from a crash of
# its process by the boot id, which each cut changes.
export VG_BOOT_ID_FILE=$work/boot_id
new_boot() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$VG_BOOT_ID_FILE"; }
new_boot
lossy_pid=

mounted() { grep -q " $1 " /proc/mounts; }

start_disk() {
  LOSSYFS_SLOW_FSYNC=${slow:-} "$lossyfs" "$backing" "$disk" >>"$log" 2>&1 &
  lossy_pid=$!
  eventually 10 mounted "$disk" || { echo "powerloss-test.sh: lossyfs did not mount"; return 1; }
}

# Cuts the power: lossyfs and every process of the cluster, SIGKILLed by PID.
cut() {
  [[ -n $lossy_pid ]] && kill -9 "$lossy_pid" 2>/dev/null
  local pid pids=()
  if [[ -f $VG_HOME/pids ]]; then
    while read -r _ pid _; do kill -9 "$pid" 2>/dev/null && pids+=("$pid"); done <"$VG_HOME/pids"
    rm -f "$VG_HOME/pids"
  fi
  # SIGKILL returns before the process has exited and let go of its ports: the restart
  # would find them taken.
  for pid in "${pids[@]}"; do eventually 30 exited "$pid"; done
  [[ -n $lossy_pid ]] && wait "$lossy_pid" 2>/dev/null
  lossy_pid=
  new_boot
  for m in "$mnt" "$disk"; do mounted "$m" && umount -l "$m"; done
}

up() {
  scripts/up.sh -n 3 -c 1GiB -b 64KiB -m "$mnt" >>"$log" 2>&1 && return
  # Inside a round, so that the round fails with the servers' last words in the log.
  echo "powerloss-test.sh: the cluster did not start"
  tail -n 3 "$VG_HOME/logs/nameserver.log" 2>/dev/null
  grep -h -i -E "error|panic" "$VG_HOME"/logs/*.log "$VG_HOME"/logs/*.out 2>/dev/null | tail -n 6
  return 1
}

# A failed run keeps its logs, journals and the disks' backing files for a look.
cleanup() {
  [[ -f $VG_HOME/pids ]] && scripts/down.sh >>"$log" 2>&1
  cut
  if ((failed == 0)); then rm -rf "$work"; else echo "powerloss-test.sh: kept $work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The negative control: lossyfs loses what was written without fsync, keeps the rest.
control() {
  start_disk || return 1
  head -c 300000 /dev/urandom >"$work/bytes"
  cp "$work/bytes" "$disk/unsynced"
  perl -e 'open(my $f, ">:raw", $ARGV[0]) or die; print $f `cat $ARGV[1]`; $f->flush; $f->sync or die "fsync: $!"' \
    "$disk/synced" "$work/bytes"
  cmp -s "$work/bytes" "$disk/unsynced" || { echo "unsynced file did not read back before the cut"; return 1; }
  cut
  start_disk || return 1
  local size
  size=$(stat -c %s "$disk/unsynced" 2>/dev/null || echo gone)
  echo "after the cut: the unsynced file is $size bytes (was 300000); the synced one:"
  cmp "$work/bytes" "$disk/synced" || return 1
  rm -f "$disk/unsynced" "$disk/synced"
  cut
  [[ $size == gone || $size -lt 300000 ]]
}
check "negative control: lossyfs drops writes not fsynced, keeps the fsynced" control

# One round: start, write, cut at a seeded moment, restart, check this round's tree and
# every earlier one's; whatever happened, nothing of it runs afterwards.
round() {
  round_checks "$@"
  local ok=$?
  [[ -f $VG_HOME/pids ]] && scripts/down.sh >>"$log" 2>&1
  cut
  slow=
  return $ok
}

round_checks() {
  local i=$1 seed=$((20261203 + $1)) closes= first=1
  slow=
  ((i % 2 == 0)) && slow=/data/:40
  # Every close syncs, and a sync through lossyfs costs a real fsync: a longer run.
  if ((i % 5 == 0)); then closes=closes first=4; export VG_SYNC_ON_CLOSE=true; else unset VG_SYNC_ON_CLOSE; fi
  RANDOM=$seed
  local delay
  delay=$(printf '0.%03d' $((RANDOM % 1000)))
  start_disk && up || return 1
  perl scripts/powerloss.pl mkdir "$mnt/w$i" || return 1
  perl scripts/powerloss.pl run "$mnt/w$i" "$work/journal$i" "$seed" $closes >>"$log" 2>&1 &
  local writer=$!
  sleep "$first" && sleep "$delay"
  cut
  wait "$writer" 2>/dev/null
  start_disk && up || return 1
  # The log's syncs went to its sector copy, which stood for it after the cut.
  [[ -f $disk/meta/log.sectors ]] || { echo "the nameserver keeps no log.sectors on lossyfs"; return 1; }
  local found
  found=$(perl scripts/powerloss.pl check "$mnt/w$i" "$work/journal$i") || { echo "$found"; return 1; }
  echo "round $i${closes:+ (--sync-on-close)}${slow:+ (slow storage disk)}: cut $first s + $delay s in; $found" | tee -a "$work/rounds"
  perl scripts/powerloss.pl digest "$mnt/w$i" >"$work/digest$i"
  local j
  for ((j = 1; j < i; j++)); do
    perl scripts/powerloss.pl digest "$mnt/w$j" | cmp -s - "$work/digest$j" \
      || { echo "the tree of round $j changed"; return 1; }
  done
  # shellcheck disable=SC1091
  (source "$VG_HOME/env" && eventually 30 "$bin/vgctl" fsck >"$work/fsck" 2>&1) \
    || { cat "$work/fsck"; return 1; }
}

# A failed round leaves the cluster damaged: later rounds could not be judged on it.
for ((i = 1; i <= rounds; i++)); do
  check "power cut $i of $rounds: a prefix survives, holding every fsynced op; fsck clean" round "$i"
  ((failed == 0)) || break
done
cat "$work/rounds" 2>/dev/null
summary
