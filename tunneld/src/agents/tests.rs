use kubedev_protocol::codec::{read_message, write_message};
use kubedev_protocol::handshake::welcome_client;
use kubedev_protocol::mux::{self, Mode, MuxStream};
use kubedev_protocol::{OpenReply, OpenRequest};

use super::*;

const TOKEN: &str = "pool-test";

/// A link to an in-process agent that takes every flow and holds it, carrying nothing:
/// enough to be picked, filled and closed.
pub(crate) async fn link() -> AgentLink {
    let (workstation, mut agent) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if welcome_client(&mut agent, TOKEN, "test-agent", "test-pod")
            .await
            .is_ok()
        {
            let (_handle, mut streams_rx) = mux::spawn(agent, Mode::Server);
            while let Some(stream) = streams_rx.recv().await {
                tokio::spawn(take_and_hold(stream));
            }
        }
    });
    AgentLink::connect(workstation, TOKEN, "pool-test", "test-pod")
        .await
        .expect("handshake")
        .0
}

/// Answers a flow's request `Connected` and holds the flow until the workstation ends it.
async fn take_and_hold(mut stream: MuxStream) {
    if read_message::<_, OpenRequest>(&mut stream).await.is_ok()
        && write_message(&mut stream, &OpenReply::Connected)
            .await
            .is_ok()
    {
        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    }
}

fn key(session: &str, pod: &str) -> LinkKey {
    nth_key(session, pod, 0)
}

fn nth_key(session: &str, pod: &str, index: usize) -> LinkKey {
    LinkKey {
        session: SessionKey::new("shop", session),
        pod: pod.into(),
        index,
    }
}

/// Session web of namespace shop.
fn web() -> SessionKey {
    SessionKey::new("shop", "web")
}

/// The pod of the link `picked` is a clone of.
fn which(picked: &AgentLink, links: &[(&str, &AgentLink)]) -> String {
    links
        .iter()
        .find(|(_, link)| link.same_session(picked))
        .map(|(pod, _)| (*pod).to_owned())
        .expect("a link of the pool")
}

/// Which links four picks among the `web` session's links got, sorted.
async fn pick_four(pool: &AgentPool, links: &[(&str, &AgentLink)]) -> Vec<String> {
    let mut picked = Vec::new();
    for _ in 0..4 {
        let link = pool
            .pick(Some(&web()), Duration::ZERO)
            .await
            .expect("a link");
        picked.push(which(&link, links));
    }
    picked.sort();
    picked
}

#[tokio::test]
async fn links_are_picked_in_turn_among_the_sessions_live_ones() {
    let pool = AgentPool::default();
    let (a, b, other) = (link().await, link().await, link().await);
    pool.add(key("web", "web-a"), a.clone()).await;
    pool.add(key("web", "web-b"), b.clone()).await;
    pool.add(key("db", "db-0"), other.clone()).await;
    let links = [("web-a", &a), ("web-b", &b), ("db-0", &other)];

    let picked = pick_four(&pool, &links).await;
    assert_eq!(picked, ["web-a", "web-a", "web-b", "web-b"], "each in turn");

    a.close();
    a.closed().await;
    for _ in 0..3 {
        let link = pool
            .pick(Some(&web()), Duration::ZERO)
            .await
            .expect("a link");
        assert_eq!(
            which(&link, &links),
            "web-b",
            "a closed link is never picked"
        );
    }
    assert_eq!(pool.linked_pods(&web()).await, ["web-b"]);
}

#[tokio::test]
async fn a_link_with_no_room_for_another_flow_is_passed_over_while_another_has_room() {
    let pool = AgentPool::default();
    let (full, free) = (link().await, link().await);
    pool.add(key("web", "web-a"), full.clone()).await;
    pool.add(key("web", "web-b"), free.clone()).await;
    let links = [("web-a", &full), ("web-b", &free)];
    let mut flows = Vec::new();
    for _ in 0..OPENED_STREAMS_CAP {
        flows.push(full.open_tcp("10.0.0.1", 80).await.expect("a flow"));
    }

    let picked = pick_four(&pool, &links).await;
    assert_eq!(picked, ["web-b"; 4], "the full link refuses flows");
    let opened = pool
        .pick(Some(&web()), Duration::ZERO)
        .await
        .expect("a link");
    opened
        .open_tcp("10.0.0.1", 80)
        .await
        .expect("a flow on the link picked");

    free.close();
    free.closed().await;
    let picked = pick_four(&pool, &links).await;
    assert_eq!(picked, ["web-a"; 4], "a full link is better than none");
    flows.pop();
    let opened = pool
        .pick(Some(&web()), Duration::ZERO)
        .await
        .expect("a link");
    opened.open_tcp("10.0.0.1", 80).await.expect("room again");
}

#[tokio::test]
async fn flows_spread_over_a_pods_links_and_the_pod_is_listed_once() {
    let pool = AgentPool::default();
    let (first, second) = (link().await, link().await);
    pool.add(nth_key("web", "web-a", 0), first.clone()).await;
    pool.add(nth_key("web", "web-a", 1), second.clone()).await;
    let links = [("first", &first), ("second", &second)];

    let picked = pick_four(&pool, &links).await;
    assert_eq!(picked, ["first", "first", "second", "second"]);
    assert_eq!(pool.linked_pods(&web()).await, ["web-a"]);

    first.close();
    first.closed().await;
    assert_eq!(
        pool.linked_pods(&web()).await,
        ["web-a"],
        "the pod keeps its other link"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pick_waits_for_a_link_to_come_up_or_gives_up() {
    let pool = Arc::new(AgentPool::default());
    assert!(pool.pick(None, Duration::from_secs(1)).await.is_none());

    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.pick(Some(&web()), Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.add(key("web", "web-a"), link().await).await;
    assert!(waiting.await.expect("joined").is_some());
}

#[tokio::test]
async fn forgetting_a_session_closes_its_links_only() {
    let pool = AgentPool::default();
    let (web_link, db_link, namesake_link) = (link().await, link().await, link().await);
    pool.add(key("web", "web-a"), web_link.clone()).await;
    pool.add(key("db", "db-0"), db_link.clone()).await;
    let namesake = SessionKey::new("stock", "web");
    let namesake_key = LinkKey {
        session: namesake.clone(),
        pod: "web-a".into(),
        index: 0,
    };
    pool.add(namesake_key, namesake_link.clone()).await;

    pool.forget(&web()).await;
    web_link.closed().await;
    assert!(pool.pick(Some(&web()), Duration::ZERO).await.is_none());
    assert!(!db_link.is_closed());
    assert_eq!(
        pool.linked_pods(&SessionKey::new("shop", "db")).await,
        ["db-0"]
    );
    assert!(
        !namesake_link.is_closed(),
        "a namesake in another namespace stays"
    );
    assert_eq!(pool.linked_pods(&namesake).await, ["web-a"]);
}
