#!/usr/bin/env bash
# `make demo`: kubectl intercept on the local cluster. A "workstation" (a network namespace
# whose only route leads to the API server, as a laptop's would) runs a local HTTP server;
# `kubectl intercept --detach` sends the echo Service's requests to it; a request from a pod
# in the cluster is answered by the workstation; after `kubectl intercept leave` the
# workload is restored and the same request is answered by the app again.
# kubedev runs as the namespace-scoped developer user: no cluster-wide rights are needed.
# The client pod's requests are sent as the cluster's admin, as the sample app was deployed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${KUBEDEV_CLUSTER_DIR:-/var/lib/kubedev-cluster}
namespace=kubedev-dev
admin_kubectl=("$state/bin/kubectl" --kubeconfig "$state/admin.kubeconfig" -n "$namespace")
workstation=kubedev-demo
runtime=$(mktemp -d)
api_server=$(sed -n 's|.*server: https://\([0-9.]*\):.*|\1|p' "$state/dev.kubeconfig" | head -n1)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
echo_server=$repo/target/$(rustc -vV | sed -n 's/^host: //p')/release/echo-server

# kubectl intercept as the developer on the workstation.
intercept=(ip netns exec "$workstation" env
    KUBECONFIG="$state/dev.kubeconfig"
    KUBEDEV_RUNTIME_DIR="$runtime"
    KUBEDEV_TUNNELD="$repo/target/debug/tunneld"
    KUBEDEV_AGENT_IMAGE="$api_server:5000/kubedev/kubedev-agent:$version"
    "$repo/target/debug/kubectl-intercept" -n "$namespace")

cleanup() {
    # A demo stopped half way leaves no session behind.
    if ip netns pids "$workstation" >/dev/null 2>&1; then
        "${intercept[@]}" leave echo >/dev/null 2>&1 || true
    fi
    ip netns pids "$workstation" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip link del kddemo0 2>/dev/null || true
    ip netns del "$workstation" 2>/dev/null || true
    rm -rf "/etc/netns/$workstation" "$runtime"
}
trap cleanup EXIT
cleanup

ip netns add "$workstation"
ip link add kddemo0 type veth peer name kddemo1 netns "$workstation"
ip addr add 10.203.0.1/30 dev kddemo0 && ip link set kddemo0 up
ip -n "$workstation" addr add 10.203.0.2/30 dev kddemo1
ip -n "$workstation" link set kddemo1 up && ip -n "$workstation" link set lo up
ip -n "$workstation" route add "$api_server/32" via 10.203.0.1
mkdir -p "/etc/netns/$workstation"
echo "nameserver 127.0.0.1" > "/etc/netns/$workstation/resolv.conf"

request=("${admin_kubectl[@]}" exec client -- wget -qO- http://echo/hello)
echo "--- a request from the client pod, before:"
"${request[@]}"

echo "--- a server on the workstation, answering as 'your-laptop':"
ip netns exec "$workstation" env HOSTNAME=your-laptop "$echo_server" --http 3000 &
sleep 0.5

echo "--- on the workstation, as the namespace's developer: kubectl intercept echo --port 3000 --detach"
"${intercept[@]}" echo --port 3000 --detach

echo "--- the same request, answered by the workstation:"
"${request[@]}"

echo "--- on the workstation: kubectl intercept leave echo"
"${intercept[@]}" leave echo

echo "--- the same request after the session ended:"
"${request[@]}"
