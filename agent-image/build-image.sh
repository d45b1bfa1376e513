#!/usr/bin/env bash
# Builds the agent image without a Docker engine: a static kubedev-agent in an otherwise
# empty image, written as an OCI archive.
#   agent-image/build-image.sh OUT.tar [REF]
# TARGET (a Rust target triple, default this machine's) picks the architecture, e.g.
# TARGET=aarch64-unknown-linux-gnu with that target and a linker for it installed.
# Push it with agent-image/push-image.sh (`make push-agent`), load it with
# `ctr -n k8s.io images import OUT.tar` or `docker load -i OUT.tar`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
out=${1:?usage: build-image.sh OUT.tar [REF]}
ref=${2:-localhost/kubedev/kubedev-agent:$version}
# shellcheck source=oci-archive.sh
source "$here/oci-archive.sh"

target=${TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
# Static, so the image needs no libc; name lookups use the pod's resolv.conf and
# /etc/hosts through glibc's built-in files and dns modules.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p agent-image --target "$target")

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m755 "$repo/target/$target/release/kubedev-agent" "$root/kubedev-agent"
# The agent runs as whatever user the app ran as; it needs nothing else in the image.
OCI_ARCH=$(oci_arch "${target%%-*}") oci_image_tar "$ref" "$root" "$out" /kubedev-agent
echo "$ref -> $out ($(du -h "$out" | cut -f1))"
