#!/usr/bin/env bash
# POSIX cases programs rely on, each with its expected result or errno, on real FUSE
# mounts of a real loopback cluster: special files, names over 255 bytes, extended
# attributes, POSIX ACLs, set-user-ID bits and capabilities taken by writes, files
# unlinked while open (on this mount, from another one, across a nameserver restart, and
# on a mount that dies), locks across mounts (flock,
# fcntl ranges, waits woken at release or ended by a signal, deadlocks, a restart, a
# dead or cut-off mount, sqlite on two mounts), instant copies. Prints PASS/FAIL per
# case and ends with "N passed, N failed".
#
#   scripts/test-posix.sh        (as root; uses the binaries in $VG_BIN, default target/debug;
#                                 KEEP=1 keeps the work directory and its logs; ONLY=TEXT
#                                 runs the cases whose name contains TEXT)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_binaries_as_root vg-nameserver vg-storage vg-fuse vgctl

work=$(mktemp -d /tmp/vg-posix-test.XXXXXX)
log=$work/test.log
home=$work/cluster
# A short session lease, so that the holds of a dead mount lapse quickly; a short GC
# grace and no block cache, so that a file freed too early would fail its reads.
lease=3
export VG_BIN=$bin VG_CERTS=$work/certs VG_HOME=$home
export VG_SESSION_LEASE=${lease}s VG_GC_GRACE=1s VG_CACHE_SIZE=0

cleanup() {
  [[ -f $home/pids ]] && scripts/down.sh >>"$log" 2>&1
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

need_packages attr acl rsync curl python3 sqlite3 \
  || { echo "test-posix.sh: cannot install attr, acl, rsync, curl, python3 and sqlite3 (apt-get failed)" >&2; exit 1; }

mnt=$work/mnt-a
# Metrics at the nameserver's, then the storages', then the mount's port from here.
metrics_port=$(random_port)
VG_METRICS_PORT=$metrics_port VG_NS_PORT=$(random_port) scripts/up.sh -n 3 -c 1GiB -b 1MiB -m "$mnt" >>"$log" 2>&1 \
  || { echo "test-posix.sh: the cluster did not start; log:"; tail -n 30 "$log"; exit 1; }
# shellcheck disable=SC1091
source "$home/env"
# mount_more NAME [FLAG...]: another mount of the cluster at $work/mnt-NAME, with vg-fuse's
# FLAGs; prints its PID.
mount_more() {
  local pid
  mkdir -p "$work/mnt-$1"
  pid=$("$bin/vg-fuse" "$work/mnt-$1" --daemon --logfile "$home/logs/vg-fuse-$1.log" "${@:2}") || return 1
  echo "vg-fuse $pid $work/mnt-$1" >>"$home/pids"
  echo "$pid"
}
# The second mount reads /dev/fuse, so that the cases across two mounts (most of those
# below) exercise both ways the kernel's requests come.
mount_more b --no-io-uring >/dev/null || { echo "test-posix.sh: the second mount failed" >&2; exit 1; }
mntb=$work/mnt-b

# The first takes them over io_uring when the fuse module offers it (enable_uring),
# unless VG_NO_IO_URING; a mount logs it once a ring serves a request.
uring_knob=/sys/module/fuse/parameters/enable_uring
if [[ -z ${VG_NO_IO_URING:-} && $(cat "$uring_knob" 2>/dev/null) == Y ]]; then
  transport="io_uring"
else
  transport="/dev/fuse"
fi
transport_used() {
  stat "$mnt" >/dev/null && ls "$mntb" >/dev/null || return 1
  if [[ $transport == io_uring ]]; then
    eventually 10 grep -q "over io_uring" "$home/logs/vg-fuse.log" || return 1
  else
    ! grep -q "over io_uring" "$home/logs/vg-fuse.log" || return 1
  fi
  ! grep -q "over io_uring" "$home/logs/vg-fuse-b.log"
}
check "the first mount serves FUSE requests through $transport, the second through /dev/fuse" transport_used

# FIFOs, sockets and devices are metadata only: the kernel that opens one makes the
# pipe or the connection, so a FIFO and a socket on the mount work between local
# processes; devices keep their numbers. tar and cp -a carry them.
specials() {
  local server
  mkfifo "$mnt/fifo" && mknod "$mnt/chr" c 1 3 && mknod "$mnt/blk" b 7 0 || return 1
  perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Local => shift, Listen => 1) or die "bind: $!\n";
    $c = $s->accept or die "accept: $!\n"; print $c "over a socket\n"' "$mnt/sock" &
  server=$!
  eventually 10 test -S "$mnt/sock" \
    && [[ $(perl -MIO::Socket::UNIX -e '$c = IO::Socket::UNIX->new(Peer => shift) or die "connect: $!\n";
         print scalar <$c>' "$mnt/sock") == "over a socket" ]] && wait "$server" || return 1
  { echo "through a fifo" >"$mnt/fifo" & } && [[ $(cat "$mnt/fifo") == "through a fifo" ]] \
    && [[ $(stat -c '%F|%t:%T' "$mnt/fifo" "$mnt/sock" "$mnt/chr" "$mnt/blk" | paste -sd' ') \
      == "fifo|0:0 socket|0:0 character special file|1:3 block special file|7:0" ]] \
    && ln "$mnt/fifo" "$mnt/fifo2" && [[ $(stat -c %h "$mnt/fifo") == 2 ]] \
    && mv "$mnt/chr" "$mnt/chr2" && chmod 600 "$mnt/chr2" && chown 5:6 "$mnt/chr2" \
    && [[ $(stat -c '%a %u %g %t:%T' "$mnt/chr2") == "600 5 6 1:3" ]] \
    && tar -C "$mnt" -cf "$work/specials.tar" fifo chr2 blk && mkdir "$mnt/untarred" \
    && tar -C "$mnt/untarred" -xf "$work/specials.tar" && cp -a "$mnt/blk" "$mnt/blk-copy" \
    && [[ $(stat -c '%F|%a|%t:%T' "$mnt/untarred/fifo" "$mnt/untarred/chr2" "$mnt/blk-copy" | paste -sd' ') \
      == "fifo|644|0:0 character special file|600|1:3 block special file|644|7:0" ]] \
    && rm -r "$mnt/fifo" "$mnt/fifo2" "$mnt/sock" "$mnt/chr2" "$mnt/blk" "$mnt/blk-copy" "$mnt/untarred" \
    && [[ -z $(find "$mnt" -maxdepth 1 \( -type p -o -type s -o -type c -o -type b \)) ]]
}
check "mkfifo, mknod c and b, a Unix socket: stat, use, ln, mv, chmod, chown, tar, cp -a, rm" specials

# A name over 255 bytes is ENAMETOOLONG for every call, also in a directory whose listing
# the mount has cached (where "absent" would be ENOENT).
long_names() {
  local ok long op err
  ok=$(printf 'a%.0s' {1..255}) long=$(printf 'b%.0s' {1..256})
  mkdir "$mnt/names" && touch "$mnt/names/$ok" && ls "$mnt/names" >/dev/null || return 1
  for op in stat touch mkdir rm "truncate -s 0" "mv $mnt/names/$ok"; do
    # shellcheck disable=SC2086
    err=$($op "$mnt/names/$long" 2>&1) && { echo "$op of a 256-byte name succeeded"; return 1; }
    [[ $err == *"File name too long"* ]] || { echo "$op: $err"; return 1; }
  done
  [[ -f $mnt/names/$ok ]] && rm -r "$mnt/names"
}
check "a name over 255 bytes: ENAMETOOLONG for stat, create, mkdir, rm, truncate, mv" long_names

# Extended attributes: user., trusted. and security. kept with the file, carried by cp -a
# and tar --xattrs; system. other than ACLs refused; a missing one is ENODATA.
xattrs() {
  echo x >"$mnt/xf" && mkdir "$mnt/xd" \
    && setfattr -n user.color -v blue "$mnt/xf" && setfattr -n trusted.level -v 0x0102 "$mnt/xd" \
    && setfattr -n user.empty "$mnt/xf" \
    && [[ $(getfattr --only-values -n user.color "$mnt/xf") == blue ]] \
    && [[ $(getfattr -d -m - -e hex "$mnt/xd" | grep level) == "trusted.level=0x0102" ]] \
    && ! setfattr -n system.other -v 1 "$mnt/xf" 2>/dev/null \
    && ! getfattr -n user.none "$mnt/xf" 2>"$work/xattr.err" && grep -q "No such attribute" "$work/xattr.err" \
    && cp -a "$mnt/xf" "$mnt/xf-copy" && [[ $(getfattr --only-values -n user.color "$mnt/xf-copy") == blue ]] \
    && tar --xattrs --xattrs-include='*' -C "$mnt" -cf "$work/xattrs.tar" xf xd && mkdir "$mnt/xu" \
    && tar --xattrs --xattrs-include='*' -C "$mnt/xu" -xf "$work/xattrs.tar" \
    && [[ $(getfattr -d -m - "$mnt/xu/xf" "$mnt/xu/xd" | grep -c =) == 3 ]] \
    && setfattr -x user.color "$mnt/xf" && [[ $(getfattr -d "$mnt/xf" | grep -c =) == 1 ]] \
    && rm -r "$mnt/xf" "$mnt/xf-copy" "$mnt/xd" "$mnt/xu"
}
check "setfattr/getfattr (user., trusted.), cp -a and tar --xattrs keep them, system. refused" xattrs

# A listing says which entries have extended attributes and a make answers whether the
# new inode has any, so that walks (ls -l asks each file for its ACL and SELinux label,
# getfattr for its list) ask the nameserver only about those that have some; what
# another mount set is seen.
xattrs_asked() { "$bin/vgctl" status | awk '$1 == "xattrs" {n = $2} END {print n + 0}'; }
walks_ask_few() {
  local before after
  mkdir "$mntb/walk" && for i in $(seq 40); do echo "$i" >"$mntb/walk/f$i" || return 1; done
  # This mount sees another's new names once its cached listings expire (the TTL).
  setfattr -n user.tag -v one "$mntb/walk/f7" && eventually 10 test -e "$mnt/walk/f40" || return 1
  before=$(xattrs_asked)
  ls -lR "$mnt/walk" >/dev/null && getfattr -R -d "$mnt/walk" >"$work/walk.xattrs" && after=$(xattrs_asked) \
    || return 1
  echo "xattrs requests for a walk of 41 entries made on another mount, one with an attribute: $((after - before))"
  grep -q 'user.tag="one"' "$work/walk.xattrs" && (( after - before <= 10 )) || return 1
  tar -C "$mnt" -cf "$work/walk.tar" walk && mkdir "$mnt/untar" && before=$(xattrs_asked) \
    && tar -C "$mnt/untar" -xf "$work/walk.tar" && after=$(xattrs_asked) || return 1
  echo "xattrs requests for untar of 41 entries: $((after - before))"
  (( after - before <= 10 )) && rm -r "$mnt/walk" "$mnt/untar"
}
check "walks and untar ask only files with extended attributes for them; another mount's are seen" walks_ask_few

# POSIX ACLs. acl_steps DIR runs the same setfacl, chmod, umask and copy steps in DIR and
# prints the ACLs and modes that result: on the mount it must print what it prints on
# this machine's local disk. Then the kernel must enforce them on the mount, for a user
# that is not root, also through another mount.
# acls_of PATH...: the ACLs of PATHs and everything under them, in name order (getfacl
# -R follows each directory's order, which differs between file systems).
acls_of() { find "$@" | sort | xargs getfacl -p; }
acl_steps() {
  cd "$1" && echo secret >file && chmod 600 file && setfacl -m u:4242:r,g:4243:rw file \
    && stat -c '%n %A' file && chmod 640 file && getfacl -p file \
    && mkdir d && setfacl -d -m u:4242:rwx,m:rwx d && (umask 077 && touch d/f && mkdir d/sub) \
    && (umask 077 && touch plain) && ln -s file link && cp -a d d-copy && acls_of d d-copy \
    && stat -c '%n %A' d/f d/sub plain d-copy/f && setfacl -b file && stat -c '%n %A' file
}
acls() {
  local as="setpriv --reuid=4242 --regid=4242 --clear-groups" local_out
  mkdir "$work/acl-local" "$mnt/acl" || return 1
  local_out=$(acl_steps "$work/acl-local") || { echo "setfacl fails on the local disk"; return 1; }
  diff <(echo "$local_out") <(acl_steps "$mnt/acl") || return 1
  rsync -aAX "$work/acl-local/" "$mnt/acl-rsync/" \
    && diff <(cd "$work/acl-local" && acls_of .) <(cd "$mnt/acl-rsync" && acls_of .) || return 1
  chmod 755 "$work" && echo secret >"$mnt/acl/locked" && chmod 600 "$mnt/acl/locked" || return 1
  if $as cat "$mnt/acl/locked" 2>/dev/null; then echo "read without an ACL entry"; return 1; fi
  setfacl -m u:4242:r "$mnt/acl/locked" && [[ $($as cat "$mnt/acl/locked") == secret ]] || return 1
  if $as sh -c "echo x >>'$mnt/acl/locked'" 2>/dev/null; then echo "wrote with r only"; return 1; fi
  # Another mount sees the ACL once its attributes refresh (1 s), and a chmod on this one
  # that masks the entry off.
  eventually 10 $as cat "$mntb/acl/locked" >/dev/null && chmod 600 "$mnt/acl/locked" \
    && eventually 10 sh -c "! $as cat '$mntb/acl/locked' 2>/dev/null" \
    && [[ $(getfacl -p "$mntb/acl/locked" | grep 4242) == "user:4242:r--	#effective:---" ]] || return 1
  # Under the default ACL user 4242 may write (rwx, mask rw- from the file's 0666 create).
  $as sh -c "echo y >'$mnt/acl/d/f'" && [[ $(cat "$mnt/acl/d/f") == y ]] \
    && ! setfattr -n system.posix_acl_access -v junk "$mnt/acl/plain" 2>/dev/null \
    && rm -r "$mnt/acl" "$mnt/acl-rsync" "$work/acl-local"
}
check "POSIX ACLs: setfacl/getfacl, chmod, default ACLs and umask, cp -a, rsync -AX as on ext4; enforced for a user, also on another mount" acls

# Set-user-ID bits and capabilities, which the mount takes away itself
# (FUSE_HANDLE_KILLPRIV_V2): privs_steps DIR has a user write, append, truncate, allocate
# and copy into (Debian's python3: a pyenv shim is not the user's to run), and a root
# write and chown files with set-user-ID and set-group-ID bits or a capability, and prints
# the modes and capabilities that result: on the mount what it prints on the local disk.
privs_steps() {
  local as="setpriv --reuid=4242 --regid=4242 --clear-groups"
  cd "$1" && for f in w a t r c k kr kept f y; do echo data >$f; done \
    && chmod 6777 w a t r c k kr f y && chmod 4757 w \
    && for f in k kr kept f; do setfattr -n security.capability -v "$caps" $f || return 1; done \
    && $as sh -c 'echo more >w && echo more >>a && truncate -s 1 t && echo more >>k' \
    && $as fallocate -l 8192 f \
    && $as /usr/bin/python3 -c 'import os; os.copy_file_range(os.open("a", os.O_RDONLY), os.open("y", os.O_WRONLY), 4)' \
    && echo more >>r && echo more >>kr && chown 4242 c \
    && stat -c '%n %a %s' w a t r c k kr f y && getfattr -m - -e hex -d k kr r kept f
}
privs() {
  # A capability (CAP_NET_BIND_SERVICE permitted, effective), as setcap writes it; the
  # steps see it.
  local caps=0x0100000200040000000000000000000000000000 local_out mount_out
  chmod 755 "$work" && mkdir "$work/privs-local" "$mnt/privs" && chmod 777 "$work/privs-local" "$mnt/privs" \
    || return 1
  local_out=$(privs_steps "$work/privs-local") || { echo "the steps fail on the local disk"; return 1; }
  mount_out=$(privs_steps "$mnt/privs") || { echo "the steps fail on the mount"; return 1; }
  diff <(echo "$local_out") <(echo "$mount_out") && rm -r "$mnt/privs" "$work/privs-local"
}
check "set-user-ID bits and capabilities: taken by a user's write, truncate, allocation and copy into the file, a root's chown, kept on a root's write, as on ext4" privs

# Open-but-unlinked files. scripts/hold.py writes a file, holds it open and, on "go",
# checks that the descriptor still reads, writes, truncates and fstats (nlink 0).
# Not grep -q: it would stop reading at the match, and vgctl, still printing, would fail
# with EPIPE (and the pipeline with it).
status_says() { "$bin/vgctl" status 2>/dev/null | grep "^open files: *$1" >/dev/null; }
inodes() { stat -f -c %c "$mnt"; }
# settled: no file open anywhere, as the nameserver counts them (a close's release
# reaches the mount after close(2) returns, and a file unlinked before it was released
# would be freed in the middle of the next case's count).
settled() { eventually 10 status_says "0 in 0 sessions, 0"; }
# hold FILE [--unlink]: starts hold.py on FILE and waits until it is ready (ending the
# holder a failed case left, so that one failure does not fail the cases after it).
hold() {
  [[ -n ${holder:-} ]] && kill "$holder" 2>/dev/null && wait "$holder" 2>/dev/null
  settled || return 1
  rm -f "$work/ready" "$work/go"
  scripts/hold.py "$1" "$work" "${@:2}" &
  holder=$!
  eventually 60 test -e "$work/ready"
}
# release: lets the holder check and close; fails if a check failed.
release() { touch "$work/go" && wait "$holder" && holder=; }
reads() { [[ $(cat "$1") == "$2" ]]; }

unlinked_here() {
  local before
  settled && before=$(inodes) || return 1
  hold "$mnt/doomed" --unlink || return 1
  [[ ! -e $mnt/doomed && $(inodes) == $((before + 1)) ]] && eventually 10 status_says "1 in 1 sessions, 1 of them unlinked" \
    && release && eventually 10 status_says "0 in 0 sessions, 0" && [[ $(inodes) == "$before" ]]
}
check "open, unlink, then fstat/read/write/ftruncate through the descriptor; freed at close" unlinked_here

# Another mount sees a new name once its cached listing of the directory is older than
# --attr-ttl (1 s).
seen_on_b() { eventually 10 test -e "$mntb/$1"; }

unlinked_elsewhere() {
  hold "$mnt/shared" && eventually 10 status_says "1 in 1 sessions" && seen_on_b shared \
    && rm "$mntb/shared" && eventually 10 status_says "1 in 1 sessions, 1 of them unlinked" \
    && release && eventually 10 status_says "0 in 0 sessions, 0"
}
check "a file open on one mount, removed on another: still whole for its holder" unlinked_elsewhere

renamed_over() {
  hold "$mnt/target" && eventually 10 status_says "1 in 1 sessions" && seen_on_b target \
    && echo replacement >"$mntb/new" && mv "$mntb/new" "$mntb/target" \
    && eventually 10 status_says "1 in 1 sessions, 1 of them unlinked" \
    && release && eventually 10 reads "$mnt/target" replacement \
    && eventually 10 status_says "0 in 0 sessions, 0" && rm "$mnt/target"
}
check "mv over a file open on another mount: the holder keeps the old file" renamed_over

restarted() {
  local before
  settled && before=$(inodes) || return 1
  hold "$mnt/kept" --unlink && eventually 10 status_says "1 in 1 sessions, 1 of them unlinked" \
    && restart_server "$home" nameserver || { echo "restart failed"; return 1; }
  # The mount reports again within a third of the lease; until a whole lease has passed
  # since the start, nothing is freed. Past it, the file must still be there.
  eventually 30 status_says "1 in 1 sessions, 1 of them unlinked" && sleep $((lease + 1)) \
    && "$bin/vgctl" status && status_says "1 in 1 sessions, 1 of them unlinked" \
    && release && eventually 10 status_says "0 in 0 sessions, 0" && [[ $(inodes) == "$before" ]]
}
check "a file open and unlinked across a nameserver restart: kept, freed at close" restarted

mount_died() {
  local before pid
  settled && before=$(inodes) || return 1
  pid=$(mount_more c) && hold "$work/mnt-c/lost" --unlink \
    && eventually 10 status_says "1 in 1 sessions, 1 of them unlinked" || return 1
  kill -9 "$pid" && kill "$holder"
  wait "$holder"
  umount -l "$work/mnt-c"
  eventually $((lease + 10)) status_says "0 in 0 sessions, 0" && [[ $(inodes) == "$before" ]]
}
check "a mount killed while holding an unlinked file: freed once its lease lapses" mount_died

# Locks across mounts: held by the nameserver for each mount's session.
locks_say() { "$bin/vgctl" status 2>/dev/null | grep "^locks: *$1" >/dev/null; }
# marks NAME: an empty directory for one case's markers.
marks() { rm -rf "$work/$1" && mkdir "$work/$1" && echo "$work/$1"; }

flock_across() {
  local m holder
  m=$(marks flock) || return 1
  flock "$mnt/flocked" -c "touch $m/locked; until [ -e $m/unlock ]; do sleep 0.05; done" &
  holder=$!
  eventually 30 test -e "$m/locked" && ! flock -n "$mntb/flocked" true \
    && touch "$m/unlock" && wait "$holder" && eventually 10 flock -n "$mntb/flocked" true \
    && rm "$mnt/flocked"
}
check "flock on one mount: flock -n on another refused until it is released" flock_across

ranges() {
  local m holder waiter
  m=$(marks ranges) || return 1
  scripts/locks.py hold "$mnt/ranged" 0 100 "$m" &
  holder=$!
  eventually 30 test -e "$m/locked" && scripts/locks.py try "$mntb/ranged" 100 100 || return 1
  scripts/locks.py try "$mntb/ranged" 50 100
  [[ $? == 3 ]] || { echo "an overlapping lock was granted"; return 1; }
  scripts/locks.py wait "$mntb/ranged" 0 100 "$m" &
  waiter=$!
  eventually 30 locks_say "1 held, 1 waiting" && touch "$m/unlock" && wait "$holder" && wait "$waiter" \
    || return 1
  # Pushed, not polled: well before the nameserver's 5 s answer to a waiter would come.
  python3 -c 'import sys; d = float(open(sys.argv[2]).read()) - float(open(sys.argv[1]).read())
print(f"woken {d * 1000:.0f} ms after the release"); sys.exit(d > 2.5)' "$m/unlocked_at" "$m/acquired_at" \
    && eventually 10 locks_say "0 held, 0 waiting" && rm "$mnt/ranged"
}
check "fcntl byte ranges across mounts: disjoint granted, overlapping refused, F_SETLKW woken at release" ranges

interrupted() {
  local m holder flocker code
  m=$(marks intr) || return 1
  scripts/locks.py hold "$mnt/intr" 0 0 "$m" &
  holder=$!
  flock "$mnt/intr-flock" -c "touch $m/flocked; until [ -e $m/unlock ]; do sleep 0.05; done" &
  flocker=$!
  eventually 30 test -e "$m/locked" -a -e "$m/flocked" || return 1
  # Both wait for a SIGALRM due in 1 s; a wait the signal cannot end would run until
  # the holders let go, so timeout(1) ends it (exit 124).
  timeout 30 scripts/locks.py interrupt "$mntb/intr" >"$m/out"
  [[ $(cat "$m/out") == interrupted ]] || { echo "fcntl wait: $(cat "$m/out")"; return 1; }
  timeout 30 flock -w 1 "$mntb/intr-flock" true
  code=$?
  [[ $code == 1 ]] || { echo "flock -w 1 ended with $code, not 1 (timed out)"; return 1; }
  # The given-up waits leave nothing behind: once released, the locks are free.
  eventually 10 locks_say "2 held, 0 waiting" && touch "$m/unlock" && wait "$holder" \
    && wait "$flocker" && scripts/locks.py try "$mntb/intr" 0 0 && flock -n "$mntb/intr-flock" true \
    && rm "$mnt/intr" "$mnt/intr-flock"
}
check "F_SETLKW and flock waits end with EINTR on a signal (flock -w, an alarm)" interrupted

deadlock() {
  local m a b
  m=$(marks cycle) || return 1
  scripts/locks.py cycle "$mnt/cycle" "$m" a 0 1 >"$m/a.out" &
  a=$!
  scripts/locks.py cycle "$mntb/cycle" "$m" b 1 0 >"$m/b.out" &
  b=$!
  eventually 30 test -e "$m/a-ready" -a -e "$m/b-ready" && touch "$m/go" && wait "$a" && wait "$b" \
    && [[ $(sort "$m/a.out" "$m/b.out" | paste -sd' ') == "deadlock got" ]] && rm "$mnt/cycle"
}
check "two mounts each waiting for the other's lock: one gets EDEADLK, the other the lock" deadlock

locks_of_dead_mount() {
  local m pid holder
  m=$(marks dead) && pid=$(mount_more d) || return 1
  scripts/locks.py hold "$work/mnt-d/held" 0 0 "$m" &
  holder=$!
  eventually 30 test -e "$m/locked" || return 1
  scripts/locks.py try "$mntb/held" 0 10
  [[ $? == 3 ]] || { echo "the lock was not held"; return 1; }
  kill -9 "$pid" && kill "$holder"
  wait "$holder"
  umount -l "$work/mnt-d"
  eventually $((lease + 10)) scripts/locks.py try "$mntb/held" 0 10 && rm "$mntb/held"
}
check "a mount killed while holding a lock: the lock goes once its lease lapses" locks_of_dead_mount

locks_across_restart() {
  local m holder
  m=$(marks restart) || return 1
  scripts/locks.py hold "$mnt/kept-lock" 0 0 "$m" &
  holder=$!
  eventually 30 test -e "$m/locked" && restart_server "$home" nameserver || return 1
  # The mount reports its lock within a third of the lease; nobody may take one before
  # a whole lease has passed since the start. Past it, the lock must still be A's.
  eventually 30 locks_say "1 held" && sleep $((lease + 1)) || return 1
  scripts/locks.py try "$mntb/kept-lock" 0 10
  [[ $? == 3 ]] || { echo "the lock was not taken back after the restart"; return 1; }
  touch "$m/unlock" && wait "$holder" && eventually 10 scripts/locks.py try "$mntb/kept-lock" 0 10 \
    && rm "$mnt/kept-lock"
}
check "a lock held across a nameserver restart: taken back by its mount, nobody else's meanwhile" locks_across_restart

# A mount cut off from the nameserver for longer than its lease (its daemon stopped)
# loses its locks to others, and its process learns it: EIO on the next call.
locks_past_lease() {
  local m pid holder
  m=$(marks lapse) && pid=$(mount_more e) || return 1
  scripts/locks.py lapse "$work/mnt-e/lapsed" "$m" >"$m/out" &
  holder=$!
  eventually 30 test -e "$m/locked" && kill -STOP "$pid" || { echo "the lock was not taken"; return 1; }
  eventually $((lease + 10)) scripts/locks.py try "$mntb/lapsed" 0 10
  local taken=$?
  kill -CONT "$pid"
  touch "$m/go" && wait "$holder" || { echo "the holder failed"; return 1; }
  ((taken == 0)) || { echo "the other mount did not get the lock within the lease + 10 s"; return 1; }
  [[ $(cat "$m/out") == eio ]] || { echo "the stopped mount's process got '$(cat "$m/out")', not EIO"; return 1; }
  umount "$work/mnt-e" && rm "$mntb/lapsed"
}
check "a mount stopped past its lease: its lock goes to another, its process gets EIO" locks_past_lease

sqlite_across() {
  local a b
  sqlite3 "$mnt/shared.db" "create table t (id integer primary key, who text, n integer);" || return 1
  scripts/locks.py sqlite "$mnt/shared.db" a 200 &
  a=$!
  scripts/locks.py sqlite "$mntb/shared.db" b 200 &
  b=$!
  wait "$a" && wait "$b" && [[ $(sqlite3 "$mntb/shared.db" "pragma integrity_check;") == ok ]] \
    && [[ $(sqlite3 "$mnt/shared.db" "select who, count(*) from t group by who;" | paste -sd' ') == "a|200 b|200" ]]
}
check "sqlite on two mounts inserting at once (200 transactions each): no row lost, integrity ok" sqlite_across

# The mount helper: vg-fuse installed as /sbin/mount.vg serves mount -t vg and fstab
# lines of type vg (here from a test fstab, mount -T), -o options become its flags, ro
# mounts read-only, a bad option or address fails with a message and a non-zero exit.
helper_mounts() {
  local c=$VG_CERTS opts fstab=$work/fstab code
  opts="ca=$c/rootCA.crt,cert=$c/client/client.crt,key=$c/client/client.key"
  if [[ -e /sbin/mount.vg || -L /sbin/mount.vg ]]; then
    mv /sbin/mount.vg "$work/mount.vg.saved" || return 1
  fi
  ln -s "$bin/vg-fuse" /sbin/mount.vg && mkdir -p "$work/mnt-h1" "$work/mnt-h2" "$work/mnt-h3" || return 1
  # A plain umount just after a mount can find it busy for a moment (CI once did): the
  # mount's thread that raises its read-ahead may still be inside its stat of it.
  printf '127.0.0.1:%s %s vg %s,_netdev,nofail,x-systemd.automount,logfile=%s 0 0\n' \
    "$VG_NS_PORT" "$work/mnt-h1" "$opts" "$home/logs/h1.log" >"$fstab"
  printf '127.0.0.1:%s %s vg %s,ro,attr_ttl=2s 0 0\n' "$VG_NS_PORT" "$work/mnt-h2" "$opts" >>"$fstab"
  mount -T "$fstab" -a && echo "through the helper" >"$work/mnt-h1/helped" \
    && eventually 10 test -e "$mnt/helped" && [[ $(cat "$mnt/helped") == "through the helper" ]] \
    && eventually 10 test -e "$work/mnt-h2/helped" \
    && [[ $(cat "$work/mnt-h2/helped") == "through the helper" ]] \
    && ! touch "$work/mnt-h2/refused" 2>"$work/ro.err" && grep "Read-only file system" "$work/ro.err" \
    && mount -t vg "127.0.0.1:$VG_NS_PORT" "$work/mnt-h3" -o "$opts" && eventually 10 test -e "$work/mnt-h3/helped" \
    && eventually 5 umount "$work/mnt-h1" && umount -l "$work/mnt-h2" \
    && eventually 5 umount "$work/mnt-h3" || code=1
  if mount -t vg "127.0.0.1:$VG_NS_PORT" "$work/mnt-h3" -o "$opts,no_such_option" 2>"$work/bad.err"; then
    echo "a bad option mounted"; code=1
  fi
  grep -- "--no-such-option" "$work/bad.err" || code=1
  if mount -t vg "127.0.0.1:port" "$work/mnt-h3" 2>"$work/bad.err"; then code=1; fi
  grep "the port must be a number" "$work/bad.err" || code=1
  # Whatever failed above, no helper mount outlives the case.
  for m in h1 h2 h3; do
    if mountpoint -q "$work/mnt-$m"; then umount -l "$work/mnt-$m"; fi
  done
  rm -f /sbin/mount.vg "$mnt/helped"
  [[ -e $work/mount.vg.saved || -L $work/mount.vg.saved ]] && mv "$work/mount.vg.saved" /sbin/mount.vg
  return "${code:-0}"
}
check "mount.vg: fstab lines of type vg (mount -T), mount -t vg, ro, umount -l; bad options refused" helper_mounts

# --log-format json: every line a JSON object (for log collectors), with the fields.
json_logs() {
  local pid log=$home/logs/json.log
  mkdir -p "$work/mnt-j" && pid=$("$bin/vg-fuse" "$work/mnt-j" --daemon --log-format json --logfile "$log") \
    && ls "$work/mnt-j" >/dev/null && umount "$work/mnt-j" && eventually 10 exited "$pid" || return 1
  python3 -c 'import json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
mounted = [l for l in lines if l.get("message") == "mounted"]
sys.exit(not (mounted and mounted[0].get("mountpoint") and mounted[0].get("level") == "INFO"))' "$log"
}
check "--log-format json: the mount logs one JSON object per line, fields included" json_logs

# Installed as a service: scripts/install.sh (staged under DESTDIR) puts the binaries,
# mount.vg and the systemd units in place; systemd-analyze verify finds nothing to say of
# the units (where systemd is present); and a server tells systemd (Type=notify) that
# it is ready, here over a NOTIFY_SOCKET this test listens on.
services() {
  local root=$work/root units=$work/units out
  VG_BIN=$bin DESTDIR=$root scripts/install.sh >/dev/null \
    && [[ -x $root/usr/local/bin/vg-nameserver && $(readlink "$root/sbin/mount.vg") == /usr/local/bin/vg-fuse ]] \
    || return 1
  if command -v systemd-analyze >/dev/null; then
    mkdir -p "$units"
    for unit in "$root"/etc/systemd/system/*.service; do
      sed "s,/usr/local/bin/,$root/usr/local/bin/,; s,EnvironmentFile=,EnvironmentFile=-," "$unit" \
        >"$units/$(basename "$unit")"
    done
    cp "$units/vg-storage@.service" "$units/vg-storage@alice.service"
    out=$(cd "$units" && systemd-analyze verify vg-nameserver.service vg-storage@alice.service 2>&1)
    [[ -z $out ]] || { echo "systemd-analyze verify: $out"; return 1; }
  else
    echo "systemd-analyze is not here: the units were not verified"
  fi
  python3 - "$work/notify.sock" "$bin/vg-nameserver" "$(random_port)" "$work/meta-notify" "$VG_CERTS" <<'PY'
import os, socket, subprocess, sys
path, exe, port, meta, certs = sys.argv[1:]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
listener.settimeout(30)
tls = ["--ca-cert", f"{certs}/rootCA.crt", "--certfile", f"{certs}/nameserver/nameserver.crt",
       "--keyfile", f"{certs}/nameserver/nameserver.key"]
server = subprocess.Popen([exe, "--port", port, "--meta-dir", meta] + tls,
                          env=dict(os.environ, NOTIFY_SOCKET=path), stderr=subprocess.DEVNULL)
try:
    message = listener.recv(4096).decode()
finally:
    server.terminate()
    server.wait()
sys.exit(0 if "READY=1" in message else f"the nameserver sent {message!r}")
PY
}
check "install.sh stages binaries, mount.vg and systemd units; systemd-analyze verify clean; READY=1 sent" services

# Prometheus metrics (--metrics) of the nameserver, a storage and the mount, scraped with
# curl around a workload: the named series are there and move with it.
scrape() { curl -sf "http://127.0.0.1:$1/metrics"; }
value() { awk -v s="$2" '$1 == s {print $2}' <<<"$1"; }
metrics() {
  local ns0 mount0 alice0 ns1 mount1 alice1
  ns0=$(scrape "$metrics_port") && alice0=$(scrape $((metrics_port + 1))) \
    && mount0=$(scrape $((metrics_port + 4))) || { echo "an endpoint did not answer"; return 1; }
  head -c 3M /dev/urandom >"$mnt/measured" && cat "$mnt/measured" >/dev/null && rm "$mnt/measured" || return 1
  ns1=$(scrape "$metrics_port") && alice1=$(scrape $((metrics_port + 1))) && mount1=$(scrape $((metrics_port + 4))) \
    || return 1
  local created='vg_requests_total{op="create",outcome="ok"}'
  echo "creates $(value "$ns0" "$created") -> $(value "$ns1" "$created"); written bytes" \
    "$(value "$mount0" vg_mount_written_bytes_total) -> $(value "$mount1" vg_mount_written_bytes_total)"
  [[ $(( $(value "$mount1" vg_mount_written_bytes_total) - $(value "$mount0" vg_mount_written_bytes_total) )) == $((3 << 20)) ]] \
    && (( $(value "$mount1" vg_mount_read_bytes_total) >= 3 << 20 )) \
    && (( $(value "$ns1" "$created") >= 1 )) && grep -q '^vg_request_seconds_bucket{.*op="create"' <<<"$ns1" \
    && grep -q '^vg_inodes ' <<<"$ns1" && grep -q '^vg_open_files ' <<<"$ns1" && grep -q '^vg_locks ' <<<"$ns1" \
    && (( $(value "$ns1" vg_wal_sync_seconds_count) > $(value "$ns0" vg_wal_sync_seconds_count) )) \
    && (( $(value "$ns1" 'vg_storage_capacity_bytes{storage="alice"}') == 1 << 30 )) \
    && [[ $(value "$ns1" vg_blocks_under_replicated) && $(value "$ns1" vg_replications) ]] \
    && (( $(value "$ns1" vg_group_leader) == 1 && $(value "$ns1" vg_group_voters) == 1 )) \
    && (( $(value "$ns1" vg_group_applied) > $(value "$ns0" vg_group_applied) )) \
    && (( $(value "$alice1" vg_storage_capacity_bytes) == 1 << 30 )) && grep -q '^vg_storage_used_bytes ' <<<"$alice1" \
    && grep -q '^vg_mount_cache_misses ' <<<"$mount1" && grep -q '^vg_mount_dirty_bytes ' <<<"$mount1"
}
check "--metrics: the nameserver, a storage and the mount serve Prometheus series that follow a workload" metrics

# Instant copies: cp uses copy_file_range, whose copy names the source's blobs, so a
# 1 GiB copy moves no bytes and takes no space. cp --reflink=always needs FICLONE, which
# the kernel does not pass to FUSE file systems: EOPNOTSUPP, as README says. Last: the
# files it removes right after closing them stay pinned for a moment (the mount reports
# its closes 100 ms late), which the inode counts of the cases above would see.
used() { df -B1 --output=used "$mnt" | tail -n 1; }
instant_copy() {
  local before start
  if ! head -c 1G /dev/urandom >"$mnt/big"; then
    # Seen twice in CI (EIO), never here: what the mount and the nameserver said.
    "$bin/vgctl" status | head -n 4
    grep -h "WARN\|ERROR" "$home/logs/vg-fuse.log" "$home/logs/nameserver.log" | tail -n 10
    return 1
  fi
  before=$(used) && start=$(date +%s%N) && cp "$mnt/big" "$mnt/big-copy" || return 1
  echo "cp of 1 GiB: $(( ($(date +%s%N) - start) / 1000000 )) ms, $(( $(used) - before )) bytes more used"
  (( $(used) - before < 16 << 20 )) && [[ $(stat -c %s "$mnt/big-copy") == $((1 << 30)) ]] \
    && cmp <(head -c 100M "$mnt/big") <(head -c 100M "$mnt/big-copy") \
    && cmp <(tail -c 100M "$mnt/big") <(tail -c 100M "$mnt/big-copy") || return 1
  if cp --reflink=always "$mnt/big" "$mnt/big-clone" 2>"$work/reflink.err"; then
    echo "cp --reflink=always succeeded"; return 1
  fi
  grep "Operation not supported" "$work/reflink.err" && rm -f "$mnt/big" "$mnt/big-copy" "$mnt/big-clone"
}
check "cp of 1 GiB within the mount takes no space (copy_file_range); cp --reflink=always: EOPNOTSUPP" instant_copy

summary
