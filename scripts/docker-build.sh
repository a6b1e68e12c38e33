#!/usr/bin/env bash
# Builds the vg image FROM scratch out of local binaries: no registry, no base image.
# The image holds the four binaries, the shared libraries they link (as ldd lists them),
# and an nsswitch.conf so that service names (nameserver, alice, ...) resolve through the
# /etc/hosts and /etc/resolv.conf Docker provides. Also makes certs/ for the compose
# cluster if it is missing.
#
#   scripts/docker-build.sh [TAG]      (default vg:latest; binaries from $VG_BIN, default
#                                       a fresh `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-vg:latest}
bin=${VG_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --quiet
  bin=$(pwd)/target/release
fi
certs=${VG_CERTS_DIR:-$(pwd)/certs}
if [[ ! -f $certs/rootCA.crt ]]; then
  "$bin/vgctl" certs init --dir "$certs" --peers nameserver,alice,bob,carol,dave,eve,mellory,trent,client >/dev/null
fi
for name in alice bob carol dave eve mellory trent; do
  [[ -f $certs/$name/$name.crt ]] || "$bin/vgctl" certs add --dir "$certs" "$name" --role storage >/dev/null
done
chmod -R a+rX "$certs"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/etc" "$ctx/tmp"
cp "$bin"/vg-nameserver "$bin"/vg-storage "$bin"/vg-fuse "$bin"/vgctl "$ctx/bin/"
# Shared libraries and the dynamic loader, at the paths the binaries expect.
ldd "$ctx"/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u |
  while read -r lib; do cp --parents -L "$lib" "$ctx/"; done
echo "hosts: files dns" >"$ctx/etc/nsswitch.conf"
echo "root:x:0:0:root:/:/bin/vg-storage" >"$ctx/etc/passwd"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY . /
ENV PATH=/bin
DOCKERFILE
docker build --quiet -t "$tag" "$ctx" >/dev/null
echo "built $tag from $bin"
