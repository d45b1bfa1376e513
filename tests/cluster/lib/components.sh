# The cluster's processes: how each is configured, started, waited for and stopped.
# Each runs in its own session with its log in $LOG_DIR and its pid in $PID_DIR, so
# `down` ends exactly the processes `up` started.

# process_alive NAME: the recorded pid still runs the recorded program (a pid file can
# outlive its process, and the pid be reused, when the machine or session was stopped).
process_alive() {
    local pid exe
    [ -f "$PID_DIR/$1.pid" ] || return 1
    read -r pid exe < "$PID_DIR/$1.pid"
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

# start_process NAME COMMAND...: starts COMMAND unless NAME is already running.
start_process() {
    local name=$1; shift
    process_alive "$name" && return 0
    setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
    echo "$! $(readlink -f "$(command -v "$1")")" > "$PID_DIR/$name.pid"
}

stop_process() {
    local name=$1 pid
    process_alive "$name" || { rm -f "$PID_DIR/$name.pid"; return 0; }
    read -r pid _ < "$PID_DIR/$name.pid"
    if kill -TERM "$pid" 2>/dev/null; then
        local i
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_DIR/$name.pid"
}

# write_file FILE: writes stdin to FILE unless FILE already holds exactly that, so that
# `up` on a running cluster leaves configs alone (kube-proxy exits when its file is written).
write_file() {
    local content; content=$(cat)
    [ -f "$1" ] && [ "$(cat "$1")" = "$content" ] && return 0
    printf '%s\n' "$content" > "$1"
}

# wait_for WHAT SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
    local what=$1 limit=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not ready after ${limit}s (logs: $LOG_DIR)"
        sleep 0.5
    done
}

api_get() {
    curl -sf --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
        "https://$NODE_IP:$API_PORT$1"
}
kubectl_admin() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

start_etcd() {
    start_process etcd "$ETCD_BIN" --name kubedev --data-dir "$STATE_DIR/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster kubedev=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
        --unsafe-no-fsync --log-level warn
    wait_for etcd 60 curl -sf http://127.0.0.1:2379/readyz
}

start_apiserver() {
    start_process kube-apiserver "$K8S_BIN/kube-apiserver" \
        --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
        --etcd-servers http://127.0.0.1:2379 \
        --service-cluster-ip-range "$SERVICE_CIDR,$SERVICE_CIDR6" \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --allow-privileged=true --profiling=false \
        --client-ca-file "$PKI_DIR/ca.crt" \
        --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
        --kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$PKI_DIR/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
        --service-account-key-file "$PKI_DIR/service-account.pub" \
        --service-account-signing-key-file "$PKI_DIR/service-account.key"
    wait_for kube-apiserver 120 api_get /readyz
}

# restart_apiserver: the API server alone dies (kill -9) and comes back with the same
# arguments, as on a control-plane upgrade or crash; everything else keeps running.
restart_apiserver() {
    process_alive kube-apiserver || die "the cluster is not up"
    build_binaries
    local pid
    read -r pid _ < "$PID_DIR/kube-apiserver.pid"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$PID_DIR/kube-apiserver.pid"
    start_apiserver
}

start_controllers() {
    start_process kube-controller-manager "$K8S_BIN/kube-controller-manager" \
        --kubeconfig "$PKI_DIR/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$PKI_DIR/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$PKI_DIR/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false \
        --service-account-private-key-file "$PKI_DIR/service-account.key" \
        --root-ca-file "$PKI_DIR/ca.crt" --use-service-account-credentials=true \
        --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR,$POD_CIDR6" \
        --node-cidr-mask-size-ipv4 "${NODE_POD_CIDR#*/}" --node-cidr-mask-size-ipv6 "${NODE_POD_CIDR6#*/}" \
        --service-cluster-ip-range "$SERVICE_CIDR,$SERVICE_CIDR6"
    start_process kube-scheduler "$K8S_BIN/kube-scheduler" \
        --kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false
}

# start_rollouts_controller: Argo Rollouts' CRDs and its controller, cluster-wide, as a
# process of the node like the control plane. It serves health and metrics on every
# address, with no flag to say otherwise: a chain (KUBE-*, so `down` removes it) drops
# those ports from anywhere but loopback.
start_rollouts_controller() {
    local chain=KUBE-KUBEDEV-ROLLOUTS
    iptables -N "$chain" 2>/dev/null || iptables -F "$chain"
    iptables -A "$chain" ! -i lo -p tcp -m multiport --dports 18080,18090 -j DROP
    iptables -C INPUT -j "$chain" 2>/dev/null || iptables -I INPUT -j "$chain"
    kubectl_admin apply --server-side -f "$ARGO_ROLLOUTS_BIN/crds" >/dev/null
    wait_for "the Rollout CRD" 60 kubectl_admin wait --for condition=established \
        --timeout=5s crd/rollouts.argoproj.io
    start_process argo-rollouts "$ARGO_ROLLOUTS_BIN/rollouts-controller" \
        --kubeconfig "$ADMIN_KUBECONFIG" --leader-elect=false \
        --healthzPort 18080 --metricsPort 18090 --loglevel warn
}

# start_registry: the OCI registry at $REGISTRY_HOST, its certificate issued by the cluster's
# CA (which containerd trusts for it), its blobs under $STATE_DIR/registry.
start_registry() {
    [ -f "$PKI_DIR/registry.crt" ] || issue_cert registry "/CN=kubedev-registry" serverAuth "IP:$NODE_IP"
    mkdir -p "$STATE_DIR/registry/data" "$STATE_DIR/registry/trust"
    # What `skopeo --dest-cert-dir` reads: every *.crt in it is a CA.
    cp "$PKI_DIR/ca.crt" "$STATE_DIR/registry/trust/ca.crt"
    write_file "$STATE_DIR/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_HOST
  secret: kubedev-test-registry
  tls:
    certificate: $PKI_DIR/registry.crt
    key: $PKI_DIR/registry.key
YAML
    # No traces are exported anywhere.
    OTEL_TRACES_EXPORTER=none start_process registry "$REGISTRY_BIN" serve "$STATE_DIR/registry/config.yml"
    wait_for registry 30 curl -sf --cacert "$PKI_DIR/ca.crt" "https://$REGISTRY_HOST/v2/"
}

# push_agent_image: builds the agent image and pushes it to the registry the way users do
# (`make push-agent`), then forgets containerd's copy so that the next agent pulls it anew.
push_agent_image() {
    local archive=$STATE_DIR/agent-image.tar
    "$REPO_DIR/agent-image/build-image.sh" "$archive" >/dev/null
    local ref
    ref=$("$REPO_DIR/agent-image/push-image.sh" "$archive" "$REGISTRY_REPOSITORY" \
        --dest-cert-dir "$STATE_DIR/registry/trust" | tail -1) || die "pushing the agent image failed"
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images rm "$ref" >/dev/null 2>&1 || true
    log "agent image at $ref"
}

start_containerd() {
    mkdir -p "$STATE_DIR/containerd" "$STATE_DIR/cni/net.d"
    # containerd 1.6 reads only the first conflist. No ipMasq: pods have no way off the
    # machine, only to each other, the node and the services. An address of each family.
    write_file "$STATE_DIR/cni/net.d/10-kubedev.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "kubedev",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$STATE_DIR/cni/ipam",
      "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$POD_GATEWAY"}],
                 [{"subnet": "$NODE_POD_CIDR6", "gateway": "$POD_GATEWAY6"}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    }
  }]
}
CNI
    write_file "$STATE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$STATE_DIR/containerd/root"
state = "$STATE_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The machine lacks CAP_SYS_RESOURCE; without this runc fails every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE_DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.configs."$REGISTRY_HOST".tls]
    ca_file = "$PKI_DIR/ca.crt"
TOML
    start_process containerd containerd --config "$STATE_DIR/containerd/config.toml"
    wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
}

start_kubelet() {
    mkdir -p "$STATE_DIR/kubelet"
    # Pods with dnsPolicy Default (CoreDNS) get this: no upstream resolver at all.
    echo "options ndots:1" | write_file "$STATE_DIR/kubelet/resolv.conf"
    write_file "$STATE_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI_DIR/ca.crt"}
authorization: {mode: Webhook}
address: "$NODE_IP"
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: "$PKI_DIR/kubelet.crt"
tlsPrivateKeyFile: "$PKI_DIR/kubelet.key"
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: ["$DNS_SERVICE_IP"]
clusterDomain: "$CLUSTER_DOMAIN"
resolvConf: "$STATE_DIR/kubelet/resolv.conf"
podLogsDir: "$STATE_DIR/pod-logs"
# Locally imported images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A build machine's disk is often nearly full: a percentage of a large disk would taint the
# node (disk-pressure) while gigabytes are free, and keep new pods off for minutes after.
evictionHard: {memory.available: "100Mi", nodefs.available: "256Mi", imagefs.available: "256Mi", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
YAML
    start_process kubelet "$K8S_BIN/kubelet" --config "$STATE_DIR/kubelet/config.yaml" \
        --kubeconfig "$PKI_DIR/node.kubeconfig" --root-dir "$STATE_DIR/kubelet" \
        --hostname-override "$NODE_NAME" --node-ip "$NODE_IP,$NODE_IP6"
}

start_kube_proxy() {
    write_file "$STATE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$PKI_DIR/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: "$POD_CIDR,$POD_CIDR6"
hostnameOverride: "$NODE_NAME"
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32", "$NODE_IP6/128"]
# Zero leaves the host's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
    start_process kube-proxy "$K8S_BIN/kube-proxy" --config "$STATE_DIR/kube-proxy.yaml"
    wait_for kube-proxy 60 curl -sf http://127.0.0.1:10256/healthz
}

# render FILE: a manifest with @VAR@ placeholders filled from the settings.
render() {
    sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" \
        -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@DEV_NAMESPACE@|$DEV_NAMESPACE|g" "$1"
}

node_ready() {
    [ "$(kubectl_admin get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler registry containerd kubelet kube-proxy argo-rollouts)

# warn_if_disk_low: says so where the disk under STATE_DIR has less than 4 GiB free, as
# the builds and images of a test run need it, and the kubelet takes no new pod below 256 MiB.
warn_if_disk_low() {
    local free_kib
    free_kib=$(df -Pk "$STATE_DIR" | awk 'NR == 2 {print $4}')
    if [ "$free_kib" -lt $((4 * 1024 * 1024)) ]; then
        log "warning: only $((free_kib / 1024)) MiB free on the disk under $STATE_DIR;" \
            "below 256 MiB the kubelet takes no new pod (node condition DiskPressure)"
    fi
}

cluster_up() {
    local started=$SECONDS
    ensure_packages
    build_binaries
    if [ -d "$STATE_DIR" ] && ! all_components_alive; then
        log "a previous cluster in $STATE_DIR is no longer running: removing it first"
        cluster_down
    fi
    mkdir -p "$STATE_DIR/bin" "$LOG_DIR" "$PID_DIR"
    ln -sfn "$KUBECTL" "$STATE_DIR/bin/kubectl"
    warn_if_disk_low
    fetch_resolved
    host_up
    make_pki
    build_images
    log "starting etcd and the control plane"
    start_etcd
    start_apiserver
    start_controllers
    log "starting the registry, containerd, kubelet and kube-proxy"
    start_registry
    start_containerd
    import_images
    push_agent_image
    start_kubelet
    start_kube_proxy
    wait_for "node $NODE_NAME" 120 node_ready
    log "deploying CoreDNS and the $DEV_NAMESPACE namespace"
    local manifest
    for manifest in "$CLUSTER_DIR"/manifests/*.yaml; do
        render "$manifest" | kubectl_admin apply -f - >/dev/null
    done
    kubectl_admin -n "$DEV_NAMESPACE" apply -f "$CLUSTER_DIR/../../deploy/kubedev-role.yaml" >/dev/null
    log "starting the Argo Rollouts controller"
    start_rollouts_controller
    kubectl_admin -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null ||
        die "CoreDNS did not become ready (kubectl -n kube-system describe pods)"
    log "cluster ready in $((SECONDS - started))s"
    cat <<USAGE

The kubedev test cluster is up (Kubernetes $K8S_VERSION, node $NODE_NAME at $NODE_IP).
  export KUBECONFIG=$ADMIN_KUBECONFIG   # cluster-admin
  export KUBECONFIG=$DEV_KUBECONFIG     # namespace $DEV_NAMESPACE only
  kubectl: $KUBECTL
Stop it and remove every trace with: $CLUSTER_DIR/cluster.sh down
USAGE
}

cluster_down() {
    log "stopping the cluster"
    stop_process argo-rollouts
    stop_process kube-proxy
    stop_process kubelet
    if process_alive containerd; then
        # Kill every container so its shim exits; the sandboxes' netns go with host_down.
        local task
        for task in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$task" 2>/dev/null || true
        done
        sleep 1
        for task in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks delete -f "$task" >/dev/null 2>&1 || true
        done
    fi
    stop_process containerd
    stop_process registry
    stop_process kube-scheduler
    stop_process kube-controller-manager
    stop_process kube-apiserver
    stop_process etcd
    if [ -x "$(bin_dir_for kubernetes "$K8S_VERSION")/kube-proxy" ]; then
        "$(bin_dir_for kubernetes "$K8S_VERSION")/kube-proxy" --cleanup >/dev/null 2>&1 || true
    fi
    host_down
    unmount_all "$STATE_DIR"
    rm -rf "$STATE_DIR"
    log "cluster removed"
}

all_components_alive() {
    local name
    for name in "${COMPONENTS[@]}"; do process_alive "$name" || return 1; done
}

cluster_status() {
    local name all_up=true
    for name in "${COMPONENTS[@]}"; do
        if process_alive "$name"; then echo "$name: running"; else echo "$name: stopped"; all_up=false; fi
    done
    $all_up && echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
    $all_up
}
