#!/usr/bin/env bash
# The local test cluster: a real single-node Kubernetes run as plain processes.
#   cluster.sh up      start it (idempotent) and print how to use it
#   cluster.sh down    stop what `up` started and remove everything it created
#   cluster.sh status  say whether it is up
#   cluster.sh check-clean  exit 1, listing them, if any trace of the cluster is left
#   cluster.sh build   only build (or find in the cache) the binaries
#   cluster.sh restart-apiserver  kill -9 the kube-apiserver and start it again, same arguments
#   cluster.sh krew-bin-dir  build (or find in the cache) krew and validate-krew-manifest; print their directory
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/config.sh
source "$here/lib/config.sh"
# shellcheck source=lib/build.sh
source "$here/lib/build.sh"
# shellcheck source=lib/pki.sh
source "$here/lib/pki.sh"
# shellcheck source=lib/images.sh
source "$here/lib/images.sh"
# shellcheck source=lib/host.sh
source "$here/lib/host.sh"
# shellcheck source=lib/components.sh
source "$here/lib/components.sh"

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 2; }

if [ "${1:-}" = krew-bin-dir ]; then
    build_krew && echo "$KREW_BIN"
    exit
fi
[ "$(id -u)" = 0 ] || die "the test cluster needs root (it runs containerd, kubelet and iptables)"

case "${1:-}" in
    build) build_binaries ;;
    up) cluster_up ;;
    down) cluster_down ;;
    status) cluster_status ;;
    check-clean) check_clean ;;
    restart-apiserver) restart_apiserver ;;
    *) usage ;;
esac
