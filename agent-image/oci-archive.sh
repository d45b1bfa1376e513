# oci_image_tar REF ROOTFS OUT ENTRYPOINT...: writes ROOTFS as a one-layer image named REF
# to OUT, a docker-archive that `ctr images import`, `docker load` and skopeo read.
# Reproducible: sorted entries, owner 0, mtime 0, so the same files give the same digest.
oci_image_tar() {
    local ref=$1 rootfs=$2 out=$3; shift 3
    local work; work=$(mktemp -d)
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
    local layer_sha; layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir "$work/$layer_sha" && mv "$work/layer.tar" "$work/$layer_sha/layer.tar"
    jq -cn --arg diff "sha256:$layer_sha" --args '{
        architecture: "amd64", os: "linux",
        created: "1970-01-01T00:00:00Z",
        config: {Entrypoint: $ARGS.positional, Env: ["PATH=/bin"], WorkingDir: "/"},
        rootfs: {type: "layers", diff_ids: [$diff]}
    }' "$@" > "$work/config.json"
    local config_sha; config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$work/$config_sha.json"
    jq -cn --arg config "$config_sha.json" --arg ref "$ref" --arg layer "$layer_sha/layer.tar" \
        '[{Config: $config, RepoTags: [$ref], Layers: [$layer]}]' > "$work/manifest.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out" .
    rm -rf "$work"
}
