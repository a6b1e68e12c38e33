#!/usr/bin/env bash
# Runs every test of vg: formatting (cargo fmt --check, when rustfmt is installed), unit and
# integration tests (real nameserver and storages over QUIC+TLS on 127.0.0.1), then the
# shell tests on the debug binaries that this one build made. Installs missing Debian
# packages when run as root. Clippy is run before committing, not here: it would compile
# the workspace a second time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is missing: install the Rust toolchain (https://rustup.rs)" >&2; exit 1
fi

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all --check
else
  echo "test.sh: rustfmt is not installed; skipping the formatting check" >&2
fi

# The upgrade test unpacks an xz archive of an old cluster.
if [[ $(id -u) == 0 ]] && ! command -v xz >/dev/null; then
  # shellcheck source=scripts/lib.sh
  log=/dev/null source scripts/lib.sh
  need_packages xz-utils || { echo "test.sh: cannot install xz-utils (apt-get failed)" >&2; exit 1; }
fi

# Each phase's time goes to the log, to keep the whole under its 25-minute budget.
timed() {
  local start=$SECONDS
  "$@"
  echo "test.sh: $* took $((SECONDS - start)) s" >&2
}

# One build of the workspace (dev profile): the integration and shell tests use its binaries.
timed cargo build --workspace --all-targets
timed cargo test --workspace

# Shell tests on a real FUSE mount need root and /dev/fuse.
if [[ $(id -u) != 0 || ! -e /dev/fuse ]]; then
  echo "test.sh: SKIPPED the mount tests: they need root and /dev/fuse" >&2
  exit 1
fi
# Mounts take FUSE requests over io_uring where the kernel has it (the POSIX cases'
# second mount reads /dev/fuse).
# shellcheck source=scripts/lib.sh
(log=/dev/null source scripts/lib.sh && enable_fuse_uring)
VG_BIN=$(pwd)/target/debug timed scripts/test-mount.sh
# POSIX cases: special files, long names, xattrs, files unlinked while open.
VG_BIN=$(pwd)/target/debug timed scripts/test-posix.sh
# Twenty power cuts on lossyfs (examples/lossyfs.rs) during writes through the mount.
VG_BIN=$(pwd)/target/debug timed scripts/powerloss-test.sh
# The nameserver group: the leader SIGKILLed at 20 points under four writers.
VG_BIN=$(pwd)/target/debug timed scripts/group-test.sh
# Network partitions between namespaces, then 16 workers for a minute.
VG_BIN=$(pwd)/target/debug timed scripts/partition-test.sh
VG_BIN=$(pwd)/target/debug timed scripts/load-test.sh
# The docker-compose cluster (installs docker.io and docker-compose, starts dockerd if needed).
VG_BIN=$(pwd)/target/debug timed scripts/compose-test.sh
