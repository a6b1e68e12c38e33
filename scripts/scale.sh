#!/usr/bin/env bash
# How vg scales on this machine: metadata ops/s and sequential throughput with 1, 3 and 7
# storages, from 1 and 8 concurrent client processes on one mount. Prints one table.
#
#   scripts/scale.sh [STORAGE_COUNTS] [CLIENT_COUNTS]     (defaults: "1 3 7" "1 8")
#
# Each cluster runs with R=2 (R=1 with a single storage), 4 MiB blocks, release build.
# Metadata: every process creates, stats and unlinks META_N (default 1000) files in its
# own directory; the figure is all operations over the wall time. Throughput: fio with
# one job per process, SEQ_MB (default 512) MiB in all, written with fsync at the end,
# then read back with cold caches. Needs root, fio and python3.
set -uo pipefail
cd "$(dirname "$0")/.."
storage_counts=${1:-1 3 7}
client_counts=${2:-1 8}
META_N=${META_N:-1000}
SEQ_MB=${SEQ_MB:-512}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_root "mounts, drop_caches"
need_packages fio python3 || { echo "scale.sh: cannot install fio and python3" >&2; exit 1; }
cargo build --release --quiet || exit 1

work=$(mktemp -d /tmp/vg-scale.XXXXXX)
export VG_BIN=$root/target/release VG_CERTS=$work/certs
cleanup() {
  [[ -f ${VG_HOME:-/nonexistent}/pids ]] && scripts/down.sh >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
fio_mibps() { fio --output-format=terse --terse-version=3 "$@" 2>/dev/null | awk -F';' '{s += $7 + $48} END {printf "%.0f", s / 1024}'; }

meta() { # meta DIR PROCESSES: all create+stat+unlink operations per second
  python3 - "$1" "$2" "$META_N" <<'PY'
import os, sys, time
root, procs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
pids = []
for p in range(procs):
    pid = os.fork()
    if pid == 0:
        d = os.path.join(root, "p%d" % p)
        os.mkdir(d)
        names = [os.path.join(d, "f%d" % i) for i in range(n)]
        for f in names: os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o644))
        for f in names: os.stat(f)
        for f in names: os.unlink(f)
        os.rmdir(d)
        os._exit(0)
    pids.append(pid)
ok = all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
print("%.0f" % (3 * n * procs / (time.perf_counter() - start)) if ok else "FAIL")
PY
}

rows=()
for n in $storage_counts; do
  r=$(( n < 2 ? 1 : 2 ))
  export VG_HOME=$work/cluster$n VG_NS_PORT=$(random_port)
  mnt=$work/mnt$n
  scripts/up.sh -n "$n" -r "$r" -c 20GiB -m "$mnt" >"$work/up$n.log" 2>&1 || { cat "$work/up$n.log"; exit 1; }
  for c in $client_counts; do
    ops=$(meta "$mnt" "$c")
    size=$((SEQ_MB / c))
    args=(--directory="$mnt" --name=scale --numjobs="$c" --bs=1M --size="${size}M" --ioengine=psync --group_reporting)
    w=$(fio_mibps "${args[@]}" --rw=write --end_fsync=1 --fallocate=none)
    drop
    rd=$(fio_mibps "${args[@]}" --rw=read)
    rm -f "$mnt"/scale.*
    rows+=("| $n | $r | $c | $ops | $w | $rd |")
    echo "storages=$n R=$r clients=$c meta=$ops ops/s write=$w MiB/s read=$rd MiB/s" >&2
  done
  scripts/down.sh >/dev/null 2>&1
done

echo "| storages | R | client processes | create+stat+unlink ops/s | write MiB/s | read MiB/s |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
