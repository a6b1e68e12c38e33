#!/usr/bin/env bash
# Network partitions: the nameserver, three storages and a client each in a network
# namespace of their own (made here, addresses only inside them: 10.77.0.0/24 on a bridge
# that lives in a namespace too, so the host's network is never touched). Cuts a storage
# off and heals it; cuts the client off the cluster and heals it. Then a second cluster
# with a group of three nameservers: cuts the leader off from the others and the
# client, and heals it.
#
#   scripts/partition-test.sh    (as root; binaries from $VG_BIN, default target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/vg-partition-test.XXXXXX)
log=$work/test.log
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_root
tag=vgp$$
nodes=(ns s1 s2 s3 cl g1 g2 g3 t1 t2 t3)
declare -A ip=([ns]=10.77.0.1 [s1]=10.77.0.11 [s2]=10.77.0.12 [s3]=10.77.0.13 [cl]=10.77.0.50
  [g1]=10.77.0.21 [g2]=10.77.0.22 [g3]=10.77.0.23 [t1]=10.77.0.31 [t2]=10.77.0.32 [t3]=10.77.0.33)
declare -A name=([s1]=alice [s2]=bob [s3]=carol [t1]=dave [t2]=eve [t3]=trent)
pids=()
mnt=$work/mnt
mnt2=$work/mnt2

cleanup() {
  mountpoint -q "$mnt" && umount -l "$mnt"
  mountpoint -q "$mnt2" && umount -l "$mnt2"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for node in "${nodes[@]}" br; do ip netns del "$tag-$node" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

if ! ip netns add "$tag-br" 2>>"$log"; then
  echo "SKIP partition tests: cannot create network namespaces here ($(tail -n 1 "$log"))"
  exit 0
fi
ip -n "$tag-br" link add br0 type bridge && ip -n "$tag-br" link set br0 up || exit 1
for node in "${nodes[@]}"; do
  ip netns add "$tag-$node"
  ip link add "v$node" netns "$tag-$node" type veth peer name "b$node" netns "$tag-br"
  ip -n "$tag-br" link set "b$node" master br0
  ip -n "$tag-br" link set "b$node" up
  ip -n "$tag-$node" addr add "${ip[$node]}/24" dev "v$node"
  ip -n "$tag-$node" link set "v$node" up
  ip -n "$tag-$node" link set lo up
done
# Run in a node's network namespace only: mounts stay visible to this shell.
in_ns() { local node=$1; shift; nsenter --net="/var/run/netns/$tag-$node" "$@"; }
# The same in the background, recording the PID of the program itself (not of a subshell).
start_in_ns() { (exec nsenter --net="/var/run/netns/$1-$2" "${@:3}") & pids+=($!); }
cut() { ip -n "$tag-br" link set "b$1" down; }
heal() { ip -n "$tag-br" link set "b$1" up; }

"$bin/vgctl" certs init --dir "$work/certs" --peers nameserver,alice,bob,carol,dave,eve,trent,client >>"$log" 2>&1
tls() { echo "--ca-cert $work/certs/rootCA.crt --certfile $work/certs/$1/$1.crt --keyfile $work/certs/$1/$1.key"; }
# shellcheck disable=SC2046
start_in_ns "$tag" ns "$bin/vg-nameserver" --hostname "${ip[ns]}" --port 8000 --meta-dir "$work/meta" --block-size 1MiB \
  --heartbeat-timeout 3s --gc-grace 2s $(tls nameserver) --logfile "$work/nameserver.log"
for node in s1 s2 s3; do
  # shellcheck disable=SC2046
  start_in_ns "$tag" "$node" "$bin/vg-storage" --name "${name[$node]}" --hostname "${ip[$node]}" --port 8001 \
    --capacity 1GiB --rootpath "$work/data/${name[$node]}" --ns-hostname "${ip[ns]}" --ns-port 8000 \
    $(tls "${name[$node]}") --logfile "$work/${name[$node]}.log"
done
# shellcheck disable=SC2046
vgctl() { in_ns cl "$bin/vgctl" --ns-hostname "${ip[ns]}" --ns-port 8000 $(tls client) --timeout 3s "$@"; }
active() { [[ $(vgctl du 2>/dev/null | grep -c ' active ') == "$1" ]]; }
check "cluster up across namespaces" eventually 30 active 3

mkdir -p "$mnt"
# shellcheck disable=SC2046
mount_pid=$(in_ns cl "$bin/vg-fuse" "$mnt" --ns-hostname "${ip[ns]}" --ns-port 8000 $(tls client) --timeout 3s \
  --daemon --logfile "$work/vg-fuse.log")
pids+=("$mount_pid")
head -c $((8 << 20)) /dev/urandom >"$work/data8"
check "write through the client's mount" cp "$work/data8" "$mnt/data8"

check "cut alice off" cut s1
is_down() { vgctl du | grep -q "^$1 .* down "; }
check "alice marked down" eventually 30 is_down alice
fsck_clean() { vgctl fsck >/dev/null 2>&1; }
check "alice's blocks re-replicated: fsck clean" eventually 60 fsck_clean
check "file intact without alice" cmp "$work/data8" "$mnt/data8"
check "heal alice" heal s1
check "alice rejoins" eventually 30 active 3
on_disk() { find "$work/data" -type f ! -name '*.crc' | wc -l; }
referenced() { vgctl status | awk '/^blocks:/ {print $2}'; }
no_extra() { [[ $(on_disk) == $((2 * $(referenced))) ]]; }
check "alice's now-extra copies cleaned up" eventually 60 no_extra

check "cut the client off" cut cl
eio_in_time() {
  local start=$SECONDS out
  out=$(stat "$mnt/not-cached-$RANDOM" 2>&1)
  echo "$out"
  [[ $out == *"Input/output error"* ]] && ((SECONDS - start <= 15))
}
check "a cut-off client gets EIO within its timeout" eio_in_time
check "heal the client" heal cl
recovered() { echo back >"$mnt/after-heal" && [[ $(cat "$mnt/after-heal") == back ]] && cmp "$work/data8" "$mnt/data8"; }
check "the client recovers when healed" eventually 30 recovered

# A group of three nameservers (g1..g3) with storages dave, eve, trent, and a second
# mount on the client that knows the three.
group="1=${ip[g1]}:8000,2=${ip[g2]}:8000,3=${ip[g3]}:8000"
members="${ip[g1]}:8000,${ip[g2]}:8000,${ip[g3]}:8000"
for i in 1 2 3; do
  # shellcheck disable=SC2046
  start_in_ns "$tag" "g$i" "$bin/vg-nameserver" --hostname "${ip[g$i]}" --port 8000 --meta-dir "$work/meta-g$i" \
    --block-size 1MiB --heartbeat-timeout 3s --node-id "$i" --peers "$group" $(tls nameserver) --logfile "$work/g$i.log"
done
for node in t1 t2 t3; do
  # shellcheck disable=SC2046
  start_in_ns "$tag" "$node" "$bin/vg-storage" --name "${name[$node]}" --hostname "${ip[$node]}" --port 8001 \
    --capacity 1GiB --rootpath "$work/data2/${name[$node]}" --ns "$members" \
    $(tls "${name[$node]}") --logfile "$work/${name[$node]}.log"
done
# shellcheck disable=SC2046
gctl() { in_ns cl "$bin/vgctl" --ns "$members" $(tls client) --timeout 3s "$@"; }
group_active() { [[ $(gctl du 2>/dev/null | grep -c ' active ') == 3 ]]; }
check "a group of three nameservers up across namespaces" eventually 30 group_active
mkdir -p "$mnt2"
# shellcheck disable=SC2046
mount_pid=$(in_ns cl "$bin/vg-fuse" "$mnt2" --ns "$members" $(tls client) --timeout 10s \
  --daemon --logfile "$work/vg-fuse2.log")
pids+=("$mount_pid")
check "write through the group's mount" cp "$work/data8" "$mnt2/data8"
leader=$(gctl nameserver list | awk '$4 == "leader" {print $1}')
check "cut the leader (g$leader) off from the others and the client" cut "g$leader"
cut_at=$SECONDS
# From inside its own namespace, the old leader is all a client can reach.
# shellcheck disable=SC2046
alone() { in_ns "g$leader" "$bin/vgctl" --ns "${ip[g$leader]}:8000" $(tls client) --timeout 1s stat / 2>&1; }
stops_answering() {
  local out
  out=$(alone) && return 1
  echo "$out"
  [[ $out == *"does not lead"* ]]
}
check "the cut-off leader stops answering (it lost its majority)" eventually 10 stops_answering
new_leader() {
  local listed
  listed=$(gctl nameserver list 2>/dev/null) || return 1
  echo "$listed"
  grep ' leader ' <<<"$listed" | grep -qv "^ *$leader "
}
check "the two others elect a leader" eventually 15 new_leader
writes_again() { echo during >"$mnt2/during-cut" && [[ $(cat "$mnt2/during-cut") == during ]] && cmp "$work/data8" "$mnt2/data8"; }
check "the mount writes and reads through the new leader" eventually 30 writes_again
echo "group: writes again $((SECONDS - cut_at)) s after the leader was cut off" >>"$log"
check "heal the old leader" heal "g$leader"
rejoined() {
  local listed
  listed=$(gctl nameserver list 2>/dev/null) || return 1
  echo "$listed"
  grep -q "^ *$leader .* follower " <<<"$listed" && ! grep -q ' -$' <<<"$listed"
}
check "the old leader rejoins as a follower and catches up" eventually 30 rejoined
group_fsck() { in_ns cl "$bin/vgctl" --ns "$members" $(tls client) --timeout 10s fsck; }
check "the group's cluster: fsck clean" eventually 30 group_fsck
summary
