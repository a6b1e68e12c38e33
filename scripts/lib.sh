# Shared by the shell scripts: source it (after setting $log, for check).
# Defines passed/failed counters, check NAME CMD..., eventually SECONDS CMD...,
# random_port and need_packages PKG...

passed=0
failed=0

# Runs CMD, printing PASS or FAIL NAME (with the end of the log on failure).
check() {
  local name=$1
  shift
  echo "== $name" >>"$log"
  if "$@" >>"$log" 2>&1; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name (see the log below)"
    failed=$((failed + 1))
    tail -n 15 "$log" | sed 's/^/    /'
  fi
}

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

# A port for a test cluster's nameserver, random in 20000-39999 so that clusters of runs
# side by side rarely ask for the same one.
random_port() {
  echo $((20000 + RANDOM % 20000))
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
