//! Connections a real agent (in the test process, on loopback) hands over, delivered to a
//! local server.

use kubedev_protocol::{Listener, Transport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::test_agent::{add_link_to, agent_taking_over, echo_server, free_port};

/// The app container's port the agent takes over.
const APP_PORT: u16 = 8080;

#[tokio::test]
async fn an_intercepted_connection_that_carries_bulk_is_spread_over_every_link_to_its_pod() {
    let taken_over = free_port().await;
    let agent = agent_taking_over(vec![Listener {
        port: taken_over.port(),
        app_port: APP_PORT,
        app_running: false,
        transport: Transport::Tcp,
        tls: false,
    }])
    .await;
    let pool = Arc::new(AgentPool::default());
    let (link, incoming_rx) = add_link_to(&pool, agent, 0).await;
    for index in 1..3 {
        add_link_to(&pool, agent, index).await;
    }
    link.claim(APP_PORT, None, None).await.expect("claimed");
    let local_server = echo_server("127.0.0.1:0").await;
    let forwards = Arc::new([Forward {
        app_port: APP_PORT,
        local_host: "127.0.0.1".into(),
        local_port: local_server.port(),
        filter: None,
        transport: Transport::Tcp,
        wiretap: false,
    }]);
    let delivery = Delivery::new(forwards, Arc::default(), pool.clone(), link.clone());
    tokio::spawn(deliver_all(incoming_rx, delivery));

    // A client in the pod sends 16 MiB to the local server and reads its echo.
    let mut client = TcpStream::connect(taken_over).await.expect("connect");
    let sent: Vec<u8> = (0..16usize << 20).map(|i| (i % 239) as u8).collect();
    let (mut from_server, mut to_server) = client.split();
    let writing = async {
        to_server.write_all(&sent).await.expect("send");
        to_server
            .shutdown()
            .await
            .expect("end of the client's side");
    };
    let mut echoed = Vec::new();
    let (_, read) = tokio::join!(writing, from_server.read_to_end(&mut echoed));
    read.expect("the echo to its end");
    assert!(echoed == sent, "the bytes came back whole and in order");
    let mut links = pool.links_beside(&link).await;
    links.push(link);
    for link in links {
        let moved = link.meter().moved();
        assert!(moved > 1 << 20, "each link carried a share: {moved} bytes");
    }
}
