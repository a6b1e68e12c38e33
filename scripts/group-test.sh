#!/usr/bin/env bash
# The nameserver group through a real mount: three nameservers (scripts/up.sh -N 3) and
# three storages; four writers make files (written under a temporary name, renamed into
# place) and directories through the mount while the leader is SIGKILLed, and started
# again, at 20 seeded points. Every file a writer was told is there has its bytes, no
# writer saw an error (a failover is a stall), vgctl fsck is clean. Prints the failover
# time (the longest a probe's create took around each kill), median and worst.
#
#   scripts/group-test.sh    (as root; binaries from $VG_BIN, default target/debug;
#                             SEED=N picks other kill points, KILLS=N how many)
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/vg-group-test.XXXXXX)
log=$work/test.log
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_binaries_as_root vg-nameserver vg-storage vg-fuse vgctl
export VG_HOME=$work/home VG_CERTS=$work/certs VG_BIN=$bin VG_NS_PORT
VG_NS_PORT=$(random_port)
mnt=$work/mnt
kills=${KILLS:-20}
RANDOM=${SEED:-20}

workers=()
cleanup() {
  touch "$work/stop"
  wait "${workers[@]}" 2>/dev/null
  scripts/down.sh >/dev/null 2>&1
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

if ! scripts/up.sh -N 3 -n 3 -c 2GiB -b 1MiB -m "$mnt" >>"$log" 2>&1; then
  echo "FAIL start a group of three nameservers"
  tail -n 15 "$log" | sed 's/^/    /'
  exit 1
fi
# shellcheck source=/dev/null
source "$VG_HOME/env"
vgctl() { "$bin/vgctl" --timeout 10s "$@"; }
leader() { vgctl nameserver list 2>/dev/null | awk '$4 == "leader" {print $1}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

group_listed() {
  local listed
  listed=$(vgctl nameserver list) || return 1
  echo "$listed"
  [[ $(grep -c ' leader ' <<<"$listed") == 1 && $(grep -c ' follower ' <<<"$listed") == 2 ]]
}
check "vgctl nameserver list: one leader, two followers" group_listed

# Writer W: until told to stop, a file written locally, copied under a temporary name,
# renamed into place, and a directory made and removed; each file it was told is there
# goes to acked.W with its checksum, each failure to errors.
writer() {
  local w=$1 i=0 f sum
  mkdir -p "$mnt/w$w" "$work/local$w" || { echo "writer $w: mkdir" >>"$work/errors"; return; }
  while [[ ! -e $work/stop ]]; do
    f=w$w/f$i
    head -c $(((i % 7) * 3000 + 100)) /dev/urandom >"$work/local$w/data"
    sum=$(md5sum <"$work/local$w/data")
    if cp "$work/local$w/data" "$mnt/$f.tmp" 2>>"$work/errors" && mv "$mnt/$f.tmp" "$mnt/$f" 2>>"$work/errors" \
      && mkdir "$mnt/w$w/d$i" 2>>"$work/errors" && rmdir "$mnt/w$w/d$i" 2>>"$work/errors"; then
      echo "$f $sum" >>"$work/acked.$w"
    else
      echo "writer $w: round $i failed at $(date -u +%T.%N)" >>"$work/errors"
    fi
    i=$((i + 1))
  done
}
# The probe: one create at a time, each with its start and duration (ms).
probe() {
  local i=0 start
  while [[ ! -e $work/stop ]]; do
    start=$(now_ms)
    : >"$mnt/probe$((i % 50))" || echo "probe: create failed" >>"$work/errors"
    echo "$start $(($(now_ms) - start))" >>"$work/probe"
    i=$((i + 1))
  done
}
for w in 1 2 3 4; do
  writer "$w" &
  workers+=($!)
done
probe &
workers+=($!)

# SIGKILL the leader at seeded points; once another leads, start it again (its command
# line kept from /proc) and wait until it has caught up.
has_leader() { [[ -n $("$bin/vgctl" --timeout 2s nameserver list 2>/dev/null | awk '$4 == "leader"') ]]; }
# Every member's log position is known to the leader (a member down shows "-").
caught_up() {
  local listed
  listed=$("$bin/vgctl" --timeout 2s nameserver list 2>/dev/null) && ! grep -q ' -$' <<<"$listed"
}
killed_at=()
kill_leaders() {
  local n id pid cmd
  for ((n = 1; n <= kills; n++)); do
    sleep "$((RANDOM % 1000 / 1000 + 1)).$((RANDOM % 10))"
    id=$(leader) && [[ -n $id ]] || { echo "kill $n: no leader"; return 1; }
    pid=$(awk -v n="ns$id" '$1 == n {print $2}' "$VG_HOME/pids")
    mapfile -d '' -t cmd <"/proc/$pid/cmdline" || return 1
    killed_at+=("$(now_ms)")
    kill -KILL "$pid"
    eventually 15 has_leader || { echo "kill $n: no new leader within 15 s"; return 1; }
    "${cmd[@]}" >>"$VG_HOME/logs/ns$id.out" 2>&1 &
    sed -i "s/^ns$id $pid\b/ns$id $!/" "$VG_HOME/pids"
    eventually 15 caught_up || { echo "kill $n: ns$id did not catch up"; return 1; }
    echo "kill $n: ns$id"
  done
}
check "SIGKILL the leader at $kills seeded points while four writers and a probe run" kill_leaders
sleep 1
touch "$work/stop"
wait "${workers[@]}"

no_errors() {
  [[ ! -s $work/errors ]] || { cat "$work/errors"; return 1; }
  [[ $(cat "$work"/acked.* | wc -l) -ge 40 ]] || { echo "the writers made no progress"; return 1; }
}
check "no writer or probe saw an error (a failover is a stall)" no_errors

all_there() {
  local f sum bad=0 n=0
  while read -r f sum; do
    n=$((n + 1))
    [[ $(md5sum <"$mnt/$f") == "$sum" ]] || { echo "$f: content differs or missing"; bad=$((bad + 1)); }
  done < <(cat "$work"/acked.*)
  echo "$n acknowledged files checked"
  ((bad == 0))
}
check "every acknowledged file is there with its bytes" all_there
check "vgctl fsck clean" vgctl fsck

# Failover time: the longest probe create that started between a kill and the next.
failover_times() {
  local i next
  for ((i = 0; i < ${#killed_at[@]}; i++)); do
    next=${killed_at[i + 1]:-$((killed_at[i] + 10000))}
    awk -v at="${killed_at[i]}" -v next_at="$next" \
      '$1 >= at - 100 && $1 < next_at - 100 && $2 > worst { worst = $2 } END { print worst + 0 }' "$work/probe"
  done | sort -n
}
if ((${#killed_at[@]} > 0)); then
  mapfile -t times < <(failover_times)
  echo "failover (ms, longest probe create after each of ${#times[@]} kills): ${times[*]}; median ${times[$((${#times[@]} / 2))]}, worst ${times[-1]}"
fi
summary
