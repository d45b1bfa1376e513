//! The cluster's IPv6, next to its IPv4 (the test cluster is dual-stack): the workstation
//! reaches a dual-stack Service and its pods at their IPv6 addresses and by name (AAAA),
//! over TCP and UDP; clients in the cluster that come over IPv6 are intercepted, filtered
//! and replaced as IPv4 ones are; `--to-pod` takes the workstation's IPv6 loopback too.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace, assert_echo};

/// A namespace with the echo app (and its admin sidecar on the pod's localhost) behind a
/// dual-stack Service, and a client pod; what a session may change, as stored.
struct DualStack {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    /// The Service's IPv6 ClusterIP.
    service_ipv6: String,
    /// The echo pod's IPv6 address.
    pod_ipv6: String,
    before: (Value, Value),
}

async fn setup(prefix: &str) -> DualStack {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo_with_admin_sidecar("echo")
        .await
        .expect("echo ready");
    ns.make_dual_stack("echo");
    ns.start_client("client").await.expect("client pod");
    let service = ns.api::<Service>().get("echo").await.expect("service");
    let service_ipv6 = ipv6_of(service.spec.and_then(|s| s.cluster_ips).unwrap_or_default());
    let pods = ns.api::<Pod>();
    let mut pods = pods.list(&ListParams::default().labels("app=echo")).await;
    let pod = pods.as_mut().expect("echo pods").items.remove(0);
    let pod_ips = pod.status.and_then(|s| s.pod_ips).unwrap_or_default();
    let pod_ipv6 = ipv6_of(pod_ips.into_iter().map(|ip| ip.ip).collect());
    let before = stored(&ns).await;
    let workstation = Workstation::create(&cluster);
    DualStack {
        cluster,
        ns,
        workstation,
        service_ipv6,
        pod_ipv6,
        before,
    }
}

/// The one IPv6 address among `addresses`.
fn ipv6_of(addresses: Vec<String>) -> String {
    let mut ipv6 = addresses.iter().filter(|address| address.contains(':'));
    let found = ipv6
        .next()
        .unwrap_or_else(|| panic!("no IPv6 in {addresses:?}"));
    found.clone()
}

/// The echo workload's template and Service spec, as stored.
async fn stored(ns: &TestNamespace) -> (Value, Value) {
    let service = ns.api::<Service>().get("echo").await.expect("service");
    let spec = serde_json::to_value(service.spec).expect("json");
    (ns.echo_template(false).await, spec)
}

impl DualStack {
    fn plugin_ok(&self, plugin: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.workstation.plugin_ok(&self.cluster, plugin, &all)
    }

    /// `request` sent from the client pod to `[ipv6]:port`; the response's body.
    fn request_over_ipv6(&self, port: u16, request: &str) -> String {
        let target = format!("[{}]:{port}", self.service_ipv6);
        let response = self.ns.exec("client", &["probe", "tcp", &target, request]);
        let response = response.unwrap_or_else(|err| panic!("{target}: {err:#}"));
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body);
        body.unwrap_or(&response).trim().to_owned()
    }

    fn get_over_ipv6(&self, path: &str, header: Option<&str>) -> String {
        let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: echo\r\n{extra}Connection: close\r\n\r\n");
        self.request_over_ipv6(8080, &request)
    }
}

#[tokio::test]
async fn the_workstation_reaches_ipv6_services_and_pods_by_name_and_address() {
    let s = setup("ipv6-reach").await;
    let probe = s.cluster.probe();
    let network_before = s.workstation.network_seen_by_all();
    s.plugin_ok("kubectl-intercept", &["connect", "--detach"]);

    // The name has both families' addresses, as in the pod.
    let resolved = s.workstation.run_ok(&[&probe, "resolve", "echo", ""]);
    assert!(resolved.contains(&s.service_ipv6), "{resolved}");
    // A client that asks for IPv6 only (AAAA) reaches the Service by name.
    let by_name = s.workstation.run_ok(&[
        "curl",
        "-6",
        "-sS",
        "--max-time",
        "10",
        "http://echo:8080/over-ipv6",
    ]);
    assert_echo(&by_name, "curl -6 echo");
    assert!(by_name.contains("GET /over-ipv6"), "{by_name}");
    for address in [&s.service_ipv6, &s.pod_ipv6] {
        let target = format!("[{address}]:7000");
        let tcp = s.workstation.run_ok(&[&probe, "tcp", &target, "over ipv6"]);
        assert_echo(&tcp, &target);
        assert!(tcp.trim_end().ends_with("over ipv6"), "{tcp}");
        let target = format!("[{address}]:9000");
        let udp = s.workstation.run_ok(&[&probe, "udp", &target, "ping6"]);
        assert_echo(&udp, &target);
        assert!(udp.trim_end().ends_with(": ping6"), "{udp}");
    }
    let routes = s
        .workstation
        .run_ok(&["ip", "-6", "route", "show", "table", "all"]);
    assert!(
        routes.contains(&format!("{} dev kubedev-tun", "fd4b:6b64:96::/112")),
        "the IPv6 service range is routed: {routes}"
    );
    assert!(
        !routes.contains("multicast ff00::/8 dev kubedev-tun"),
        "the machine's own multicast does not go into the tunnel: {routes}\n{}",
        s.workstation.log()
    );

    s.plugin_ok("kubectl-intercept", &["leave", "--all"]);
    // tunneld exits once its last session has left, and its device and routes go with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.workstation.network_seen_by_all() != network_before {
        assert!(
            Instant::now() < deadline,
            "routes and resolver as they were: {:?}",
            s.workstation.network_seen_by_all()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn clients_over_ipv6_are_intercepted_filtered_and_replaced() {
    let s = setup("ipv6-clients").await;
    let _http = s.workstation.serve_http(3000, "laptop");
    let _udp = s.workstation.serve_udp(9000, "laptop");
    let probe = s.cluster.probe();
    let admin_get = "GET /admin HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";

    s.plugin_ok(
        "kubectl-intercept",
        &[
            "echo",
            "--port",
            "3000:http",
            "--http-header",
            "x-dev=alice",
            "--to-pod",
            "9901",
            "--to-pod",
            "9903",
            "--detach",
        ],
    );
    assert_eq!(
        s.get_over_ipv6("/v6", Some("X-Dev: alice")),
        "local laptop: GET /v6 HTTP/1.1"
    );
    assert_echo(&s.get_over_ipv6("/v6", Some("X-Dev: bob")), "unmatched");
    assert_echo(&s.get_over_ipv6("/v6", None), "no header");
    // The workstation's IPv6 loopback reaches the pod's localhost too, and a server on
    // the pod's IPv6 loopback alone is reached.
    for local in ["[::1]:9901", "127.0.0.1:9903", "[::1]:9903"] {
        let admin = s.workstation.run_ok(&[&probe, "tcp", local, admin_get]);
        assert!(
            admin.contains("echo from echo-") && admin.contains(": GET /admin"),
            "{local}: {admin}"
        );
    }
    s.plugin_ok("kubectl-intercept", &["leave", "echo"]);
    assert_eq!(stored(&s.ns).await, s.before, "restored exactly");

    let replace = ["echo", "-c", "echo", "--port", "3000:http", "--detach"];
    s.plugin_ok("kubectl-replace_container", &replace);
    assert_eq!(
        s.get_over_ipv6("/replaced", None),
        "local laptop: GET /replaced HTTP/1.1"
    );
    let target = format!("[{}]:9000", s.service_ipv6);
    let udp = s.ns.exec("client", &["probe", "udp", &target, "ping6"]);
    assert_eq!(
        udp.expect("UDP over IPv6").trim(),
        "local laptop: ping6",
        "datagrams over IPv6 reach the workstation"
    );
    s.plugin_ok("kubectl-replace_container", &["leave", "echo"]);
    assert_eq!(stored(&s.ns).await, s.before, "restored exactly");
    assert_echo(&s.get_over_ipv6("/after", None), "after leave");
}

#[tokio::test]
async fn a_local_server_on_the_ipv6_loopback_alone_is_pointed_out_then_named() {
    let s = setup("ipv6-local").await;
    // A local server on ::1 alone (as Node.js listens on `localhost`) is pointed out, and
    // gets them with --address [::1]: never without, where another user could listen.
    let at = Ipv6Addr::LOCALHOST.into();
    let _on_ipv6 = s.workstation.serve_http_at(at, 3001, "laptop6");
    let intercept = ["-n", &s.ns.name, "echo", "--port", "3001:http", "--detach"];
    let pointed = s
        .workstation
        .plugin(&s.cluster, "kubectl-intercept", &intercept);
    let said = String::from_utf8_lossy(&pointed.stderr);
    assert!(
        said.contains("a server listens on [::1]:3001: give --address ::1"),
        "{said}"
    );
    assert_echo(
        &s.get_over_ipv6("/not-to-ipv6-loopback", None),
        "127.0.0.1 only",
    );
    s.plugin_ok("kubectl-intercept", &["leave", "echo"]);
    s.plugin_ok(
        "kubectl-intercept",
        &[&intercept[2..], &["--address", "[::1]"]].concat(),
    );
    assert_eq!(
        s.get_over_ipv6("/to-ipv6-loopback", None),
        "local laptop6: GET /to-ipv6-loopback HTTP/1.1"
    );
    s.plugin_ok("kubectl-intercept", &["leave", "echo"]);
    assert_eq!(stored(&s.ns).await, s.before, "restored exactly");
}
