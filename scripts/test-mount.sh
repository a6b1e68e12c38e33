#!/usr/bin/env bash
# Shell tests of the mount: real coreutils on a real FUSE mount of a real loopback
# cluster. Prints PASS/FAIL per test and ends with "N passed, N failed".
#
#   scripts/test-mount.sh        (as root; uses the binaries in $VG_BIN, default target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_binaries_as_root vg-nameserver vg-storage vg-fuse vgctl

work=$(mktemp -d /tmp/vg-mount-test.XXXXXX)
log=$work/test.log
export VG_BIN=$bin VG_CERTS=$work/certs
# Fast failure detection and garbage collection, so that fault tests finish quickly.
export VG_HEARTBEAT_TIMEOUT=3s VG_GC_GRACE=2s

cleanup() {
  for home in "$work"/cluster-*; do
    [[ -f $home/pids ]] && VG_HOME=$home scripts/down.sh >>"$log" 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Shown under a failure: the servers' and mounts' latest warnings and errors, the only
# trace of them CI keeps (the work directory goes at exit).
failure_context() {
  echo "-- latest warnings and errors of the clusters' servers and mounts:"
  grep -h -E '^[0-9T:.-]+Z +(WARN|ERROR) ' "$work"/cluster-*/logs/*.log 2>/dev/null | sort | tail -n 20 | cut -c1-400
}

# start_cluster NAME PORT UP_FLAGS...: a cluster under $work/cluster-NAME mounted at $work/mnt-NAME.
start_cluster() {
  local name=$1 port=$2
  shift 2
  VG_HOME=$work/cluster-$name VG_NS_PORT=$port scripts/up.sh -m "$work/mnt-$name" "$@" >>"$log" 2>&1 \
    || { echo "test-mount.sh: cluster $name did not start; log:"; tail -n 30 "$log"; exit 1; }
}

# sqlite3 for the database test; as root the packages a fresh machine lacks are installed.
need_packages sqlite3 || { echo "test-mount.sh: cannot install sqlite3 (apt-get failed)" >&2; exit 1; }

port=$(random_port)
start_cluster main "$port" -n 3 -c 2GiB -b 1MiB
mnt=$work/mnt-main
src=$work/src
mkdir -p "$src"
block=$((1 << 20))

# A new cluster had no mounts before: its locks are granted at once, not after a lease
# (30 s) left for mounts of before a restart to take theirs back.
fresh_locks() {
  sqlite3 "$mnt/fresh.db" 'create table t (x); insert into t values (1);' \
    && [[ $(sqlite3 "$mnt/fresh.db" 'select count(*) from t;') == 1 ]] && rm "$mnt/fresh.db"
}
check "sqlite right after the cluster starts: its locks are granted at once" fresh_locks

# Sizes on both sides of the block boundary (1 MiB here) and a large file.
copy_round_trip() {
  local size=$1
  head -c "$size" /dev/urandom >"$src/f$size"
  cp "$src/f$size" "$mnt/f$size" && cmp "$src/f$size" "$mnt/f$size" \
    && cp "$mnt/f$size" "$src/back$size" && cmp "$src/f$size" "$src/back$size" \
    && [[ $(stat -c %s "$mnt/f$size") == "$size" ]]
}
for size in 0 1 4095 $((block - 1)) $block $((block + 1)) $((3 * block + 17)) $((100 << 20)); do
  check "cp in/out and cmp, $size bytes" copy_round_trip "$size"
done

dirs() {
  mkdir -p "$mnt/d1/d2/d3" && [[ -d $mnt/d1/d2/d3 ]] && rmdir "$mnt/d1/d2/d3" && [[ ! -e $mnt/d1/d2/d3 ]] \
    && echo x >"$mnt/d1/d2/file" && ! rmdir "$mnt/d1" 2>/dev/null && rm -r "$mnt/d1" && [[ ! -e $mnt/d1 ]]
}
check "mkdir -p, rmdir, rm -r" dirs

moves() {
  echo one >"$mnt/m1" && echo two >"$mnt/m2" && mkdir -p "$mnt/md/sub" && echo deep >"$mnt/md/sub/f" \
    && mv "$mnt/m1" "$mnt/m1.renamed" && [[ $(cat "$mnt/m1.renamed") == one ]] \
    && mv -f "$mnt/m1.renamed" "$mnt/m2" && [[ $(cat "$mnt/m2") == one ]] && [[ ! -e $mnt/m1.renamed ]] \
    && mv "$mnt/md" "$mnt/md2" && [[ $(cat "$mnt/md2/sub/f") == deep ]] \
    && echo keep >"$mnt/m3" && mv -n "$mnt/m2" "$mnt/m3" && [[ $(cat "$mnt/m3") == keep ]]
}
check "mv of files and directories, over a file, -n" moves

links() {
  echo linked >"$mnt/l1" && ln "$mnt/l1" "$mnt/l2" && [[ $(stat -c %h "$mnt/l1") == 2 ]] \
    && [[ $(cat "$mnt/l2") == linked ]] && ln -s l1 "$mnt/sym" && [[ $(readlink "$mnt/sym") == l1 ]] \
    && [[ $(cat "$mnt/sym") == linked ]] && rm "$mnt/l1" && [[ $(cat "$mnt/l2") == linked ]]
}
check "ln and ln -s" links

# fallocate: mode 0 grows the file (reading zeros), KEEP_SIZE does not; other modes are
# refused with EOPNOTSUPP, never faked.
falloc() {
  printf 'head' >"$mnt/fa" && fallocate -o 0 -l $((3 * block + 5)) "$mnt/fa" \
    && [[ $(stat -c %s "$mnt/fa") == $((3 * block + 5)) ]] \
    && cmp <(printf 'head'; head -c $((3 * block + 1)) /dev/zero) "$mnt/fa" \
    && fallocate -n -o 0 -l $((8 * block)) "$mnt/fa" && [[ $(stat -c %s "$mnt/fa") == $((3 * block + 5)) ]] \
    && ! fallocate -p -o 0 -l 10 "$mnt/fa" 2>"$work/fa.err" && grep -qi "supported" "$work/fa.err"
}
check "fallocate grows a file, -n keeps its size, -p is refused" falloc

# copy_file_range within vg moves no bytes: the copy's slices name the source's blobs.
# At unaligned offsets it still copies the right bytes, over existing ones.
blobs_of() {
  (source "$work/cluster-main/env" && "$bin/vgctl" stat "$1") | awk '/replicas=/ {split($3, b, "@"); print b[1]}' | sort -u
}
copy_range() {
  local len=$((3 * block + 4321))
  head -c $((5 * block)) /dev/urandom >"$src/cr" && cp "$src/cr" "$mnt/cr" && : >"$mnt/cr-copy" \
    && perl scripts/copy-range.pl "$mnt/cr" 0 "$mnt/cr-copy" 0 $((5 * block)) \
    && cmp "$src/cr" "$mnt/cr-copy" && [[ $(blobs_of /cr) == $(blobs_of /cr-copy) ]] \
    && head -c $((2 * block)) /dev/urandom >"$src/cr2" && cp "$src/cr2" "$mnt/cr2" \
    && perl scripts/copy-range.pl "$mnt/cr" 100000 "$mnt/cr2" 12345 "$len" \
    && cmp <(head -c 12345 "$src/cr2"; tail -c +100001 "$src/cr" | head -c "$len") "$mnt/cr2"
}
check "copy_file_range references the source's blobs and copies at any offset" copy_range

attrs() {
  echo a >"$mnt/attr" && chmod 640 "$mnt/attr" && [[ $(stat -c %a "$mnt/attr") == 640 ]] \
    && touch -d '2001-02-03 04:05:06 UTC' "$mnt/attr" && [[ $(stat -c %Y "$mnt/attr") == 981173106 ]] \
    && chown 1234:5678 "$mnt/attr" && [[ $(stat -c %u:%g "$mnt/attr") == 1234:5678 ]]
}
check "chmod, chown, touch -d, stat" attrs

truncation() {
  head -c 3000000 /dev/urandom >"$src/t" && cp "$src/t" "$mnt/t" \
    && truncate -s 5 "$mnt/t" && truncate -s 5 "$src/t" && cmp "$src/t" "$mnt/t" \
    && truncate -s 2500000 "$mnt/t" && truncate -s 2500000 "$src/t" && cmp "$src/t" "$mnt/t" \
    && truncate -s 0 "$mnt/t" && [[ $(stat -c %s "$mnt/t") == 0 ]]
}
check "truncate down, up (holes read as zeros), to 0" truncation

appends() {
  : >"$mnt/app" && for i in 1 2 3; do echo "line $i" >>"$mnt/app"; done \
    && [[ $(cat "$mnt/app") == $'line 1\nline 2\nline 3' ]]
}
check ">> appends" appends

overwrite() {
  head -c $((5 * block + 123)) /dev/urandom >"$src/ow" && cp "$src/ow" "$mnt/ow" \
    && head -c 70000 /dev/urandom >"$src/patch" \
    && dd if="$src/patch" of="$src/ow" bs=1 seek=$((2 * block - 1000)) conv=notrunc status=none \
    && dd if="$src/patch" of="$mnt/ow" bs=64k seek=$((2 * block - 1000)) oflag=seek_bytes conv=notrunc status=none \
    && cmp "$src/ow" "$mnt/ow"
}
check "dd conv=notrunc overwrite in the middle" overwrite

sparse() {
  rm -f "$src/sp" && dd if=/dev/urandom of="$src/sp" bs=4096 count=1 seek=1000 status=none \
    && dd if="$src/sp" of="$mnt/sp" bs=4096 skip=1000 seek=1000 count=1 status=none \
    && cmp "$src/sp" "$mnt/sp"
}
check "sparse write past EOF reads zeros in the hole" sparse

exclusive() {
  echo first >"$mnt/excl" && ! (set -o noclobber; echo second >"$mnt/excl") 2>/dev/null \
    && [[ $(cat "$mnt/excl") == first ]]
}
check "O_EXCL refuses an existing file" exclusive

parallel_handles() {
  local i
  head -c $((4 * block)) /dev/zero >"$src/par" && cp "$src/par" "$mnt/par" || return 1
  for i in 0 1 2 3 4 5 6 7; do
    head -c $((block / 2 + 1000)) /dev/urandom >"$src/piece$i"
    dd if="$src/piece$i" of="$src/par" bs=4k seek=$((i * (block / 2))) oflag=seek_bytes conv=notrunc status=none
  done
  for i in 0 1 2 3 4 5 6 7; do
    dd if="$src/piece$i" of="$mnt/par" bs=4k seek=$((i * (block / 2))) oflag=seek_bytes conv=notrunc status=none &
  done
  wait
  # The pieces overlap by 1000 bytes: the last writer of each overlap wins, as on any
  # file system, so compare only the bytes no two writers touched.
  for i in 0 1 2 3 4 5 6 7; do
    cmp -n $((block / 2 - 1000)) -i $((i * (block / 2) + 1000)) "$src/par" "$mnt/par" || return 1
  done
}
check "8 concurrent writers on one file" parallel_handles

# `stat` while `cp` closes its file: attributes fetched before the commit and answered
# after it must not reach the kernel, which would take the old size (0) and read the
# file as empty until its attribute TTL ran out.
stat_during_close() {
  local i stats ok=0
  head -c $((3 * block)) /dev/urandom >"$src/racy"
  for i in $(seq 1 20); do
    (while :; do stat "$mnt/racy$i" >/dev/null 2>&1; done) &
    stats=$!
    cp "$src/racy" "$mnt/racy$i"
    kill "$stats"
    wait "$stats" 2>/dev/null
    [[ $(stat -c %s "$mnt/racy$i") == $((3 * block)) ]] && cmp -s "$src/racy" "$mnt/racy$i" && ok=$((ok + 1))
  done
  ((ok == 20)) || { echo "$((20 - ok)) of 20 files looked wrong right after cp"; return 1; }
}
check "stat racing with close sees the written size" stat_during_close

dfree() {
  df -h "$mnt" && df --output=fstype,size "$mnt" | tail -n 1 | grep -q '^fuse' \
    && [[ $(df --output=size -B1 "$mnt" | tail -n 1) -gt $((2 << 30)) ]]
}
check "df shows the cluster capacity" dfree

# The mount raises its kernel read-ahead to 1 MiB (the kernel's default is 128 KiB).
read_ahead() {
  [[ $(cat "/sys/class/bdi/$(mountpoint -d "$mnt")/read_ahead_kb") == 1024 ]]
}
check "kernel read-ahead raised to 1 MiB" read_ahead

big_dir() {
  mkdir "$mnt/many" && for i in $(seq 2000); do : >"$mnt/many/file$i"; done \
    && [[ $(ls -l "$mnt/many" | wc -l) == 2001 ]] && [[ $(ls "$mnt/many" | wc -l) == 2000 ]]
}
check "ls -l of a 2,000-file directory" big_dir

tree() {
  tar -C /usr -cf - include | tar -C "$mnt" -xf - && diff -r /usr/include "$mnt/include" \
    && tar -C /usr -cf - include | tar -C "$mnt" -df -
}
check "tar c/x round trip of /usr/include, diff -r" tree

# A second mount of the same cluster: what one writes and closes, the other reads.
mnt2=$work/mnt-second
mkdir -p "$mnt2"
# shellcheck disable=SC1091
pid2=$(source "$work/cluster-main/env" && "$bin/vg-fuse" "$mnt2" --daemon --logfile "$work/cluster-main/logs/vg-fuse-2.log")
echo "vg-fuse $pid2 $mnt2" >>"$work/cluster-main/pids"
two_mounts() {
  head -c $((2 * block + 5)) /dev/urandom >"$src/shared" && cp "$src/shared" "$mnt/shared" \
    && cmp "$src/shared" "$mnt2/shared" \
    && echo "changed on the second mount" >"$mnt2/shared" \
    && eventually 5 grep -q "changed on the second" "$mnt/shared"
}
check "two mounts: written on one, read on the other after close" two_mounts

# tar sets owner, mode and times before closing each file; the mount sends them with
# the file's commit. The other mount must see them (tar -d compares all of them).
tar_attrs() {
  tar -C /usr -cf - include | tar -C "$mnt2" -df -
}
check "tar attributes (mode, owner, mtime) seen from the second mount" tar_attrs

# Read a large R=2 file through the second mount (nothing cached there) and kill a
# storage halfway: the read must still return the right bytes.
storage_dies() {
  local victim pid reader
  victim=$(awk '$1 == "alice" {print $2}' "$work/cluster-main/pids")
  cmp "$src/f$((100 << 20))" "$mnt2/f$((100 << 20))" &
  reader=$!
  eventually 30 bash -c "[[ \$(awk '/^rchar/ {print \$2}' /proc/$reader/io 2>/dev/null || echo 0) -gt $((20 << 20)) ]] || ! kill -0 $reader 2>/dev/null"
  kill -9 "$victim"
  wait "$reader"
}
check "kill a storage while reading: the read succeeds" storage_dies

remount() {
  echo "written just before umount" >"$mnt2/last" && umount "$mnt2" && ! mountpoint -q "$mnt2" \
    && pid2=$(source "$work/cluster-main/env" && "$bin/vg-fuse" "$mnt2" --daemon --logfile "$work/cluster-main/logs/vg-fuse-3.log") \
    && echo "vg-fuse $pid2 $mnt2" >>"$work/cluster-main/pids" \
    && [[ $(cat "$mnt2/last") == "written just before umount" ]] && grep -q "changed on the second" "$mnt2/shared"
}
check "umount and mount again: closed files are there" remount

sigterm() {
  local got logs=$work/cluster-main/logs
  echo "written before SIGTERM" >"$mnt2/sig" && kill -TERM "$pid2" || return 1
  eventually 20 bash -c "! mountpoint -q $mnt2" || {
    echo "still mounted 20 s after SIGTERM; the mount's log ends:"; tail -n 5 "$logs/vg-fuse-3.log"; return 1
  }
  pid2=$(source "$work/cluster-main/env" && "$bin/vg-fuse" "$mnt2" --daemon --logfile "$logs/vg-fuse-4.log") || return 1
  echo "vg-fuse $pid2 $mnt2" >>"$work/cluster-main/pids"
  got=$(cat "$mnt2/sig") && [[ $got == "written before SIGTERM" ]] || { echo "read back: '$got'"; return 1; }
}
check "SIGTERM unmounts cleanly and loses nothing closed" sigterm

# SIGTERM while a process has a file open there: the mount is detached at once (as
# umount -l does) and the daemon exits when the file is closed.
sigterm_busy() {
  local holder
  (exec 3<"$mnt2/sig" && sleep 3) &
  holder=$!
  eventually 10 bash -c "ls -l /proc/$holder/fd 2>/dev/null | grep -q '$mnt2/sig'" && kill -TERM "$pid2" \
    && eventually 20 bash -c "! mountpoint -q $mnt2" && ! exited "$pid2" && wait "$holder" \
    && eventually 20 exited "$pid2"
}
check "SIGTERM with a file open: detached at once, exits once it is closed" sigterm_busy

# Kill a storage in the middle of a large write: the upload is placed elsewhere and
# the file reads back intact; vgctl fsck is clean once re-replication is done.
start_cluster faults $((port + 200)) -n 3 -c 2GiB -b 1MiB
faults=$work/mnt-faults
storage_dies_writing() {
  local victim writer
  victim=$(awk '$1 == "bob" {print $2}' "$work/cluster-faults/pids")
  head -c $((64 << 20)) /dev/urandom >"$src/w64"
  cp "$src/w64" "$faults/w64" &
  writer=$!
  eventually 30 bash -c "[[ \$(stat -c %s $faults/w64 2>/dev/null || echo 0) -gt $((16 << 20)) ]] || ! kill -0 $writer 2>/dev/null"
  kill -9 "$victim"
  wait "$writer" && cmp "$src/w64" "$faults/w64" \
    && (source "$work/cluster-faults/env" && eventually 60 "$bin/vgctl" fsck >/dev/null 2>&1)
}
check "kill a storage while writing: the write completes, fsck clean after" storage_dies_writing

# Block files on the live storages of the faults cluster (its 1 MiB blocks are all above
# the size that goes to volume files, so each block has a file of its own).
blocks_on_disk() {
  local name total=0
  for name in "$@"; do
    total=$((total + $(find "$work/cluster-faults/data/$name/blocks" -type f ! -name '*.crc' | wc -l)))
  done
  echo "$total"
}
no_orphans() {
  local referenced
  referenced=$(source "$work/cluster-faults/env" && "$bin/vgctl" status | awk '/^blocks:/ {print $2}')
  [[ $(blocks_on_disk alice carol) == $((2 * referenced)) ]]
}
check "no orphan blocks after the GC grace period" eventually 30 no_orphans

# Flip bytes in every block file of one storage: reads through a fresh mount still return
# the right bytes, and the bad copies are found, deleted and replaced.
bit_rot() {
  local file mnt3=$work/mnt-rot pid3
  for file in $(find "$work/cluster-faults/data/alice/blocks" -type f ! -name '*.crc'); do
    printf '\xff\x00\xff' | dd of="$file" bs=1 seek=1000 conv=notrunc status=none
  done
  mkdir -p "$mnt3"
  pid3=$(source "$work/cluster-faults/env" && "$bin/vg-fuse" "$mnt3" --daemon --logfile "$work/cluster-faults/logs/vg-fuse-rot.log") \
    && echo "vg-fuse $pid3 $mnt3" >>"$work/cluster-faults/pids" \
    && cmp "$src/w64" "$mnt3/w64" \
    && (source "$work/cluster-faults/env" && eventually 60 "$bin/vgctl" fsck >/dev/null 2>&1) \
    && umount "$mnt3"
}
check "bit rot on one storage: reads still right, bad copies repaired, fsck clean" bit_rot

# SIGKILL a storage right after small files were written to it (each is on alice and
# carol: bob is down), then start it again: its scan finds their blocks in its volume
# files, and the files read back.
scanned_at_least() {
  local n
  n=$(grep -o 'volumes scanned.* blocks=[0-9]*' "$1" 2>/dev/null | grep -o '[0-9]*$')
  [[ -n $n ]] && ((n >= $2))
}
storage_restart() {
  local i victim certs=$work/certs pids=$work/cluster-faults/pids
  for i in $(seq 1 50); do echo "small file $i" >"$faults/small$i" || return 1; done
  victim=$(awk '$1 == "carol" {print $2}' "$pids")
  # Its port is let go only once it has exited.
  kill -9 "$victim" && eventually 10 exited "$victim" || return 1
  "$bin/vg-storage" --name carol --ca-cert "$certs/rootCA.crt" --certfile "$certs/carol/carol.crt" \
    --keyfile "$certs/carol/carol.key" --hostname 127.0.0.1 --port $((port + 203)) --capacity 2GiB \
    --rootpath "$work/cluster-faults/data/carol" --ns-hostname 127.0.0.1 --ns-port $((port + 200)) \
    --logfile "$work/cluster-faults/logs/carol-2.log" >/dev/null 2>&1 &
  sed -i "s/^carol $victim\$/carol $!/" "$pids"
  eventually 30 scanned_at_least "$work/cluster-faults/logs/carol-2.log" 50 \
    && for i in $(seq 1 50); do [[ $(cat "$faults/small$i") == "small file $i" ]] || return 1; done \
    && (source "$work/cluster-faults/env" && eventually 60 "$bin/vgctl" fsck >/dev/null 2>&1)
}
check "SIGKILL a storage holding small blocks and restart it: its volumes are found again" storage_restart

# A small cluster to fill: 2 storages of 6 MiB, R=2, 1 MiB blocks.
start_cluster small $((port + 100)) -n 2 -c 6MiB -b 1MiB
small=$work/mnt-small
enospc() {
  head -c $((3 * block)) /dev/urandom >"$src/fits" && cp "$src/fits" "$small/fits" \
    && head -c $((5 * block)) /dev/urandom >"$src/too-big" \
    && ! cp "$src/too-big" "$small/too-big" 2>"$work/cp.err" && grep -q "No space left on device" "$work/cp.err" \
    && cmp "$src/fits" "$small/fits"
}
check "ENOSPC from cp when the cluster is full, earlier files intact" enospc

# Small writes cost what they write (issue 16): a 3 x 64 MiB cluster (R=2, 4 MiB blocks)
# takes random 4 KiB rewrites of one 8 MiB file amounting to ten times its capacity, an
# fsync every 16 writes, without ENOSPC: the garbage they leave is reclaimed before a write
# is refused. A 20 s grace period: shorter than the run, so collection and reclaim both work.
VG_GC_GRACE=20s start_cluster slices $((port + 300)) -n 3 -c 64MiB
slices=$work/mnt-slices
# Bytes the storages of the slices cluster hold (capacity minus free, from vgctl du).
held_bytes() {
  (source "$work/cluster-slices/env" && "$bin/vgctl" du) | awk '
    function bytes(n, unit) { return n * (unit == "KiB" ? 1024 : unit == "MiB" ? 1048576 : unit == "GiB" ? 1073741824 : 1) }
    NR > 1 { used += bytes($5, $6) - bytes($3, $4) } END { printf "%d\n", used }'
}
held_at_most() {
  local held
  held=$(held_bytes)
  echo "storages hold $held bytes, at most $1 wanted" >>"$log"
  ((held <= $1))
}
rewrites() {
  local size=$((8 << 20)) writes=$((10 * 3 * (64 << 20) / 4096))
  head -c "$size" /dev/urandom >"$src/db8" && cp "$src/db8" "$slices/db8" \
    && perl scripts/rewrite.pl "$slices/db8" "$src/db8" "$writes" 16 \
    && cmp "$src/db8" "$slices/db8" \
    && eventually 60 slices_fsck \
    && eventually 90 held_at_most $((size * 5 / 2))
}
# fsck of the slices cluster, its problems to the log. While the cluster was full, an
# upload could get one copy (better than ENOSPC); the second is made once there is room.
slices_fsck() {
  (source "$work/cluster-slices/env" && "$bin/vgctl" fsck >>"$log" 2>&1)
}
check "random 4 KiB rewrites of 10x the cluster's capacity: no ENOSPC, content right, fsck clean, at most 2.5x held" rewrites

# The same rewrites, twice the cluster's capacity, while a second mount reads the file
# over and over: its reads never fail (a blob replaced under one loads the layout
# again), and the writer's compactions, each replaced a moment after its upload, leave
# no garbage that makes the writer's uploads fail (their storages' late reports once
# kept them as new uploads, and the reader's closes compacted the file too).
slices2=$work/mnt-slices-2
mkdir -p "$slices2"
# shellcheck disable=SC1091
pid=$(source "$work/cluster-slices/env" && "$bin/vg-fuse" "$slices2" --daemon --logfile "$work/cluster-slices/logs/vg-fuse-2.log")
echo "vg-fuse $pid $slices2" >>"$work/cluster-slices/pids"
rewrites_read_elsewhere() {
  local writes=$((2 * 3 * (64 << 20) / 4096)) writer reads=0
  perl scripts/rewrite.pl "$slices/db8" "$src/db8" "$writes" 16 &
  writer=$!
  while kill -0 "$writer" 2>/dev/null; do
    cat "$slices2/db8" >/dev/null || { kill "$writer"; return 1; }
    reads=$((reads + 1))
  done
  echo "$reads reads on the second mount" >>"$log"
  wait "$writer" && cmp "$src/db8" "$slices/db8" && cmp "$src/db8" "$slices2/db8"
}
check "the rewrites again, read over and over on a second mount: no failed read, no ENOSPC" rewrites_read_elsewhere

# sqlite: 10,000 transactions of one small insert each (each one fsyncs).
sqlite() {
  local db=$slices/test.db size
  rm -f "$slices/db8" && eventually 90 held_at_most 0 || return 1
  sqlite3 "$db" 'create table t (id integer primary key, v blob);' || return 1
  seq 1 10000 | sed 's/.*/insert into t (v) values (randomblob(64));/' | sqlite3 "$db" || return 1
  [[ $(sqlite3 "$db" 'pragma integrity_check;') == ok ]] \
    && [[ $(sqlite3 "$db" 'select count(*) from t;') == 10000 ]] \
    && size=$(stat -c %s "$db") && eventually 90 held_at_most $((3 * size))
}
check "sqlite: 10,000 one-insert transactions, integrity ok, at most 3x held after GC" sqlite

summary
