//! The cluster's network on a workstation: a network namespace whose only route leads to
//! the API server runs tunneld, and reaches services and pods by name and address, over
//! TCP and UDP, through agents reached by port-forward.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kubedev::control::NetworkStatus;
use tests_e2e::workstation::{ORIGINAL_RESOLV_CONF, Workstation};
use tests_e2e::{TestCluster, TestNamespace, assert_echo};

const TOKEN: &str = "e2e-network-token";
const AGENTS: &str = "app=kubedev-agent";
/// More than every buffer on the way can hold: a stalled flow never gets this far.
const STALLED_LIMIT: usize = 256 * 1024 * 1024;

/// A namespace with the echo service and an agent Deployment, and a workstation whose
/// tunneld is linked to the agent.
async fn setup(prefix: &str) -> (TestCluster, TestNamespace, Workstation, String) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.deploy_agents("kubedev-agent", 1, TOKEN)
        .await
        .expect("agent ready");
    let mut workstation = Workstation::create(&cluster);
    workstation
        .start_tunneld(&cluster, &ns.name, AGENTS, TOKEN)
        .await;
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    (cluster, ns, workstation, cluster_ip)
}

/// Asks `server` for `name`'s IPv4 addresses over TCP.
fn resolve_over_tcp(server: &str, name: &str) -> Vec<String> {
    let mut query = Message::query();
    query.metadata.id = 7;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(format!("{name}.")).expect("name"),
        RecordType::A,
    ));
    let query = query.to_vec().expect("encode query");
    let mut stream = TcpStream::connect((server, 53)).expect("connect to the DNS server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let len = u16::try_from(query.len()).expect("small query");
    stream.write_all(&len.to_be_bytes()).expect("send");
    stream.write_all(&query).expect("send");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("answer length");
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).expect("answer");
    let answer = Message::from_vec(&answer).expect("valid answer");
    assert_eq!(answer.metadata.id, 7);
    answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(address) => Some(address.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn workstation_reaches_services_and_pods_by_name_and_address() {
    let (cluster, ns, workstation, cluster_ip) = setup("net-reach").await;
    let pod_ip = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=echo"))
        .await
        .expect("echo pods")
        .items[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");

    let qualified = format!("echo.{}", ns.name);
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);
    for host in ["echo", &qualified, &fqdn, &cluster_ip, &pod_ip] {
        let url = format!("http://{host}:8080/from-workstation");
        let answer = workstation.run_ok(&["curl", "-sS", "--max-time", "10", &url]);
        assert_echo(&answer, &url);
        assert!(answer.contains("GET /from-workstation"), "{answer}");
    }

    // A program that closes its sending side first still gets the whole answer.
    let half_closed = workstation.run_ok(&[
        &cluster.probe(),
        "tcp",
        "echo:7000",
        "sent, then half-closed",
    ]);
    assert_echo(&half_closed, "tcp echo after half-close");
    assert!(
        half_closed.trim_end().ends_with("sent, then half-closed"),
        "{half_closed}"
    );

    // Names resolve as in the pod, through the workstation's ordinary resolver.
    let probe = cluster.probe();
    for name in ["echo", qualified.as_str(), fqdn.as_str()] {
        let resolved = workstation.run_ok(&[&probe, "resolve", name, ""]);
        assert_eq!(resolved.trim(), cluster_ip, "{name}");
    }
    // Over TCP too, which resolvers fall back to for large answers.
    let NetworkStatus::Up { dns, .. } = workstation.status().await.network else {
        panic!("the network is up");
    };
    let name = fqdn.clone();
    let over_tcp = workstation.inside(move || resolve_over_tcp(&dns, &name));
    assert_eq!(
        over_tcp,
        std::slice::from_ref(&cluster_ip),
        "{fqdn} over TCP"
    );

    // Names outside the cluster still go to the workstation's own nameserver.
    let outside = workstation.run(&[&probe, "resolve", "example.com", ""]);
    assert!(
        !outside.status.success(),
        "no answer for outside names here"
    );

    for target in ["echo:9000".to_owned(), format!("{cluster_ip}:9000")] {
        let answer = workstation.run_ok(&[&probe, "udp", &target, "datagram from the workstation"]);
        assert_echo(&answer, &target);
        assert!(
            answer
                .trim_end()
                .ends_with(": datagram from the workstation"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn tunnel_follows_a_restarted_agent_pod() {
    let (_cluster, ns, workstation, _) = setup("net-restart").await;
    let pods = ns.api::<Pod>();
    let old = pods
        .list(&ListParams::default().labels(AGENTS))
        .await
        .expect("agents")
        .items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    pods.delete(&old, &DeleteParams::default())
        .await
        .expect("delete agent pod");

    // The Deployment makes a new pod; tunneld links to it and drops the old one.
    workstation.wait_for_log(
        &format!("link to pod {}/{old} dropped", ns.name),
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let new = loop {
        let running: Vec<String> = pods
            .list(&ListParams::default().labels(AGENTS))
            .await
            .expect("agents")
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .filter(|name| *name != old)
            .collect();
        if let Some(name) = running.into_iter().next() {
            break name;
        }
        assert!(Instant::now() < deadline, "no new agent pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    workstation.wait_for_log(
        &format!("in pod {}/{new}", ns.name),
        Duration::from_secs(60),
    );
    let answer = workstation.run_ok(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://echo:8080/after-restart",
    ]);
    assert_echo(&answer, "echo after the agent restarted");
}

#[tokio::test]
async fn a_stalled_flow_does_not_stall_199_others() {
    let (_cluster, _ns, workstation, cluster_ip) = setup("net-stall").await;
    let (stalled_bytes, answers) = workstation.inside(move || {
        // One connection to the TCP echo port that sends without ever reading: the echo
        // pod's answers back up all the way to this socket, and its writer blocks.
        let stalled =
            TcpStream::connect((cluster_ip.as_str(), 7000)).expect("connect stalled flow");
        let mut writer = stalled.try_clone().expect("clone");
        let filler = std::thread::spawn(move || {
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < STALLED_LIMIT && writer.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sent
        });
        std::thread::sleep(Duration::from_secs(2));

        let flows: Vec<_> = (0..199)
            .map(|_| {
                let target = cluster_ip.clone();
                std::thread::spawn(move || {
                    let mut flow = TcpStream::connect((target.as_str(), 8080)).expect("connect");
                    flow.set_read_timeout(Some(Duration::from_secs(60)))
                        .expect("timeout");
                    let request =
                        b"GET /one-of-many HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
                    flow.write_all(request).expect("send");
                    let mut answer = String::new();
                    flow.read_to_string(&mut answer).expect("answer");
                    answer
                })
            })
            .collect();
        let answers: Vec<String> = flows.into_iter().map(|f| f.join().expect("flow")).collect();
        stalled
            .shutdown(Shutdown::Both)
            .expect("end the stalled flow");
        (filler.join().expect("filler"), answers)
    });
    assert!(
        stalled_bytes < STALLED_LIMIT,
        "the stalled flow was held back ({stalled_bytes} bytes accepted), not buffered without bound"
    );
    assert_eq!(answers.len(), 199);
    for answer in &answers {
        assert!(
            answer.contains("echo from echo-") && answer.contains("GET /one-of-many"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn tunneld_reports_its_sessions_and_exits_when_the_last_one_leaves() {
    let (_cluster, ns, mut workstation, _) = setup("net-leave").await;
    let status = workstation.status().await;
    assert!(
        matches!(&status.network, NetworkStatus::Up { resolver, .. } if resolver.to_string() == "/etc/resolv.conf"),
        "{status:?}"
    );
    assert_eq!(status.sessions.len(), 1);
    assert_eq!(status.sessions[0].namespace, ns.name);
    assert_eq!(status.sessions[0].linked_pods.len(), 1, "{status:?}");
    assert!(workstation.resolv_conf().contains("nameserver 198.18.0.53"));
    assert!(workstation.run_ok(&["ip", "route"]).contains("kubedev-tun"));

    workstation.remove_session().await;
    workstation.wait_for_tunneld_exit(Duration::from_secs(30));
    assert_eq!(workstation.resolv_conf(), ORIGINAL_RESOLV_CONF);
    let routes = workstation.run_ok(&["ip", "route"]);
    assert!(!routes.contains("kubedev-tun"), "{routes}");
    let links = workstation.run_ok(&["ip", "link"]);
    assert!(!links.contains("kubedev-tun"), "{links}");
}

#[tokio::test]
async fn where_systemd_resolved_runs_cluster_names_go_through_it() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "net-resolved").await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.deploy_agents("kubedev-agent", 1, TOKEN)
        .await
        .expect("agent ready");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let mut workstation = Workstation::create(&cluster);
    workstation.start_systemd_resolved(&cluster);
    let resolv_conf_before = workstation.resolv_conf();
    workstation
        .start_tunneld(&cluster, &ns.name, AGENTS, TOKEN)
        .await;

    let status = workstation.status().await;
    // The kernel numbered the device: every tunneld on a machine gets one of its own.
    let device = match &status.network {
        NetworkStatus::Up { resolver, .. } => resolver
            .to_string()
            .strip_prefix("systemd-resolved, link ")
            .map(str::to_owned),
        _ => None,
    }
    .unwrap_or_else(|| panic!("resolved's link in {status:?}"));
    assert!(device.starts_with("kubedev-tun"), "{device}");
    assert_eq!(
        workstation.resolv_conf(),
        resolv_conf_before,
        "resolv.conf is left to systemd-resolved"
    );
    let link = workstation.resolvectl(&["status", &device]);
    // resolvectl wraps long lines.
    let link = String::from_utf8_lossy(&link.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let search = format!(
        "{}.svc.cluster.local svc.cluster.local cluster.local",
        ns.name
    );
    assert!(link.contains(&format!("DNS Domain: {search}")), "{link}");
    assert!(link.contains("Current Scopes: DNS"), "{link}");
    assert!(link.contains("DNS Servers: 198.18.0.53"), "{link}");

    // resolv.conf follows resolved's stub file, as its usual symlink does: the search
    // domains tunneld gave resolved are there for short names.
    let stub = workstation.follow_resolved_stub_file();
    assert!(stub.contains(&format!("search {search}")), "{stub}");
    let probe = cluster.probe();
    let qualified = format!("echo.{}", ns.name);
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);
    for name in ["echo", qualified.as_str(), fqdn.as_str()] {
        let resolved = workstation.run_ok(&[&probe, "resolve", name, ""]);
        assert_eq!(resolved.trim(), cluster_ip, "{name}");
    }
    let answer = workstation.run_ok(&["curl", "-sS", "--max-time", "10", "http://echo:8080/"]);
    assert_echo(&answer, "http://echo:8080/ through systemd-resolved");

    // The link and its settings go away with tunneld.
    workstation.remove_session().await;
    workstation.wait_for_tunneld_exit(Duration::from_secs(30));
    let links = workstation.resolvectl(&["status"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("kubedev-tun"), "{links}");
    assert!(!links.contains("198.18.0.53"), "{links}");
}
