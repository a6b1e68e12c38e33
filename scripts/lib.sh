# Shared by the shell scripts: source it from the repository's root (after setting $log,
# for check). Sets $root (the repository) and $bin (the binaries: $VG_BIN, default
# target/debug, which `cargo test` builds). Defines passed/failed counters, check NAME
# CMD..., exited PID, eventually SECONDS CMD..., random_port, restart_server HOME NAME, need_root
# WHY, need_binaries_as_root TOOL..., need_packages PKG... and enable_fuse_uring.

root=$(pwd)
bin=${VG_BIN:-$root/target/debug}
passed=0
failed=0

# Runs CMD, printing PASS or FAIL NAME and its seconds (with the end of the log on failure).
check() {
  local name=$1 start=$SECONDS
  shift
  # ONLY=TEXT runs just the cases whose name contains TEXT (while working on one).
  [[ -n ${ONLY:-} && $name != *"$ONLY"* ]] && return 0
  echo "== $name" >>"$log"
  if "$@" >>"$log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "FAIL $name ($((SECONDS - start)) s; see the log below)"
    failed=$((failed + 1))
    tail -n 15 "$log" | sed 's/^/    /'
    # A script may name more to show (e.g. its servers' warnings): CI keeps only this.
    if declare -F failure_context >/dev/null; then failure_context | sed 's/^/    /'; fi
  fi
}

# Whether process PID has exited: gone, or a zombie nobody reaped yet (its files and
# sockets are closed). The servers up.sh starts are orphans, and PID 1 of some machines
# (this one's included) reaps orphans only every second or two.
exited() { [[ ! -e /proc/$1 || $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]; }

# Polls CMD until it succeeds, or fails once SECONDS have passed.
eventually() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Prints the summary line and returns non-zero if anything failed.
summary() {
  echo "$passed passed, $failed failed"
  [[ $failed == 0 ]]
}

# A port for a test cluster's nameserver, random in 10000-29999 so that clusters of runs
# side by side rarely ask for the same one, and below the kernel's ephemeral range
# (32768 up), where any client's socket could be holding it (the cluster takes the
# ports after it too).
random_port() {
  echo $((10000 + RANDOM % 20000))
}

# Stops server NAME of the cluster scripts/up.sh started under HOME (by the PID it
# recorded) and starts it again with the same command line; the pid file follows.
restart_server() {
  local home=$1 name=$2 pid cmd
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$home/pids")
  [[ -n $pid ]] && mapfile -d '' -t cmd <"/proc/$pid/cmdline" || return 1
  kill -TERM "$pid" && eventually 30 exited "$pid" || return 1
  "${cmd[@]}" >>"$home/logs/$name.out" 2>&1 &
  sed -i "s/^$name $pid\b/$name $!/" "$home/pids"
}

# Exits unless the script runs as root; WHY says what for.
need_root() {
  [[ $(id -u) == 0 ]] || { echo "$(basename "$0"): needs root${1:+ ($1)}" >&2; exit 1; }
}

# Exits unless the binaries TOOL... are in $bin and the script runs as root (it mounts).
need_binaries_as_root() {
  local tool
  for tool in "$@"; do
    [[ -x $bin/$tool ]] || { echo "$(basename "$0"): $bin/$tool is missing: run cargo build first" >&2; exit 1; }
  done
  need_root "FUSE mounts"
}

# Installs the Debian packages not installed yet (a fresh machine has no apt lists).
need_packages() {
  local pkg missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}

# Lets FUSE daemons take requests over io_uring (Linux 6.14+; the fuse module has it off
# by default): vg-fuse then serves each CPU's requests on that CPU. Without it (older
# kernels, not root) vg-fuse reads /dev/fuse as before.
enable_fuse_uring() {
  local knob=/sys/module/fuse/parameters/enable_uring
  if [[ -w $knob && $(cat "$knob") == N ]]; then
    echo Y >"$knob" 2>/dev/null || true
  fi
}
