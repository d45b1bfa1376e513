# Settings of the local test cluster, shared by every harness script.
# Every address below belongs to hosts this harness creates on this machine.

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
COREDNS_VERSION=v1.14.7
REGISTRY_VERSION=v3.1.2
KREW_VERSION=v0.4.3
ARGO_ROLLOUTS_VERSION=v1.10.1

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$CLUSTER_DIR/../.." && pwd)

# Built binaries are kept outside the repository and reused across clones.
CACHE_DIR=${KUBEDEV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubedev}
# Everything a running cluster writes; `down` removes it.
STATE_DIR=${KUBEDEV_CLUSTER_DIR:-/var/lib/kubedev-cluster}

NODE_NAME=kubedev-node
# Dual-stack, IPv4 first: a Service without ipFamilyPolicy gets one IPv4 ClusterIP; pods
# and the node have an address of each family. The IPv6 ranges are ULAs of this harness.
# The node address lives on `lo` as a /32 and a /128 (this kernel has no dummy interfaces).
NODE_IP=10.201.0.1
NODE_IP6=fd4b:6b64:0:201::1
# Pod ranges; the node is given the first /24 and the first /64 (the CNI bridge's ranges).
POD_CIDR=10.244.0.0/16
POD_CIDR6=fd4b:6b64:244::/56
NODE_POD_CIDR=10.244.0.0/24
NODE_POD_CIDR6=fd4b:6b64:244::/64
POD_GATEWAY=10.244.0.1
POD_GATEWAY6=fd4b:6b64:244::1
SERVICE_CIDR=10.96.0.0/16
SERVICE_CIDR6=fd4b:6b64:96::/112
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
API_PORT=6443
BRIDGE=kubedev0

PAUSE_IMAGE=registry.k8s.io/pause:3.10
COREDNS_IMAGE=localhost/kubedev/coredns:${COREDNS_VERSION#v}
ECHO_IMAGE=localhost/kubedev-test/echo:0.1.0
CLIENT_IMAGE=localhost/kubedev-test/client:0.1.0

# An OCI registry (CNCF distribution) on the node, over TLS from the cluster's CA; the
# agent image is pushed there and the kubelet pulls it, as from a user's own registry.
REGISTRY_HOST=$NODE_IP:5000
REGISTRY_REPOSITORY=$REGISTRY_HOST/kubedev

# The namespace that the namespace-scoped test user may work in.
DEV_NAMESPACE=kubedev-dev

PKI_DIR=$STATE_DIR/pki
LOG_DIR=$STATE_DIR/logs
PID_DIR=$STATE_DIR/pids
CONTAINERD_SOCK=$STATE_DIR/containerd/containerd.sock
ADMIN_KUBECONFIG=$STATE_DIR/admin.kubeconfig
DEV_KUBECONFIG=$STATE_DIR/dev.kubeconfig

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
