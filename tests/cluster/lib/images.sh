# The test cluster's own images, built without a Docker engine (oci_image_tar, shared with
# the agent image) and imported into containerd under fully qualified names. The agent
# image is not among them: the kubelet pulls it from the registry (push_agent_image).

# shellcheck source=../../../agent-image/oci-archive.sh
source "$REPO_DIR/agent-image/oci-archive.sh"

# The test programs (tests/fixtures), linked statically so an image needs no libraries.
build_fixtures() {
    local target; target=$(rustc -vV | sed -n 's/^host: //p')
    log "building test image programs"
    (cd "$REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release -p tests-fixtures --target "$target") \
        || die "building tests/fixtures failed"
    FIXTURES_BIN=$REPO_DIR/target/$target/release
    # Tests run the probe on the host side too (in their own network namespaces).
    install -m755 "$FIXTURES_BIN/probe" "$STATE_DIR/bin/probe"
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
    install -m755 "$FIXTURES_BIN/grpc-echo" "$root/echo/grpc-echo"
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
    install -m755 "$FIXTURES_BIN/grpc-echo" "$root/client/bin/grpc-echo"
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
