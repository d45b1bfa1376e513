# The host side of the cluster: packages, the node address, routes, sysctls, and the
# removal of every interface, netns, route, iptables chain and mount the cluster made.
# Tests read command output with `grep -q PATTERN <<<"$(cmd)"`, never `cmd | grep -q`:
# grep -q exits at the first match and, under pipefail, cmd's SIGPIPE would flip the result.

# Sysctls that the harness, the kubelet or kube-proxy may change; restored by `down`.
# Writing net.ipv6.conf.all.forwarding also sets `default` and every interface's.
TRACKED_SYSCTLS=(
    net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
    kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
    net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding
)
SYSCTL_BACKUP=$STATE_DIR/sysctl.before-up
# A copy in the cache, for check-clean to compare with after `down`.
SYSCTLS_BEFORE=$CACHE_DIR/sysctls-before-up

# Paths that containerd, the CNI plugins and the kubelet create outside $STATE_DIR (they
# are compiled in). `up` records which of them already existed, so `down` removes only
# the others; the record lives in the cache so that check-clean can read it after `down`.
HOST_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods /run/netns)
HOST_PATHS_BEFORE=$CACHE_DIR/host-paths-before-up

ensure_packages() {
    # command-or-file => Debian package
    local -A wanted=(
        [containerd]=containerd [runc]=runc [/usr/lib/cni/bridge]=containernetworking-plugins
        [iptables]=iptables [conntrack]=conntrack [openssl]=openssl [jq]=jq [curl]=curl
        [busybox]=busybox-static [ip]=iproute2 [sshfs]=sshfs [fusermount3]=fuse3 [socat]=socat
        [dbus-daemon]=dbus-daemon [skopeo]=skopeo
    )
    local missing=() thing
    for thing in "${!wanted[@]}"; do
        if [[ $thing == /* ]]; then [ -e "$thing" ] && continue
        else command -v "$thing" >/dev/null && continue; fi
        missing+=("${wanted[$thing]}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# systemd-resolved for the tests that run it inside a workstation namespace. Its package is
# unpacked, never installed: installing it would take over this machine's own DNS.
RESOLVED_DIR=$STATE_DIR/systemd-resolved

fetch_resolved() {
    [ -x "$RESOLVED_DIR/systemd-resolved" ] && return 0
    local version deb
    version=$(dpkg-query -W -f '${Version}' systemd)
    deb=$CACHE_DIR/systemd-resolved_${version//:/%3a}_amd64.deb
    if [ ! -f "$deb" ]; then
        log "fetching systemd-resolved $version (unpacked for tests, not installed)"
        mkdir -p "$CACHE_DIR"
        # The same version as the installed systemd, whose shared library it links to;
        # the archive may only hold a newer point release of the same series.
        (cd "$CACHE_DIR" && { apt-get download -qq "systemd-resolved=$version" 2>/dev/null ||
            apt-get download -qq systemd-resolved; }) >/dev/null || die "apt-get download systemd-resolved failed"
        deb=$(ls -t "$CACHE_DIR"/systemd-resolved_*.deb | head -n1)
    fi
    local unpacked
    unpacked=$(mktemp -d)
    dpkg-deb -x "$deb" "$unpacked"
    mkdir -p "$RESOLVED_DIR"
    install -m755 "$unpacked/lib/systemd/systemd-resolved" "$unpacked/usr/bin/resolvectl" "$RESOLVED_DIR/"
    rm -rf "$unpacked"
}

# The ranges that get an `unreachable` route; `ip route` tells the family from the prefix.
CLUSTER_CIDRS=("$POD_CIDR" "$SERVICE_CIDR" "$POD_CIDR6" "$SERVICE_CIDR6")
unreachable_routes() { ip -4 route show type unreachable; ip -6 route show type unreachable; }

host_up() {
    if [ ! -f "$SYSCTL_BACKUP" ]; then
        mkdir -p "$CACHE_DIR"
        local path
        for path in "${HOST_PATHS[@]}"; do [ -e "$path" ] && echo "$path"; done > "$HOST_PATHS_BEFORE"
        local key
        for key in "${TRACKED_SYSCTLS[@]}"; do
            sysctl -n "$key" >/dev/null 2>&1 && echo "$key=$(sysctl -n "$key")"
        done > "$SYSCTL_BACKUP"
        cp "$SYSCTL_BACKUP" "$SYSCTLS_BEFORE"
    fi
    # A packet for a cluster address with no pod or service behind it stops here instead
    # of following the default route off the machine (in place before forwarding is on).
    local cidr
    for cidr in "${CLUSTER_CIDRS[@]}"; do
        grep -qE "^unreachable $cidr( |$)" <<<"$(unreachable_routes)" || ip route add unreachable "$cidr"
    done
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
        net.bridge.bridge-nf-call-ip6tables=1 net.ipv6.conf.all.forwarding=1
    grep -q "inet $NODE_IP/32" <<<"$(ip addr show dev lo)" || ip addr add "$NODE_IP/32" dev lo
    # No duplicate address detection on `lo`: the address is usable at once.
    grep -q "inet6 $NODE_IP6/128" <<<"$(ip -6 addr show dev lo)" || ip addr add "$NODE_IP6/128" dev lo
    # The first `ip netns add` (the tests' workstations) bind-mounts /run/netns onto itself;
    # done while pods run, that hides their network namespaces from containerd, which then
    # cannot remove them and the pods never finish terminating. Make it a mount point now.
    mkdir -p /run/netns
    if ! mountpoint -q /run/netns; then
        mount --bind /run/netns /run/netns
        mount --make-shared /run/netns
    fi
}

# created_host_paths: those of HOST_PATHS that exist now but did not before the first `up`.
created_host_paths() {
    local path
    for path in "${HOST_PATHS[@]}"; do
        [ -e "$path" ] && ! grep -qxF "$path" "$HOST_PATHS_BEFORE" 2>/dev/null && echo "$path"
    done
    return 0
}

# remove_chains TOOL: deletes every KUBE-* and CNI-* chain (and the jumps to them).
remove_chains() {
    local tool=$1 table rule chain
    for table in filter nat mangle raw; do
        "$tool" -t "$table" -S >/dev/null 2>&1 || continue
        # Jumps from the built-in chains first, then flush, then delete.
        while read -r rule; do
            eval "$tool -t $table $rule"
        done < <("$tool" -t "$table" -S | sed -nE 's/^-A ([A-Z]+ .*-j (KUBE|CNI)-)/-D \1/p')
        for chain in $("$tool" -t "$table" -S | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
            "$tool" -t "$table" -F "$chain"
        done
        for chain in $("$tool" -t "$table" -S | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
            "$tool" -t "$table" -X "$chain"
        done
    done
}

# unmount_all DIR: every mount at or under DIR, deepest first, in passes: a mount can hide
# another at the same path (a netns file under /run/netns's own bind mount).
unmount_all() {
    local dir=$1 mount pass
    for pass in 1 2 3 4 5; do
        local mounts
        mounts=$(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
        [ -n "$mounts" ] || return 0
        while read -r mount; do umount -l "$mount" 2>/dev/null || true; done <<<"$mounts"
    done
}

host_down() {
    local ns
    for ns in $(ls /run/netns 2>/dev/null | grep '^cni-' || true); do
        # Best effort: a mount made before /run/netns became a bind mount of itself is
        # hidden under it and is removed with /run/netns below.
        ip netns delete "$ns" 2>/dev/null || { umount -l "/run/netns/$ns" && rm -f "/run/netns/$ns"; } 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
    local cidr
    for cidr in "${CLUSTER_CIDRS[@]}"; do
        ip route del unreachable "$cidr" 2>/dev/null || true
    done
    ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
    ip addr del "$NODE_IP6/128" dev lo 2>/dev/null || true
    remove_chains iptables
    remove_chains ip6tables
    # The kubelet's pod cgroups, leaves first.
    find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice -depth -type d \
        -exec rmdir {} + 2>/dev/null || true
    find /var/log/containers -maxdepth 1 -lname "$STATE_DIR/*" -delete 2>/dev/null || true
    local path
    for path in $(created_host_paths); do
        # `ip netns add` makes /run/netns a mount point of itself.
        unmount_all "$path"
        rm -rf "$path" || log "warning: could not remove $path"
    done
    if [ -f "$SYSCTL_BACKUP" ]; then
        sysctl -qw $(cat "$SYSCTL_BACKUP") >/dev/null 2>&1 || true
    fi
}

# check_clean: lists any trace of the cluster on this machine; exits 1 if there is one.
# The processes the suite's workstations started (tunneld, the plugins, sshfs): named by
# the workstations' directories (kubedev-kdws-*) and mounts (kubedev-NAME:/).
suite_processes() {
    pgrep -d, -f 'kubedev-kdws-|sshfs kubedev-' || true
}

check_clean() {
    local traces=()
    # Once their cluster is gone they end within a minute (every call to the API server
    # gives up on a dead path by then); one still running has hung.
    local waited=0
    while [ -n "$(suite_processes)" ] && [ "$waited" -lt 60 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    [ -n "$(suite_processes)" ] && traces+=("processes of the test workstations: $(suite_processes)")
    local name
    for name in "${COMPONENTS[@]}"; do
        process_alive "$name" && traces+=("process $name")
    done
    pgrep -f "$STATE_DIR" >/dev/null && traces+=("processes using $STATE_DIR: $(pgrep -d, -f "$STATE_DIR")")
    pgrep -x containerd-shim >/dev/null && traces+=("containerd shims")
    ip link show "$BRIDGE" >/dev/null 2>&1 && traces+=("interface $BRIDGE")
    grep -q "master $BRIDGE" <<<"$(ip -o link show)" && traces+=("links enslaved to $BRIDGE")
    grep -q '^cni-' <<<"$(ls /run/netns 2>/dev/null)" && traces+=("network namespace cni-*")
    grep -q "inet $NODE_IP/" <<<"$(ip addr show dev lo)" && traces+=("address $NODE_IP on lo")
    grep -q "inet6 $NODE_IP6/" <<<"$(ip -6 addr show dev lo)" && traces+=("address $NODE_IP6 on lo")
    local cidr
    for cidr in "${CLUSTER_CIDRS[@]}"; do
        grep -qE "^unreachable $cidr( |$)" <<<"$(unreachable_routes)" && traces+=("unreachable route for $cidr")
    done
    local setting
    while IFS='=' read -r name setting; do
        [ "$(sysctl -n "$name" 2>/dev/null)" = "$setting" ] ||
            traces+=("sysctl $name = $(sysctl -n "$name" 2>/dev/null), $setting before the cluster")
    done < <(cat "$SYSCTLS_BEFORE" 2>/dev/null)
    local tool
    for tool in iptables ip6tables; do
        grep -qE '(KUBE|CNI)-' <<<"$("$tool-save" 2>/dev/null)" && traces+=("$tool chains KUBE-*/CNI-*")
    done
    [ -e "$STATE_DIR" ] && traces+=("state directory $STATE_DIR")
    local path
    for path in $(created_host_paths); do traces+=("directory $path"); done
    grep -q " $STATE_DIR" /proc/self/mountinfo && traces+=("mounts under $STATE_DIR")
    grep -q " /run/netns/cni-" /proc/self/mountinfo && traces+=("mounts of pod network namespaces")
    if [ ${#traces[@]} -gt 0 ]; then
        printf 'left behind: %s\n' "${traces[@]}" >&2
        return 1
    fi
    echo "clean: no process, interface, netns, address, route, iptables chain, sysctl or state of the cluster"
}
