# oci_image_tar REF ROOTFS OUT ENTRYPOINT...: writes ROOTFS as a one-layer image named REF
# to OUT, an OCI image layout in a tar (an "OCI archive") that `ctr images import`,
# `skopeo copy oci-archive:OUT ...` and `docker load` read. The platform is linux and
# $OCI_ARCH (default: this machine's). Reproducible: sorted entries, owner 0, mtime 0 and
# `gzip -n`, so the same files give the same digest.
oci_image_tar() {
    local ref=$1 rootfs=$2 out=$3; shift 3
    local arch=${OCI_ARCH:-$(oci_arch "$(uname -m)")}
    local work; work=$(mktemp -d)
    local blobs=$work/blobs/sha256
    mkdir -p "$blobs"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
    local diff_id; diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    gzip -n "$work/layer.tar"
    local layer; layer=$(oci_blob "$blobs" "$work/layer.tar.gz")
    jq -cn --arg arch "$arch" --arg diff "$diff_id" --args '{
        architecture: $arch, os: "linux",
        created: "1970-01-01T00:00:00Z",
        config: {Entrypoint: $ARGS.positional, Env: ["PATH=/bin"], WorkingDir: "/"},
        rootfs: {type: "layers", diff_ids: [$diff]}
    }' "$@" > "$work/config.json"
    local config; config=$(oci_blob "$blobs" "$work/config.json")
    jq -cn --argjson config "$config" --argjson layer "$layer" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: ($config + {mediaType: "application/vnd.oci.image.config.v1+json"}),
        layers: [$layer + {mediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}]
    }' > "$work/manifest.json"
    local manifest; manifest=$(oci_blob "$blobs" "$work/manifest.json")
    # containerd names the image after io.containerd.image.name; skopeo and docker after
    # the tag in org.opencontainers.image.ref.name.
    jq -cn --argjson manifest "$manifest" --arg ref "$ref" --arg tag "${ref##*:}" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [$manifest + {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $tag}
        }]
    }' > "$work/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out" \
        oci-layout index.json blobs
    rm -rf "$work"
}

# oci_blob DIR FILE: moves FILE into DIR under its digest; prints {digest, size} as JSON.
oci_blob() {
    local dir=$1 file=$2 sha size
    sha=$(sha256sum "$file" | cut -d' ' -f1)
    size=$(stat -c %s "$file")
    mv "$file" "$dir/$sha"
    jq -cn --arg digest "sha256:$sha" --argjson size "$size" '{digest: $digest, size: $size}'
}

# oci_arch MACHINE: the OCI architecture of a machine name or Rust target's first part.
oci_arch() {
    case $1 in
        x86_64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) echo "no OCI architecture known for $1" >&2; return 1 ;;
    esac
}
