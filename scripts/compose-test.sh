#!/usr/bin/env bash
# The docker-compose cluster of the original (a group of three nameservers + alice..trent,
# 1 MiB each, R=2), built FROM scratch with no registry, mounted on the host, with storages
# and the leading nameserver stopped and restarted under it. Prints PASS/FAIL per check
# and ends with "N passed, N failed".
#
#   scripts/compose-test.sh     (as root; installs docker.io and docker-compose if missing
#                                and starts a dockerd if none runs; binaries from $VG_BIN,
#                                default target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_binaries_as_root vg-nameserver vg-storage vg-fuse vgctl

if ! command -v dockerd >/dev/null || { ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; }; then
  echo "compose-test.sh: installing docker.io and docker-compose" >&2
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io docker-compose >/dev/null \
    || { echo "compose-test.sh: cannot install docker.io/docker-compose (apt-get failed)" >&2; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi

work=$(mktemp -d /tmp/vg-compose-test.XXXXXX)
log=$work/test.log
dockerd_pid=
if ! docker info >/dev/null 2>&1; then
  dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
  docker info >/dev/null 2>&1 || { echo "compose-test.sh: dockerd did not start:"; tail -n 20 "$work/dockerd.log"; exit 1; }
fi

export COMPOSE_PROJECT_NAME=vgtest$$
export VG_IMAGE=vg-test:$$ VG_CERTS_DIR=$work/certs VG_NS_HOST_PORT=$(random_port)
export VG_NS2_HOST_PORT=$((VG_NS_HOST_PORT + 1)) VG_NS3_HOST_PORT=$((VG_NS_HOST_PORT + 2))
export VG_HEARTBEAT_TIMEOUT=3s VG_GC_GRACE=10s
export VG_NS=127.0.0.1:$VG_NS_HOST_PORT,127.0.0.1:$VG_NS2_HOST_PORT,127.0.0.1:$VG_NS3_HOST_PORT
export VG_CA_CERT=$work/certs/rootCA.crt
export VG_CERTFILE=$work/certs/client/client.crt VG_KEYFILE=$work/certs/client/client.key
mnt=$work/mnt

cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  "${compose[@]}" down -v >>"$log" 2>&1
  docker rmi "$VG_IMAGE" >>"$log" 2>&1
  if [[ -n $dockerd_pid ]]; then kill "$dockerd_pid"; wait "$dockerd_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

active_count() { [[ $("$bin/vgctl" du 2>/dev/null | grep -c ' active ') == "$1" ]]; }
fsck_clean() { "$bin/vgctl" fsck >/dev/null 2>&1; }

check "image builds FROM scratch with no registry" env VG_BIN="$bin" scripts/docker-build.sh "$VG_IMAGE"
nameservers=(nameserver nameserver2 nameserver3)
check "docker-compose up three nameservers and seven storages" \
  "${compose[@]}" up -d "${nameservers[@]}" alice bob carol dave eve mellory trent
check "all seven storages active, 1 MiB each (vgctl du)" eventually 60 active_count 7
check "vgctl du shows 1.0 MiB capacities" bash -c "[[ \$('$bin/vgctl' du | grep -c '1.0 MiB active') -ge 1 ]]"

mkdir -p "$mnt" "$work/src"
mount_on_host() { "$bin/vg-fuse" "$mnt" --daemon --logfile "$work/vg-fuse.log" >/dev/null; }
check "vg-fuse on the host mounts the compose cluster" mount_on_host

write_files() {
  local i
  for i in 1 2 3 4 5; do
    head -c $((100000 * i)) /dev/urandom >"$work/src/file$i" && cp "$work/src/file$i" "$mnt/file$i" || return 1
  done
  mkdir -p "$mnt/dir/sub" && echo "hello from the host" >"$mnt/dir/sub/hello.txt"
}
check "write files with coreutils" write_files

all_intact() {
  local i
  for i in 1 2 3 4 5; do cmp "$work/src/file$i" "$mnt/file$i" || return 1; done
  [[ $(cat "$mnt/dir/sub/hello.txt") == "hello from the host" ]]
}
check "read them back" all_intact
check "fsck clean" eventually 30 fsck_clean

for victim in carol dave; do
  check "docker-compose stop $victim" bash -c "'${compose[*]}' stop $victim >/dev/null 2>&1"
  check "$victim marked down" eventually 30 bash -c "'$bin/vgctl' du | grep -q '^$victim .* down '"
  check "re-replicated without $victim: fsck clean" eventually 60 fsck_clean
  check "files intact without $victim" all_intact
done
logged_loss() {
  local logs
  logs=$("${compose[@]}" logs --no-color "${nameservers[@]}" 2>&1)
  grep -q 'storage left' <<<"$logs" && grep -q 'replication finished' <<<"$logs"
}
check "the leading nameserver logs the loss and the re-replication" logged_loss
check "restart carol and dave" "${compose[@]}" start carol dave
check "all seven active again" eventually 60 active_count 7
check "fsck clean after the restart" eventually 60 fsck_clean
check "files intact after the restart" all_intact

# The leading nameserver's container stopped under the mount: another leads, the mount
# goes on; started again, it rejoins.
leader=$("$bin/vgctl" nameserver list | awk '$4 == "leader" {print $1}')
service=${nameservers[$((leader - 1))]}
check "docker-compose stop the leading nameserver ($service)" "${compose[@]}" stop "$service"
writes_on() { echo "after $service" >"$mnt/after-leader" && [[ $(cat "$mnt/after-leader") == "after $service" ]]; }
check "the mount writes and reads through the next leader" eventually 30 writes_on
check "files intact under the next leader" all_intact
check "docker-compose start $service again" "${compose[@]}" start "$service"
rejoined() { "$bin/vgctl" nameserver list | grep -q "^ *$leader .* follower "; }
check "$service rejoins the group as a follower" eventually 30 rejoined
check "fsck clean with the group whole again" eventually 60 fsck_clean
check "unmount" umount "$mnt"
check "docker-compose down" "${compose[@]}" down -v

summary
