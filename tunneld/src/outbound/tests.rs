use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::network::dns::search_path;
use crate::test_agent::{
    add_link_to, echo_server, linked_pool, linked_pool_at, linked_pool_with_links,
};
use kubedev_protocol::udp_flows::UdpFlows;

fn range(text: &str) -> Cidr {
    kubedev::cidr::parse(text).expect("range")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn routing() -> Routing {
    Routing {
        cluster: vec![
            range("10.96.0.0/16"),
            range("10.244.0.0/16"),
            range("fd4b:96::/112"),
        ],
        choices: ProxyChoices {
            also_proxy: vec![range("192.168.50.0/24")],
            never_proxy: vec![range("10.244.7.0/24"), range("192.168.50.9")],
        },
        search: search_path("cluster.local", "shop"),
    }
}

#[test]
fn the_clusters_ranges_and_also_proxy_leave_through_the_cluster_unless_never_proxy() {
    let routing = routing();
    assert_eq!(routing.leaves(ip("10.96.0.10")), Leaves::Cluster);
    assert_eq!(routing.leaves(ip("10.244.3.4")), Leaves::Cluster);
    assert_eq!(routing.leaves(ip("192.168.50.3")), Leaves::Cluster);
    assert_eq!(routing.leaves(ip("10.244.7.1")), Leaves::Workstation);
    assert_eq!(routing.leaves(ip("192.168.50.9")), Leaves::Workstation);
    assert_eq!(routing.leaves(ip("93.184.216.34")), Leaves::Workstation);
    assert_eq!(routing.leaves(ip("127.0.0.1")), Leaves::Workstation);
    assert_eq!(routing.leaves(ip("fd00::1")), Leaves::Workstation);
    assert_eq!(routing.leaves(ip("fd4b:96::a")), Leaves::Cluster);
    // IPv4 written as IPv6 is IPv4.
    assert_eq!(routing.leaves(ip("::ffff:10.96.0.10")), Leaves::Cluster);
    assert_eq!(routing.leaves(ip("::ffff:10.244.7.1")), Leaves::Workstation);
    // Before the first session nothing is known of the cluster.
    assert_eq!(
        Routing::default().leaves(ip("10.96.0.10")),
        Leaves::Workstation
    );
}

#[test]
fn what_the_clusters_dns_answered_leaves_through_the_cluster_unless_never_proxy() {
    let routing = routing();
    let external = ip("203.0.113.7");
    assert_eq!(
        routing.leaves_answered(external, Leaves::Cluster),
        Leaves::Cluster
    );
    assert_eq!(
        routing.leaves_answered(external, Leaves::Workstation),
        Leaves::Workstation
    );
    assert_eq!(
        routing.leaves_answered(ip("10.244.7.1"), Leaves::Cluster),
        Leaves::Workstation
    );
}

#[test]
fn hosts_are_addresses_or_names() {
    assert_eq!(Host::parse("10.96.0.10"), Host::Address(ip("10.96.0.10")));
    assert_eq!(Host::parse("[fd00::1]"), Host::Address(ip("fd00::1")));
    assert_eq!(Host::parse("fd00::1"), Host::Address(ip("fd00::1")));
    assert_eq!(Host::parse("web.shop"), Host::Name("web.shop".into()));
    assert_eq!(Host::parse("web.shop").to_string(), "web.shop");
}

#[test]
fn only_cluster_names_and_short_names_along_the_search_path_are_asked_of_the_cluster() {
    let dns = DnsAnswerer::new(Arc::new(AgentPool::default()), "cluster.local", None);
    let search = search_path("cluster.local", "shop");
    let candidates = |name: &str| cluster_candidates(&dns, name, &search);
    assert_eq!(
        candidates("web"),
        [
            "web.shop.svc.cluster.local.",
            "web.svc.cluster.local.",
            "web.cluster.local."
        ]
    );
    assert_eq!(candidates("Web.Other")[1], "web.other.svc.cluster.local.");
    assert_eq!(
        candidates("web.other.svc.cluster.local"),
        ["web.other.svc.cluster.local."]
    );
    assert_eq!(
        candidates("WEB.other.svc.cluster.local."),
        ["web.other.svc.cluster.local."]
    );
    assert!(candidates("example.com.").is_empty());
    assert!(candidates("localhost").is_empty());
    assert!(candidates("db.localhost").is_empty());
    // No session yet: no search path.
    assert!(cluster_candidates(&dns, "web", &[]).is_empty());
}

#[tokio::test]
async fn other_names_are_resolved_by_the_workstation() {
    let outbound = Outbound::new(Arc::new(AgentPool::default()), "cluster.local");
    outbound.set_routing(routing());
    // From /etc/hosts: no query leaves the machine.
    let resolved = outbound.resolve("localhost").await.expect("localhost");
    assert_eq!(resolved.by, Leaves::Workstation);
    assert!(
        resolved.addresses.contains(&ip("127.0.0.1")),
        "{resolved:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_an_agent_cluster_flows_and_names_fail_clearly() {
    let outbound = Outbound::new(Arc::new(AgentPool::default()), "cluster.local");
    outbound.set_routing(routing());
    let err = outbound
        .tcp(SocketAddr::from(([10, 96, 0, 10], 80)))
        .await
        .expect_err("no agent");
    assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
    let err = outbound
        .resolve("web.shop.svc.cluster.local")
        .await
        .expect_err("no agent");
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
}

/// Sends `message` on `stream` and reads back as many bytes.
async fn echoed(mut stream: OutboundTcp, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await.expect("read");
    back
}

#[tokio::test]
async fn cluster_addresses_are_dialled_by_the_agent_and_others_here() {
    let outbound = Outbound::new(linked_pool().await, "cluster.local");
    let through_agent = echo_server("127.0.0.2:0").await;
    let here = echo_server("127.0.0.1:0").await;
    outbound.set_routing(Routing {
        cluster: vec![range("127.0.0.2")],
        ..Routing::default()
    });

    let stream = outbound
        .tcp(through_agent)
        .await
        .expect("through the agent");
    assert!(matches!(stream, Either::Left(_)), "{stream:?}");
    assert_eq!(echoed(stream, b"to the pod").await, b"to the pod");

    let stream = outbound.tcp(here).await.expect("from here");
    assert!(matches!(stream, Either::Right(_)), "{stream:?}");
    assert_eq!(echoed(stream, b"local").await, b"local");

    let stream = outbound
        .tcp_to(&Host::Name("localhost".into()), here.port())
        .await
        .expect("by name");
    assert_eq!(echoed(stream, b"named").await, b"named");
}

/// Outbound flows through `pool`'s agent, and an echo server at an address it takes for
/// the cluster's.
async fn to_echo_in_the_cluster(pool: Arc<AgentPool>) -> (Outbound, SocketAddr) {
    let outbound = Outbound::new(pool, "cluster.local");
    let target = echo_server("127.0.0.2:0").await;
    outbound.set_routing(Routing {
        cluster: vec![range("127.0.0.2")],
        ..Routing::default()
    });
    (outbound, target)
}

async fn striped_flow(outbound: &Outbound, target: SocketAddr) -> Striped<MuxStream> {
    let Either::Left(stream) = outbound.tcp(target).await.expect("through the agent") else {
        panic!("a cluster address goes through the agent");
    };
    stream
}

#[tokio::test]
async fn a_flow_that_carries_bulk_is_spread_over_every_link_to_its_agent() {
    let (outbound, target) = to_echo_in_the_cluster(linked_pool_with_links(3).await).await;
    let mut stream = striped_flow(&outbound, target).await;
    assert_eq!(echoed(Either::Left(stream), b"small").await, b"small");
    let Either::Left(fresh) = outbound.tcp(target).await.expect("again") else {
        panic!("through the agent");
    };
    stream = fresh;
    // 16 MiB out and back at once, in order, while the other links join.
    let sent: Vec<u8> = (0..16usize << 20).map(|i| (i % 241) as u8).collect();
    let (mut from_pod, mut to_pod) = tokio::io::split(&mut stream);
    let writing = async {
        to_pod.write_all(&sent).await.expect("send");
        to_pod.shutdown().await.expect("end of ours");
    };
    let mut echoed = Vec::new();
    let reading = from_pod.read_to_end(&mut echoed);
    let (_, read) = tokio::join!(writing, reading);
    read.expect("the echo to its end");
    assert!(echoed == sent, "the bytes came back in order");
    assert_eq!(stream.streams(), 3, "a stream on each link carried it");
}

#[tokio::test]
async fn a_link_that_comes_up_while_a_flow_carries_bulk_joins_it() {
    let (pool, agent) = linked_pool_at(1).await;
    let (outbound, target) = to_echo_in_the_cluster(pool.clone()).await;
    let mut stream = striped_flow(&outbound, target).await;
    let bulk: Vec<u8> = (0..2usize << 20).map(|i| (i % 251) as u8).collect();
    let mut echoed = vec![0; bulk.len()];
    for _ in 0..2 {
        stream.write_all(&bulk).await.expect("send");
        stream.read_exact(&mut echoed).await.expect("the echo");
        assert!(echoed == bulk, "the bytes came back in order");
        if stream.streams() == 1 {
            add_link_to(&pool, agent, 1).await;
        }
    }
    assert_eq!(stream.streams(), 2, "the new link carries the flow too");
}

/// Sends `bulk` on `stream` and checks that the echo comes back whole.
async fn echo_bulk(stream: &mut Striped<MuxStream>, bulk: &[u8]) {
    let mut echoed = vec![0; bulk.len()];
    stream.write_all(bulk).await.expect("send");
    stream.read_exact(&mut echoed).await.expect("the echo");
    assert!(echoed == bulk, "the bytes came back in order");
}

#[tokio::test]
async fn a_link_that_retires_is_left_by_its_flows_which_carry_on_and_join_the_next() {
    let (pool, agent) = linked_pool_at(1).await;
    let (outbound, target) = to_echo_in_the_cluster(pool.clone()).await;
    let mut stream = striped_flow(&outbound, target).await;
    let (extra, _) = add_link_to(&pool, agent, 1).await;
    let bulk: Vec<u8> = (0..2usize << 20).map(|i| (i % 251) as u8).collect();
    while stream.streams() < 2 {
        echo_bulk(&mut stream, &bulk).await;
    }
    assert_eq!(extra.flows_open(), 1, "the flow's stream on the extra link");

    extra.retire();
    let left = async {
        while extra.flows_open() > 0 || stream.streams() > 1 {
            echo_bulk(&mut stream, b"still there").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), left)
        .await
        .expect("the flow left the retired link");
    echo_bulk(&mut stream, &bulk).await;

    // The agent made room: the flow joins the link that comes up next.
    extra.close();
    add_link_to(&pool, agent, 1).await;
    for _ in 0..3 {
        echo_bulk(&mut stream, &bulk).await;
    }
    assert_eq!(stream.streams(), 2, "the next link carries the flow too");
}

#[tokio::test]
async fn udp_flows_are_relayed_both_ways_from_either_side() {
    let outbound = Outbound::new(linked_pool().await, "cluster.local");
    let echo = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let target = echo.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..len], peer).await;
        }
    });
    for leaves in [Leaves::Cluster, Leaves::Workstation] {
        let flow = outbound.udp_from(leaves, target).await.expect("a flow");
        let mut flows = UdpFlows::default();
        let datagrams_rx = flows.start(1, b"ping".to_vec()).expect("room");
        let (replies_tx, mut replies_rx) = mpsc::channel(4);
        let reply = move |datagram: Vec<u8>| {
            let replies_tx = replies_tx.clone();
            async move { replies_tx.send(datagram).await.map_err(io::Error::other) }
        };
        let relaying = tokio::spawn(async move {
            flow.relay(datagrams_rx, reply, Duration::from_secs(60))
                .await
        });
        assert_eq!(replies_rx.recv().await.as_deref(), Some(&b"ping"[..]));
        drop(flows);
        relaying.await.expect("join").expect("relayed");
    }
}
