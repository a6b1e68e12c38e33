#!/usr/bin/env bash
# Starts a local vg cluster on loopback: a nameserver (or -N of them, a group replicating
# the namespace with Raft: ns1, ns2, ...) and storages (default alice, bob, carol), with
# certificates (made if missing) and data under $VG_HOME (default ./.vg), and mounts it at
# /mnt/vg (or -m MOUNTPOINT; -M: do not mount).
#
#   scripts/up.sh [-N NAMESERVERS] [-n STORAGES] [-c CAPACITY] [-r REPLICATION] [-b BLOCK_SIZE] [-m DIR | -M]
#
# Environment: VG_HOME (data, logs, pids), VG_DATA (the nameserver's meta/ (nsI/ for each
# of a group) and the storages' data/, default VG_HOME), VG_NS_PORT (8000; the group's
# other nameservers, then the storages use the next ports),
# VG_CERTS (certificates, default ./certs), VG_BIN (binaries; default: cargo build --release),
# VG_METRICS_PORT (if set: Prometheus metrics at 127.0.0.1:PORT/metrics for the
# nameserver, the next ports for the storages, then the mount).
# PIDs go to $VG_HOME/pids so that scripts/down.sh stops exactly these processes;
# $VG_HOME/env holds the variables that point vgctl and vg-fuse at this cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

n_nameservers=1
n_storages=3
capacity=1GiB
replication=2
block_size=4MiB
mountpoint=/mnt/vg
usage="usage: $0 [-N NAMESERVERS] [-n STORAGES] [-c CAPACITY] [-r REPLICATION] [-b BLOCK_SIZE] [-m DIR | -M]"
while getopts "N:n:c:r:b:m:M" opt; do
  case $opt in
    N) n_nameservers=$OPTARG ;;
    n) n_storages=$OPTARG ;;
    c) capacity=$OPTARG ;;
    r) replication=$OPTARG ;;
    b) block_size=$OPTARG ;;
    m) mountpoint=$OPTARG ;;
    M) mountpoint= ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

home=${VG_HOME:-$root/.vg}
data=${VG_DATA:-$home}
ns_port=${VG_NS_PORT:-8000}
names=(alice bob carol dave eve mellory trent)
if (( n_storages < 1 || n_storages > 20 )); then
  echo "up.sh: -n $n_storages: use 1..20 storages" >&2; exit 2
fi
if (( n_nameservers < 1 || n_nameservers > 7 )); then
  echo "up.sh: -N $n_nameservers: use 1..7 nameservers (an odd number: 1, 3 or 5)" >&2; exit 2
fi
for ((i = ${#names[@]}; i < n_storages; i++)); do names+=("storage$i"); done
names=("${names[@]:0:n_storages}")

if [[ -f $home/pids ]]; then
  echo "up.sh: a cluster already runs from $home (scripts/down.sh stops it)" >&2; exit 1
fi

bin=${VG_BIN:-}
if [[ -z $bin ]]; then
  if ! command -v cargo >/dev/null; then
    echo "up.sh: cargo is missing: install the Rust toolchain (https://rustup.rs)" >&2; exit 1
  fi
  cargo build --release --quiet
  bin=$root/target/release
fi

certs=${VG_CERTS:-$root/certs}
peers=nameserver,client
for name in "${names[@]}"; do peers+=",$name"; done
if [[ ! -f $certs/rootCA.crt ]]; then
  "$bin/vgctl" certs init --dir "$certs" --peers "$peers" >/dev/null
fi
for name in "${names[@]}"; do
  [[ -f $certs/$name/$name.crt ]] || "$bin/vgctl" certs add --dir "$certs" "$name" --role storage >/dev/null
done

tls() { echo "--ca-cert $certs/rootCA.crt --certfile $certs/$1/$1.crt --keyfile $certs/$1/$1.key"; }
mkdir -p "$home/logs"
: > "$home/pids"
# The nameservers: one, or a group (ns1 at VG_NS_PORT, ns2 at the next port...) that
# clients and storages reach through --ns, trying each until the leader answers.
ns_list=
peers=
for ((i = 1; i <= n_nameservers; i++)); do
  ns_list+="${ns_list:+,}127.0.0.1:$((ns_port + i - 1))"
  peers+="${peers:+,}$i=127.0.0.1:$((ns_port + i - 1))"
done
cat > "$home/env" <<ENV
export VG_NS_HOSTNAME=127.0.0.1 VG_NS_PORT=$ns_port VG_NS=$ns_list
export VG_CA_CERT=$certs/rootCA.crt VG_CERTFILE=$certs/client/client.crt VG_KEYFILE=$certs/client/client.key
ENV
# metrics N: the flag serving the Nth process's metrics, if VG_METRICS_PORT is set.
metrics() { if [[ -n ${VG_METRICS_PORT:-} ]]; then echo "--metrics 127.0.0.1:$((VG_METRICS_PORT + $1))"; fi; }
for ((i = 1; i <= n_nameservers; i++)); do
  if (( n_nameservers == 1 )); then
    name=nameserver meta=$data/meta group=()
  else
    name=ns$i meta=$data/ns$i/meta group=(--node-id "$i" --peers "$peers")
  fi
  # shellcheck disable=SC2046 # tls prints separate flags on purpose
  "$bin/vg-nameserver" --hostname 127.0.0.1 --port "$((ns_port + i - 1))" --meta-dir "$meta" $(tls nameserver) \
    --replication "$replication" --block-size "$block_size" "${group[@]}" --logfile "$home/logs/$name.log" \
    $(metrics $((i - 1))) >"$home/logs/$name.out" 2>&1 &
  echo "$name $!" >> "$home/pids"
done
port=$((ns_port + n_nameservers))
for name in "${names[@]}"; do
  # shellcheck disable=SC2046
  "$bin/vg-storage" --name "$name" $(tls "$name") --hostname 127.0.0.1 --port "$port" --capacity "$capacity" \
    --rootpath "$data/data/$name" --ns "$ns_list" \
    --logfile "$home/logs/$name.log" $(metrics $((port - ns_port))) >"$home/logs/$name.out" 2>&1 &
  echo "$name $!" >> "$home/pids"
  port=$((port + 1))
done

# Wait until every storage is active (or give up after 30 s).
deadline=$((SECONDS + 30))
# shellcheck disable=SC2046
until "$bin/vgctl" --ns "$ns_list" --timeout 2s $(tls client) du 2>/dev/null | grep -c ' active ' | grep -qx "${#names[@]}"; do
  if (( SECONDS > deadline )); then
    echo "up.sh: the cluster did not come up; see $home/logs" >&2; exit 1
  fi
  sleep 0.2
done

mounted=
if [[ -n $mountpoint ]]; then
  if [[ ! -e /dev/fuse ]]; then
    echo "up.sh: /dev/fuse is missing: load the fuse module (modprobe fuse), or run with -M" >&2; exit 1
  fi
  mkdir -p "$mountpoint"
  # shellcheck source=scripts/lib.sh
  (log=/dev/null VG_BIN=$bin source scripts/lib.sh && enable_fuse_uring)
  # shellcheck disable=SC2046
  pid=$("$bin/vg-fuse" "$mountpoint" --ns "$ns_list" $(tls client) --daemon --logfile "$home/logs/vg-fuse.log" \
    $(metrics $((${#names[@]} + n_nameservers))))
  echo "vg-fuse $pid $mountpoint" >> "$home/pids"
  mounted="Mounted at $mountpoint: use it like any directory (cp, ls, mv, rm, tar, git...)."
fi

cat <<MSG
vg is running: nameserver$( ((n_nameservers > 1)) && echo "s (a group of $n_nameservers)") on $ns_list, storages ${names[*]} (capacity $capacity each, R=$replication).
$mounted
Logs: $home/logs. Stop it with scripts/down.sh.

vgctl (source $home/env first if you changed VG_CERTS or VG_NS_PORT):
  $bin/vgctl du
  $bin/vgctl put README.md /
  $bin/vgctl ls /
  $bin/vgctl          # interactive shell
MSG
