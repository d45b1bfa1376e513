#!/usr/bin/env bash
# Pushes an agent image archive (build-image.sh) to a registry, without a Docker engine.
#   agent-image/push-image.sh ARCHIVE REPOSITORY [SKOPEO_COPY_FLAGS...]
# REPOSITORY is where images go, e.g. ghcr.io/my-org or registry.example.com:5000/team;
# the image becomes REPOSITORY/kubedev-agent:VERSION, printed on the last line. Credentials
# are skopeo's (`skopeo login REGISTRY`, or docker's config.json); flags such as
# --dest-creds or --dest-cert-dir pass through.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)
archive=${1:?usage: push-image.sh ARCHIVE REPOSITORY [SKOPEO_COPY_FLAGS...]}
repository=${2:?usage: push-image.sh ARCHIVE REPOSITORY [SKOPEO_COPY_FLAGS...]}
shift 2
if ! command -v skopeo >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends skopeo >/dev/null
    else
        echo "push-image.sh: needs skopeo (apt install skopeo, dnf install skopeo, brew install skopeo)" >&2
        exit 1
    fi
fi
ref=${repository%/}/kubedev-agent:$version
skopeo copy --quiet "$@" "oci-archive:$archive" "docker://$ref" >&2
echo "$ref"
