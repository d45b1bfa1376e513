//! The agent in a real pod, reached only through the API server's port-forward: flows
//! from the pod's network to services (by name, ClusterIP) and pods, TCP and UDP, and
//! names resolved as the pod resolves them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use kubedev::tunnel::{OFFERED, PortForwardProtocol, link_through_port_forward, open_port_forward};
use kubedev_protocol::codec::{read_datagram, write_datagram};
use kubedev_protocol::link::AgentLink;
use tests_e2e::{TestCluster, TestNamespace, start_agent_pod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "e2e-agent-token";

/// Connects to the agent, retrying while the container starts listening.
async fn link(client: kube::Client, namespace: &str, pod: &str) -> AgentLink {
    let mut last_error = None;
    for _ in 0..40 {
        match link_through_port_forward(client.clone(), namespace, pod, TOKEN).await {
            Ok((link, _inbound)) => return link,
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "no session with the agent: {:#}",
        last_error.expect("an error")
    );
}

async fn http_get(link: &AgentLink, host: &str, port: u16, path: &str) -> String {
    // A new Service's endpoints reach the node's proxy rules a moment after its pods are
    // ready; until then its ClusterIP refuses ("No route to host").
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut flow = loop {
        match link.open_tcp(host, port).await {
            Ok(flow) => break flow,
            Err(err) if tokio::time::Instant::now() >= deadline => {
                panic!("tcp flow to {host}:{port} opens: {err:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    flow.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    flow.read_to_string(&mut answer).await.expect("answer");
    answer
}

#[tokio::test]
async fn agent_reaches_services_and_pods_through_port_forward() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "agent-tcp").await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_agent("agent", TOKEN).await.expect("agent runs");
    let link = link(ns.client.clone(), &ns.name, "agent").await;
    assert!(link.agent().starts_with("kubedev-agent "));

    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let echo_pod = ns
        .api::<Pod>()
        .list(&kube::api::ListParams::default().labels("app=echo"))
        .await
        .expect("list echo pods")
        .items
        .remove(0);
    let pod_ip = echo_pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    let qualified = format!("echo.{}", ns.name);
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);

    for host in ["echo", &qualified, &fqdn, &cluster_ip, &pod_ip] {
        let answer = http_get(&link, host, 8080, "/via-agent").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
        assert!(
            answer.contains("echo from echo-") && answer.contains("GET /via-agent"),
            "{host}: {answer}"
        );
    }
}

#[tokio::test]
async fn agent_carries_udp_and_resolves_names_like_the_pod() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "agent-udp").await;
    let service = ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_agent("agent", TOKEN).await.expect("agent runs");
    let link = link(ns.client.clone(), &ns.name, "agent").await;
    let cluster_ip: std::net::IpAddr = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster IP")
        .parse()
        .expect("an IP");

    for name in [
        "echo".to_owned(),
        format!("echo.{}", ns.name),
        format!("echo.{}.svc.cluster.local", ns.name),
    ] {
        let addresses = link.resolve(&name).await.expect("resolves");
        assert_eq!(addresses, vec![cluster_ip], "{name}");
    }
    let kubernetes = link.resolve("kubernetes.default").await.expect("resolves");
    assert_eq!(
        kubernetes,
        vec!["10.96.0.1".parse::<std::net::IpAddr>().expect("ip")]
    );

    // A new Service's UDP rules reach the node's proxy a moment after its pods are ready;
    // until then a datagram is refused or lost, as any UDP client sees: ask again.
    let mut buf = [0u8; 65535];
    let mut answered = None;
    for _ in 0..20 {
        let mut flow = link.open_udp("echo", 9000).await.expect("udp flow opens");
        write_datagram(&mut flow, b"ping over the tunnel")
            .await
            .expect("send");
        let read = read_datagram(&mut flow, &mut buf);
        if let Ok(Ok(Some(len))) = tokio::time::timeout(Duration::from_secs(1), read).await {
            answered = Some(len);
            break;
        }
    }
    let len = answered.expect("a datagram answered");
    let answer = String::from_utf8_lossy(&buf[..len]);
    assert!(
        answer.starts_with("echo from echo-") && answer.ends_with(": ping over the tunnel"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_developer_with_namespace_rights_only_reaches_the_agent() {
    let cluster = TestCluster::get();
    let namespace = "kubedev-dev";
    let pod = format!("agent-{}", std::process::id());
    let admin = cluster.admin_client().await;
    let pods: Api<Pod> = Api::namespaced(admin, namespace);
    start_agent_pod(&pods, &pod, TOKEN)
        .await
        .expect("agent runs");

    let kubeconfig =
        kube::config::Kubeconfig::read_from(&cluster.dev_kubeconfig).expect("dev kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let developer = kube::Client::try_from(config).expect("client");
    let link = link(developer, namespace, &pod).await;
    let addresses = link.resolve("kubernetes.default.svc.cluster.local").await;

    let _ = pods.delete(&pod, &DeleteParams::default()).await;
    assert_eq!(
        addresses.expect("resolves"),
        vec!["10.96.0.1".parse::<std::net::IpAddr>().expect("ip")]
    );
}

#[tokio::test]
async fn many_concurrent_flows_share_one_port_forward() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "agent-many").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_agent("agent", TOKEN).await.expect("agent runs");
    let link = link(ns.client.clone(), &ns.name, "agent").await;

    let flows = (0..100).map(|i| {
        let link = link.clone();
        async move { http_get(&link, "echo", 8080, &format!("/flow-{i}")).await }
    });
    let answers = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(flows))
        .await
        .expect("every flow finishes");
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            answer.contains(&format!("GET /flow-{i}")),
            "flow {i}: {answer}"
        );
    }
}

/// A port-forward carries a connection's bytes both ways in either protocol the API server
/// may choose, and with both offered this API server (1.35) chooses SPDY in the websocket.
#[tokio::test]
async fn port_forward_carries_bytes_in_either_protocol() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "agent-protocols").await;
    ns.run_echo_pod("echo").await.expect("echo ready");
    let offers = [
        (&OFFERED[..], PortForwardProtocol::SpdyInWebsocket),
        (
            &[PortForwardProtocol::Channels][..],
            PortForwardProtocol::Channels,
        ),
    ];
    for (offered, expected) in offers {
        let forward = open_port_forward(&ns.client, &ns.name, "echo", 7000, offered)
            .await
            .expect("port-forward opens");
        assert_eq!(forward.protocol, expected);
        // 4 MiB each way through the pod's TCP echo (a greeting line, then what it gets),
        // written while it is read back.
        let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut from_pod, mut to_pod) = tokio::io::split(forward.stream);
        let writing = async { to_pod.write_all(&sent).await.expect("send") };
        let mut echoed = Vec::new();
        let reading = async {
            let mut chunk = vec![0; 64 * 1024];
            while echoed.len() < sent.len() + greeting_len(&echoed) {
                let len = from_pod.read(&mut chunk).await.expect("echo");
                assert!(
                    len > 0,
                    "{expected:?}: the echo ended after {} bytes",
                    echoed.len()
                );
                echoed.extend_from_slice(&chunk[..len]);
            }
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            futures::future::join(writing, reading),
        )
        .await
        .expect("the echo finishes");
        let echoed = &echoed[greeting_len(&echoed)..];
        let first_difference = echoed.iter().zip(&sent).position(|(a, b)| a != b);
        assert_eq!(
            (echoed.len(), first_difference),
            (sent.len(), None),
            "{expected:?}: the bytes came back as sent"
        );
    }
}

/// The length of the echo's greeting line at the start of `echoed`, once it has come.
fn greeting_len(echoed: &[u8]) -> usize {
    echoed
        .iter()
        .position(|&byte| byte == b'\n')
        .map_or(usize::MAX / 2, |end| end + 1)
}

/// Nothing listening on the port: the runtime's report ends the stream, in either protocol.
#[tokio::test]
async fn a_port_nothing_listens_on_ends_the_port_forward() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "agent-refused").await;
    ns.run_echo_pod("echo").await.expect("echo ready");
    for offered in [&OFFERED[..], &[PortForwardProtocol::Channels][..]] {
        let forward = open_port_forward(&ns.client, &ns.name, "echo", 7999, offered)
            .await
            .expect("port-forward opens");
        let mut stream = forward.stream;
        stream.write_all(b"anyone?").await.ok();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("the port-forward ends");
        assert!(
            read.is_err() || answer.is_empty(),
            "{:?}: nothing answers, got {answer:?}",
            forward.protocol
        );
    }
}
