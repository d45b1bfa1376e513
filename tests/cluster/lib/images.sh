# Container images for the test cluster, built without a Docker engine: each is a
# docker-archive tar with one reproducible layer (sorted entries, fixed owner and
# mtime), imported into containerd under a fully qualified name.

# oci_image_tar REF ROOTFS OUT ENTRYPOINT...: writes a docker-archive of ROOTFS to OUT.
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

# The test programs (tests/fixtures), linked statically so an image needs no libraries.
build_fixtures() {
    local target; target=$(rustc -vV | sed -n 's/^host: //p')
    log "building test image programs"
    (cd "$REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release -p kubedev-test-fixtures --target "$target") \
        || die "building tests/fixtures failed"
    FIXTURES_BIN=$REPO_DIR/target/$target/release
}

# build_images: writes every image tar into $STATE_DIR/images.
build_images() {
    build_fixtures
    local out=$STATE_DIR/images root
    rm -rf "$out" && mkdir -p "$out"
    root=$(mktemp -d)

    mkdir -p "$root/pause" && install -m755 "$FIXTURES_BIN/pause" "$root/pause/pause"
    oci_image_tar "$PAUSE_IMAGE" "$root/pause" "$out/pause.tar" /pause

    mkdir -p "$root/coredns" && install -m755 "$COREDNS_BIN" "$root/coredns/coredns"
    oci_image_tar "$COREDNS_IMAGE" "$root/coredns" "$out/coredns.tar" /coredns

    mkdir -p "$root/echo" && install -m755 "$FIXTURES_BIN/echo-server" "$root/echo/echo-server"
    oci_image_tar "$ECHO_IMAGE" "$root/echo" "$out/echo.tar" /echo-server

    # The client: busybox (sh, wget, nslookup, ...), the probe, and pause to idle on.
    mkdir -p "$root/client/bin" "$root/client/tmp"
    chmod 1777 "$root/client/tmp"
    install -m755 "$(command -v busybox)" "$root/client/bin/busybox"
    local applet
    for applet in $(busybox --list); do
        [ -e "$root/client/bin/$applet" ] || ln -s busybox "$root/client/bin/$applet"
    done
    install -m755 "$FIXTURES_BIN/probe" "$root/client/bin/probe"
    install -m755 "$FIXTURES_BIN/pause" "$root/client/bin/pause"
    oci_image_tar "$CLIENT_IMAGE" "$root/client" "$out/client.tar" /bin/pause

    rm -rf "$root"
}

import_images() {
    local tar
    for tar in "$STATE_DIR"/images/*.tar; do
        ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tar" >/dev/null \
            || die "importing $tar into containerd failed"
    done
}
