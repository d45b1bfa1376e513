//! Routes and DNS where users are: on a node of the cluster (tunneld in the host's own
//! network namespace, as a k3s user runs it), and on a workstation whose VPN has a route
//! overlapping the cluster's. tunneld never changes a route it did not create, never
//! points the node's pods at itself, and leaves the machine exactly as it was.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kubedev::control::{DaemonStatus, NetworkStatus, RangeState, RangeStatus, ResolverStatus};
use tests_e2e::node::{self, NodeShell};
use tests_e2e::workstation::{ORIGINAL_RESOLV_CONF, Workstation};
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-ingest";
/// What the test cluster routes (tests/cluster/lib/config.sh).
const SERVICE_RANGE: &str = "10.96.0.0/16";
const NODE_POD_RANGE: &str = "10.244.0.0/24";
/// An idle tunneld exits after this long, and a little.
const TUNNELD_EXIT: Duration = Duration::from_secs(60);

/// The tests here compare the host's routes before and after: none may run while another
/// adds links to the host (every workstation has a veth there).
static HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The arguments of an ingest session on `workload` without volumes, then `more`.
fn session<'a>(workload: &'a str, ns: &'a TestNamespace, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![workload, "-n", &ns.name, "--mount", "false"];
    args.extend_from_slice(more);
    args
}

fn range<'a>(status: &'a DaemonStatus, cidr: &str) -> &'a RangeStatus {
    let NetworkStatus::Up { ranges, .. } = &status.network else {
        panic!("the cluster network is up: {status:?}");
    };
    ranges
        .iter()
        .find(|r| r.range.to_string() == cidr)
        .unwrap_or_else(|| panic!("no range {cidr} in {ranges:?}"))
}

fn resolver(status: &DaemonStatus) -> &ResolverStatus {
    match &status.network {
        NetworkStatus::Up { resolver, .. } => resolver,
        other => panic!("the cluster network is up: {other:?}"),
    }
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn pod_ip(ns: &TestNamespace, labels: &str) -> String {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(labels))
        .await
        .expect("pods")
        .items
        .into_iter()
        .find_map(|pod| pod.status?.pod_ip)
        .expect("a pod IP")
}

/// The /etc/resolv.conf the kubelet gives a pod started now with `dnsPolicy: Default`.
async fn resolver_of_a_new_default_dns_pod(ns: &TestNamespace) -> String {
    ns.start_client_with_dns("default-dns", "Default")
        .await
        .expect("client");
    ns.exec("default-dns", &["cat", "/etc/resolv.conf"])
        .expect("its resolv.conf")
}

fn assert_coredns_ready(cluster: &TestCluster) {
    let ready = cluster
        .kubectl_ok(&[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .expect("CoreDNS pods");
    assert_eq!(ready, "True", "CoreDNS is ready");
}

#[tokio::test]
async fn on_a_node_the_node_keeps_its_routes_its_pods_and_its_dns() {
    let _host = HOST.lock().await;
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "node").await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    ns.start_client("client").await.expect("client");
    let before = node::machine_routes();
    let shell = NodeShell::create(None);
    // As a developer who may also read the nodes, so that tunneld routes each node's
    // podCIDR exactly (the namespace Role alone routes a /16 around the pods' IPs).
    let admin = cluster.admin_kubeconfig.display().to_string();
    let as_admin = ["--kubeconfig", admin.as_str()];
    let detached = session("echo", &ns, &[&["--detach"][..], &as_admin].concat());

    let (_, said) = shell.plugin_ok(&cluster, PLUGIN, &detached);
    assert!(
        said.contains(&format!(
            "not routed to the cluster: {NODE_POD_RANGE} (this machine's route \
             {NODE_POD_RANGE} dev kubedev0)"
        )),
        "{said}"
    );
    let status = shell.status(&cluster, PLUGIN, &as_admin);
    let status = status.expect("tunneld runs");
    let pods = range(&status, NODE_POD_RANGE);
    assert_eq!(pods.state, RangeState::Machine, "{pods:?}");
    assert_eq!(
        pods.via.as_deref(),
        Some("10.244.0.0/24 dev kubedev0"),
        "{pods:?}"
    );
    let services = range(&status, SERVICE_RANGE);
    assert_eq!(services.state, RangeState::Routed, "{services:?}");
    assert!(
        services.reason.contains("unreachable 10.96.0.0/16"),
        "{services:?}"
    );
    // Every route the machine had is still there as it was: tunneld only added its own.
    let during = node::machine_routes();
    assert_eq!(node::without_device(&during, "kubedev-tun"), before);
    assert!(during.contains("10.96.0.0/17 dev kubedev-tun"), "{during}");

    the_node_s_pods_still_work(&cluster, &ns, &cluster_ip).await;
    the_node_itself_reaches_services_and_pods(&cluster, &shell, &ns, status.pid, &cluster_ip).await;

    // kill -9: the routes go with the TUN device at once; the resolver file is put back
    // by the next tunneld.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(status.pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill tunneld");
    node::wait_for_exit(status.pid, Duration::from_secs(10));
    assert_eq!(node::machine_routes(), before);
    assert!(shell.resolv_conf().contains("nameserver 198.18.0.53"));
    let leave = [&["leave", "echo", "-n", &ns.name][..], &as_admin].concat();
    shell.plugin_ok(&cluster, PLUGIN, &leave);
    shell.plugin_ok(&cluster, PLUGIN, &detached);
    let restarted = shell
        .status(&cluster, PLUGIN, &as_admin)
        .expect("tunneld runs");
    assert!(
        shell
            .tunneld_log()
            .contains("restoring /etc/resolv.conf left changed by an earlier run"),
        "{}",
        shell.tunneld_log()
    );
    shell.plugin_ok(&cluster, PLUGIN, &leave);
    node::wait_for_exit(restarted.pid, TUNNELD_EXIT);

    assert_eq!(node::machine_routes(), before);
    assert_eq!(shell.resolv_conf(), ORIGINAL_RESOLV_CONF);
    let answer = ns
        .http_get("client", "echo:8080", "/after")
        .expect("by name");
    assert!(answer.starts_with("echo from echo-"), "{answer}");
    assert_coredns_ready(&cluster);
}

/// The node's pods, while tunneld runs on it: services by name, CoreDNS, pods started now
/// with the kubelet's resolver file, untouched.
async fn the_node_s_pods_still_work(cluster: &TestCluster, ns: &TestNamespace, cluster_ip: &str) {
    let answer = ns
        .http_get("client", "echo:8080", "/during")
        .expect("by name");
    assert!(answer.starts_with("echo from echo-"), "{answer}");
    assert_coredns_ready(cluster);
    ns.start_client("started-during").await.expect("client");
    let resolved = ns
        .exec("started-during", &["probe", "resolve", "echo", ""])
        .expect("resolve");
    assert_eq!(resolved.trim(), cluster_ip);
    let handed_out = resolver_of_a_new_default_dns_pod(ns).await;
    let kubelets =
        std::fs::read_to_string(cluster.dir.join("kubelet/resolv.conf")).expect("kubelet's");
    assert_eq!(handed_out, kubelets, "the kubelet's file, untouched");
}

/// The node itself: services by name through tunneld's DNS, pods on its bridge.
async fn the_node_itself_reaches_services_and_pods(
    cluster: &TestCluster,
    shell: &NodeShell,
    ns: &TestNamespace,
    tunneld_pid: u32,
    cluster_ip: &str,
) {
    let qualified = format!("echo.{}", ns.name);
    let resolved = stdout(
        &shell.in_tunneld_mounts(tunneld_pid, &[&cluster.probe(), "resolve", &qualified, ""]),
    );
    assert_eq!(resolved.trim(), cluster_ip);
    let url = format!("http://{qualified}:8080/from-the-node");
    let answer =
        stdout(&shell.in_tunneld_mounts(tunneld_pid, &["curl", "-sS", "--max-time", "10", &url]));
    assert!(answer.contains("GET /from-the-node"), "{answer}");
    let pod_url = format!("http://{}:8080/to-a-pod", pod_ip(ns, "app=echo").await);
    let answer = stdout(
        &std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", &pod_url])
            .output()
            .expect("curl"),
    );
    assert!(answer.contains("GET /to-a-pod"), "{answer}");
}

#[tokio::test]
async fn on_a_node_whose_kubelet_hands_the_resolver_file_to_pods_it_is_left_alone() {
    let _host = HOST.lock().await;
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "node-dns").await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    ns.deploy_echo("other", 1).await.expect("other ready");
    let before = node::machine_routes();
    // The machine's resolver is the very file the kubelet gives pods, as on a k3s or
    // kubeadm node without systemd-resolved.
    let kubelets = cluster.dir.join("kubelet/resolv.conf");
    let original = std::fs::read_to_string(&kubelets).expect("kubelet's resolv.conf");
    let shell = NodeShell::create(Some(kubelets.clone()));

    let (_, said) = shell.plugin_ok(&cluster, PLUGIN, &session("echo", &ns, &["--detach"]));
    assert!(
        said.contains("this machine's DNS settings are left as they are"),
        "{said}"
    );
    let status = shell.status(&cluster, PLUGIN, &[]).expect("tunneld runs");
    let ResolverStatus::Unchanged { reason, .. } = resolver(&status) else {
        panic!("the resolver is left as it is: {status:?}");
    };
    assert!(
        reason.starts_with("the kubelet on this machine")
            && reason.ends_with(&format!("hands {} to its pods", kubelets.display())),
        "{reason}"
    );
    assert_eq!(std::fs::read_to_string(&kubelets).expect("read"), original);
    assert_eq!(resolver_of_a_new_default_dns_pod(&ns).await, original);

    // The developer's own command still gets the cluster's names.
    let qualified = format!("echo.{}", ns.name);
    let probe = cluster.probe();
    let command = ["--", &probe, "resolve", &qualified, ""];
    let (resolved, _) = shell.plugin_ok(&cluster, PLUGIN, &session("other", &ns, &command));
    assert_eq!(resolved.trim(), cluster_ip);
    assert_eq!(std::fs::read_to_string(&kubelets).expect("read"), original);

    shell.plugin_ok(&cluster, PLUGIN, &["leave", "echo", "-n", &ns.name]);
    node::wait_for_exit(status.pid, TUNNELD_EXIT);
    assert_eq!(std::fs::read_to_string(&kubelets).expect("read"), original);
    assert_eq!(node::machine_routes(), before);
}

#[tokio::test]
async fn a_vpn_route_over_the_service_range_is_respected_unless_the_user_says_otherwise() {
    let _host = HOST.lock().await;
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "vpn").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.deploy_echo("other", 1).await.expect("other ready");
    let workstation = Workstation::create(&cluster);
    add_a_vpn(&workstation);
    let routes = || {
        workstation.run_ok(&["ip", "route", "show", "table", "all"])
            + &workstation.run_ok(&["ip", "rule", "show"])
    };
    let before = routes();
    // As a developer who may also read the nodes (see the node test), throughout: one
    // identity, one tunneld.
    let admin = cluster.admin_kubeconfig.display().to_string();
    let as_admin = ["--kubeconfig", admin.as_str()];
    let status = || -> DaemonStatus {
        let asked = [&["status", "-o", "json"][..], &as_admin].concat();
        let json = workstation.plugin_ok(&cluster, PLUGIN, &asked);
        serde_json::from_str(&json).expect("status as JSON")
    };

    let never = ["--detach", "--never-proxy", "10.244.0.0/16"];
    let first = session("echo", &ns, &[&never[..], &as_admin].concat());
    let output = workstation.plugin(&cluster, PLUGIN, &first);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("10.96.0.0/16 (this machine's route 10.96.0.0/16 dev vpn0)"),
        "{said}"
    );
    let during = status();
    let services = range(&during, SERVICE_RANGE);
    assert_eq!(services.state, RangeState::Machine, "{services:?}");
    assert_eq!(services.via.as_deref(), Some("10.96.0.0/16 dev vpn0"));
    let pods = range(&during, NODE_POD_RANGE);
    assert_eq!(pods.state, RangeState::Excluded, "{pods:?}");
    assert_eq!(pods.reason, "--never-proxy");
    let unrouted = workstation.run(&["ip", "route", "get", &pod_ip(&ns, "app=echo").await]);
    assert!(!unrouted.status.success(), "a pod IP has no route");
    assert_eq!(node::without_device(&routes(), "kubedev-tun"), before);

    // Another session asks for the service range anyway: tunneld routes it past the VPN's
    // route, which stays as it is.
    let also = [
        "--detach",
        "--also-proxy",
        SERVICE_RANGE,
        as_admin[0],
        as_admin[1],
    ];
    workstation.plugin_ok(&cluster, PLUGIN, &session("other", &ns, &also));
    let forced = status();
    let services = range(&forced, SERVICE_RANGE);
    assert_eq!(services.state, RangeState::Routed, "{services:?}");
    assert_eq!(services.reason, "--also-proxy");
    assert_eq!(range(&forced, NODE_POD_RANGE).state, RangeState::Excluded);
    let url = format!("http://echo.{}:8080/past-the-vpn", ns.name);
    let answer = workstation.run_ok(&["curl", "-sS", "--max-time", "10", &url]);
    assert!(answer.contains("GET /past-the-vpn"), "{answer}");
    assert_eq!(node::without_device(&routes(), "kubedev-tun"), before);

    // The VPN adds a route while the sessions run: it stays after them.
    workstation.run_ok(&["ip", "route", "add", "10.99.0.0/16", "dev", "vpn0"]);
    let with_new_route = node::without_device(&routes(), "kubedev-tun");

    for session in ["echo", "other"] {
        let leave = [&["leave", session, "-n", &ns.name][..], &as_admin].concat();
        workstation.plugin_ok(&cluster, PLUGIN, &leave);
    }
    node::wait_for_exit(forced.pid, TUNNELD_EXIT);
    assert_eq!(routes(), with_new_route, "the VPN's routes are untouched");
    workstation.run_ok(&["ip", "route", "del", "10.99.0.0/16", "dev", "vpn0"]);
    assert_eq!(routes(), before);
    assert_eq!(workstation.resolv_conf(), ORIGINAL_RESOLV_CONF);
}

/// A VPN on the workstation that routes the cluster's service range to its own device;
/// returns once the new links' addresses have settled.
fn add_a_vpn(workstation: &Workstation) {
    for command in [
        &[
            "ip", "link", "add", "vpn0", "type", "veth", "peer", "name", "vpn1",
        ][..],
        &["ip", "link", "set", "vpn0", "up"],
        &["ip", "link", "set", "vpn1", "up"],
        &["ip", "route", "add", SERVICE_RANGE, "dev", "vpn0"],
    ] {
        workstation.run_ok(command);
    }
    // New links' IPv6 addresses reach the local table once duplicate address detection
    // has passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !workstation
        .run_ok(&["ip", "-6", "addr", "show", "tentative"])
        .trim()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "addresses settle");
        std::thread::sleep(Duration::from_millis(200));
    }
}
