#!/usr/bin/env bash
# Benchmarks vg against other file systems in one run, back to back, and prints one table.
#
#   scripts/bench.sh [--moosefs] [MOUNTPOINT...]
#
# Starts a local vg cluster (nameserver + 3 storages, R=2, 4 MiB blocks, release build)
# mounted at a temporary directory, runs the shared workload (fsbench.sh from $BENCH_DIR,
# default ../shared/bench) on it, then with --moosefs on MooseFS (master + 3
# chunkservers, goal 2) started in the kit's network namespace, then on a cluster with
# --durability strict (every reply after its sync: "vg-strict"), then on every
# MOUNTPOINT given.
# Needs root, fio and python3; --moosefs needs Debian's moosefs-* packages (installed
# here if missing). Results: a TSV in $OUT (default /tmp/vg-bench.tsv) and a table.
set -uo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-$(pwd)/../shared/bench}
[[ -x $bench/fsbench.sh ]] || { echo "bench.sh: $bench/fsbench.sh not found (set BENCH_DIR)" >&2; exit 1; }
moosefs=
if [[ ${1:-} == --moosefs ]]; then moosefs=1; shift; fi
need=(fio)
[[ -n $moosefs ]] && need+=(moosefs-master moosefs-chunkserver moosefs-client moosefs-cli)
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_root "mounts, drop_caches"
need_packages "${need[@]}" || { echo "bench.sh: cannot install ${need[*]}" >&2; exit 1; }
cargo build --release --quiet || exit 1

work=$(mktemp -d /tmp/vg-bench.XXXXXX)
out=${OUT:-/tmp/vg-bench.tsv}
: >"$out"
export VG_BIN=$root/target/release VG_CERTS=$work/certs VG_HOME=$work/cluster VG_NS_PORT=$(random_port)
cleanup() {
  [[ -f $VG_HOME/pids ]] && scripts/down.sh >/dev/null 2>&1
  [[ -f $work/strict/pids ]] && VG_HOME=$work/strict scripts/down.sh >/dev/null 2>&1
  if [[ -n $moosefs ]]; then
    ip netns exec vgbench-mfs "$bench/moosefs-down.sh" /tmp/vgbench-mfsmnt >/dev/null 2>&1
    "$bench/netns-down.sh" >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

scripts/up.sh -n 3 -c 20GiB -m "$work/vg" >"$work/up.log" 2>&1 || { cat "$work/up.log"; exit 1; }
"$bench/fsbench.sh" "$work/vg" vg | tee -a "$out"
fuse_pid=$(awk '$1 == "vg-fuse" {print $2}' "$VG_HOME/pids")
printf 'vg\tclient_peak_rss_MiB\t%s\tMiB\n' "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$fuse_pid/status")" | tee -a "$out"
scripts/down.sh >/dev/null 2>&1
# MooseFS right after vg: this host's speed drifts over minutes, and vg against MooseFS
# is the comparison that matters most.
if [[ -n $moosefs ]]; then
  "$bench/netns-up.sh"
  ip netns exec vgbench-mfs env MFS_HOST=10.211.0.1 "$bench/moosefs-up.sh" /tmp/vgbench-mfsmnt >/dev/null
  ip netns exec vgbench-mfs env OUT="$work/mfs.tsv" "$bench/run-anchors.sh" moosefs >/dev/null
  grep -v '^==' "$work/mfs.tsv" | tee -a "$out"
  ip netns exec vgbench-mfs "$bench/moosefs-down.sh" /tmp/vgbench-mfsmnt >/dev/null 2>&1
fi
VG_HOME=$work/strict VG_DURABILITY=strict scripts/up.sh -n 3 -c 20GiB -m "$work/vg-strict" >"$work/up.log" 2>&1 \
  || { cat "$work/up.log"; exit 1; }
"$bench/fsbench.sh" "$work/vg-strict" vg-strict | tee -a "$out"
VG_HOME=$work/strict scripts/down.sh >/dev/null 2>&1
for mnt in "$@"; do
  "$bench/fsbench.sh" "$mnt" "$(basename "$mnt")" | tee -a "$out"
done

echo "== table"
python3 - "$out" <<'PY'
import sys, collections
rows = collections.OrderedDict(); systems = []
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if len(p) != 4: continue
    s, m, v, u = p
    if s not in systems: systems.append(s)
    rows.setdefault((m, u), {})[s] = v
others = systems[1:]
head = "| metric | unit | " + " | ".join(systems) + "".join(" | vg / " + o for o in others)
print(head + " |")
print("|---|---|" + "---|" * (len(systems) + len(others)))
for (m, u), vals in rows.items():
    line = "| %s | %s | %s" % (m, u, " | ".join(vals.get(s, "-") for s in systems))
    for o in others:
        try:
            line += " | %.2f" % (float(vals["vg"]) / float(vals[o]))
        except (KeyError, ValueError, ZeroDivisionError):
            line += " | -"
    print(line + " |")
PY
