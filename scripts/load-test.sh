#!/usr/bin/env bash
# Load: 16 workers through two mounts of one local cluster for $LOAD_SECONDS (default 60):
# each writes files of random sizes, reads every one back through the other mount and
# re-reads older ones, and deletes its oldest. No error and no mismatch is allowed.
# Reports operations done and the peak RSS of every server and of vg-fuse.
#
#   scripts/load-test.sh     (as root; binaries from $VG_BIN, default target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${LOAD_SECONDS:-60}
work=$(mktemp -d /tmp/vg-load-test.XXXXXX)
log=$work/test.log
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need_root "FUSE mounts"
export VG_BIN=$bin VG_CERTS=$work/certs VG_HOME=$work/cluster VG_NS_PORT=$(random_port)
# Deleted files free their blocks after the grace period: keep it short so that a minute
# of writing (several GiB) fits the cluster.
export VG_GC_GRACE=5s
cleanup() {
  [[ -f $VG_HOME/pids ]] && scripts/down.sh >>"$log" 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

scripts/up.sh -n 3 -c 8GiB -b 1MiB -m "$work/a" >>"$log" 2>&1 || { echo "load-test.sh: cluster did not start"; tail "$log"; exit 1; }
# shellcheck disable=SC1091
pid_b=$(source "$VG_HOME/env" && "$bin/vg-fuse" "$work/b" --daemon --logfile "$VG_HOME/logs/vg-fuse-b.log")
echo "vg-fuse $pid_b $work/b" >>"$VG_HOME/pids"

worker() {
  local w=$1 deadline=$2 i=0 ops=0 errors=0 size name old
  local dir_a=$work/a/w$w dir_b=$work/b/w$w local=$work/local$w
  mkdir -p "$dir_a" "$local" || return 1
  while ((SECONDS < deadline)); do
    size=$((1 + (RANDOM * 32768 + RANDOM) % (2 << 20)))
    name=f$i
    head -c "$size" /dev/urandom >"$local/$name"
    if ! cp "$local/$name" "$dir_a/$name"; then errors=$((errors + 1)); fi
    # Close-to-open across mounts: the other mount sees exactly these bytes.
    if ! cmp -s "$local/$name" "$dir_b/$name"; then errors=$((errors + 1)); echo "w$w: $name differs on mount b"; fi
    old=$((RANDOM % (i + 1)))
    if [[ -f $local/f$old ]] && ! cmp -s "$local/f$old" "$dir_a/f$old"; then errors=$((errors + 1)); echo "w$w: f$old differs"; fi
    if ((i >= 20)); then
      rm -f "$local/f$((i - 20))"
      if ! rm "$dir_a/f$((i - 20))"; then errors=$((errors + 1)); fi
    fi
    i=$((i + 1))
    ops=$((ops + 4))
  done
  echo "$ops $errors" >"$work/result$w"
}

deadline=$((SECONDS + seconds))
for w in $(seq 16); do worker "$w" "$deadline" >>"$log" 2>&1 & done
wait
ops=0
errors=0
for w in $(seq 16); do
  read -r o e <"$work/result$w" || { o=0; e=1; }
  ops=$((ops + o))
  errors=$((errors + e))
done
check "16 workers for ${seconds}s: $ops file operations, no error or mismatch" test "$errors" = 0
check "the cluster is consistent afterwards (fsck)" bash -c "source '$VG_HOME/env' && '$bin/vgctl' fsck"

echo "peak RSS (VmHWM):"
while read -r name pid _; do
  rss=$(awk '/^VmHWM/ {print $2, $3}' "/proc/$pid/status" 2>/dev/null)
  echo "  $name: ${rss:-exited}"
done <"$VG_HOME/pids"
summary
