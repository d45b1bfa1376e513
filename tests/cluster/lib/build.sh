# Builds the Kubernetes binaries, etcd and CoreDNS from their official Go modules
# (wrapper modules in gomod/), caching them under $CACHE_DIR keyed by version and go.sum.

# bin_dir_for NAME VERSION: the cache directory for one wrapper module's binaries.
bin_dir_for() {
    local name=$1 version=$2 sum
    # Contents only: the same module in another clone must hit the same cache.
    sum=$(cat "$CLUSTER_DIR/gomod/$name/go.mod" "$CLUSTER_DIR/gomod/$name/go.sum" | sha256sum | cut -c1-12)
    echo "$CACHE_DIR/bin/$name-$version-$sum"
}

# go_build NAME VERSION LDFLAGS PACKAGE[=BINARY]...: builds into the cache unless already
# there; BINARY names the output where Go's default would not (a module path ending in /v3).
go_build() {
    local name=$1 version=$2 ldflags=$3; shift 3
    local out; out=$(bin_dir_for "$name" "$version")
    if [ -f "$out/.complete" ]; then
        return 0
    fi
    command -v go >/dev/null || die "Go is needed to build the cluster binaries (https://go.dev/dl)"
    log "building $name $version from its Go module (first time only; takes a while)"
    local started=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    local package
    for package in "$@"; do
        (cd "$CLUSTER_DIR/gomod/$name" && CGO_ENABLED=0 GOFLAGS=-mod=mod \
            go build -trimpath -ldflags "$ldflags" -o "$out.tmp/${package#*=}" "${package%%=*}") \
            || die "building $name ($package) failed"
    done
    rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
    # Builds of other versions or module files are not used again.
    find "$CACHE_DIR/bin" -mindepth 1 -maxdepth 1 -name "$name-*" ! -path "$out" -exec rm -rf {} +
    log "built $name in $((SECONDS - started))s"
}

k8s_ldflags() {
    local flags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
        flags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

build_binaries() {
    go_build kubernetes "$K8S_VERSION" "$(k8s_ldflags)" \
        $(for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
            echo "k8s.io/kubernetes/cmd/$cmd=$cmd"; done)
    go_build etcd "$ETCD_VERSION" "-s -w" go.etcd.io/etcd/server/v3=etcd
    go_build coredns "$COREDNS_VERSION" "-s -w" github.com/coredns/coredns=coredns
    go_build registry "$REGISTRY_VERSION" "-s -w" \
        github.com/distribution/distribution/v3/cmd/registry=registry
    build_krew
    build_argo_rollouts
    K8S_BIN=$(bin_dir_for kubernetes "$K8S_VERSION")
    ETCD_BIN=$(bin_dir_for etcd "$ETCD_VERSION")/etcd
    COREDNS_BIN=$(bin_dir_for coredns "$COREDNS_VERSION")/coredns
    KUBECTL=$K8S_BIN/kubectl
    REGISTRY_BIN=$(bin_dir_for registry "$REGISTRY_VERSION")/registry
}

# build_argo_rollouts: the Argo Rollouts controller and its CRDs (the Rollout's and those
# the controller watches beside it), as published in its module; ARGO_ROLLOUTS_BIN names
# their directory.
build_argo_rollouts() {
    go_build argo-rollouts "$ARGO_ROLLOUTS_VERSION" "-s -w" \
        github.com/argoproj/argo-rollouts/cmd/rollouts-controller=rollouts-controller
    ARGO_ROLLOUTS_BIN=$(bin_dir_for argo-rollouts "$ARGO_ROLLOUTS_VERSION")
    if [ ! -d "$ARGO_ROLLOUTS_BIN/crds" ]; then
        local module
        module=$(cd "$CLUSTER_DIR/gomod/argo-rollouts" && GOFLAGS=-mod=mod \
            go list -m -f '{{.Dir}}' github.com/argoproj/argo-rollouts) ||
            die "the argo-rollouts module is not in Go's module cache"
        rm -rf "$ARGO_ROLLOUTS_BIN/crds.tmp" && mkdir "$ARGO_ROLLOUTS_BIN/crds.tmp"
        cp "$module"/manifests/crds/*-crd.yaml "$ARGO_ROLLOUTS_BIN/crds.tmp/"
        chmod u+w "$ARGO_ROLLOUTS_BIN"/crds.tmp/*
        mv "$ARGO_ROLLOUTS_BIN/crds.tmp" "$ARGO_ROLLOUTS_BIN/crds"
    fi
}

# build_krew: krew (as the kubectl plugin kubectl-krew) and validate-krew-manifest, for
# `make dist` and the install test; KREW_BIN names their directory.
build_krew() {
    go_build krew "$KREW_VERSION" "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$KREW_VERSION" \
        sigs.k8s.io/krew/cmd/krew=kubectl-krew \
        sigs.k8s.io/krew/cmd/validate-krew-manifest=validate-krew-manifest
    KREW_BIN=$(bin_dir_for krew "$KREW_VERSION")
}
