//! Component tests: the agent runs as a local process on loopback and is driven through
//! the same `AgentLink` that tunneld uses, over a plain TCP connection in place of the
//! port-forward.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubedev_protocol::codec::{read_datagram, read_message, write_datagram, write_message};
use kubedev_protocol::link::{AgentLink, LinkError};
use kubedev_protocol::mux::{MuxStream, OPENED_STREAMS_CAP};
use kubedev_protocol::splice::splice;
use kubedev_protocol::stripe::Striped;
use kubedev_protocol::{AgentConfig, HttpFilter, OpenReply, OpenRequest, Transport};
use tests_fixtures::grpc::{self, Call};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// The uid the agent is told its pod has.
const POD_UID: &str = "0c9f4f9e-loopback-pod";
const TOKEN: &str = "component-test-token";
/// A deadlock, not a slow machine, is what this catches.
const LIVENESS: Duration = Duration::from_secs(60);

struct Agent {
    process: Child,
    addr: SocketAddr,
}

impl Agent {
    fn start() -> Self {
        Self::start_with("{}")
    }

    /// Starts the agent with `config` (JSON, as the plugins set it).
    fn start_with(config: &str) -> Self {
        Self::start_from(Command::new(env!("CARGO_BIN_EXE_kubedev-agent")), config)
    }

    /// Starts the agent allowed `files` open files at most (its hard limit too).
    fn start_with_files(files: u32) -> Self {
        let mut limited = Command::new("prlimit");
        limited
            .arg(format!("--nofile={files}:{files}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_kubedev-agent"));
        Self::start_from(limited, "{}")
    }

    fn start_from(mut command: Command, config: &str) -> Self {
        let mut process = command
            .args(["--listen", "127.0.0.1:0"])
            .env("KUBEDEV_AGENT_TOKEN", TOKEN)
            .env("KUBEDEV_AGENT_POD_UID", POD_UID)
            .env("KUBEDEV_AGENT_CONFIG", config)
            .env("KUBEDEV_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent starts");
        let listeners = serde_json::from_str::<AgentConfig>(config)
            .expect("agent config")
            .listeners
            .len();
        let mut lines = BufReader::new(process.stderr.take().expect("stderr")).lines();
        // Ready once it listens for workstations and has bound every port it takes over
        // (it does both at once): a client sooner would find the port closed.
        let (mut addr, mut taking) = (None, 0);
        while addr.is_none() || taking < listeners {
            let line = lines.next().expect("agent log line").expect("utf-8");
            if let Some((_, listen)) = line.split_once("listening on ") {
                addr = Some(listen.trim().parse().expect("listen address"));
            } else if line.contains("taking ") {
                taking += 1;
            }
        }
        let addr = addr.expect("listen address");
        // Keep draining the log so the agent never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { process, addr }
    }

    /// Starts the agent in front of an app running on `app_port` (intercept); returns it
    /// and the port it takes that app's connections on.
    async fn intercepting(app_port: u16) -> (Self, u16) {
        let port = free_port().await;
        let config = format!(
            r#"{{"listeners":[{{"port":{port},"app_port":{app_port},"app_running":true}}]}}"#
        );
        (Self::start_with(&config), port)
    }

    async fn link(&self, token: &str) -> Result<AgentLink, LinkError> {
        let connection = TcpStream::connect(self.addr)
            .await
            .expect("connect to agent");
        let (link, _inbound) =
            AgentLink::connect(connection, token, "component-test", POD_UID).await?;
        Ok(link)
    }

    /// A session that also receives the streams the agent opens (taken-over ports).
    async fn link_with_inbound(&self) -> (AgentLink, mpsc::Receiver<MuxStream>) {
        let connection = TcpStream::connect(self.addr)
            .await
            .expect("connect to agent");
        AgentLink::connect(connection, TOKEN, "component-test", POD_UID)
            .await
            .expect("session")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A TCP server that reads everything, then answers with how many bytes it got.
async fn counting_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                conn.read_to_end(&mut sink).await.expect("read");
                conn.write_all(format!("got {} bytes", sink.len()).as_bytes())
                    .await
                    .expect("write");
            });
        }
    });
    port
}

#[tokio::test]
async fn tcp_flow_carries_bytes_both_ways_and_half_closes() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");
    assert!(
        link.agent().starts_with("kubedev-agent "),
        "{}",
        link.agent()
    );
    let port = counting_server().await;

    let mut flow = link.open_tcp("127.0.0.1", port).await.expect("flow opens");
    let payload = vec![42u8; 3 * 1024 * 1024];
    flow.write_all(&payload).await.expect("send");
    // Our FIN must reach the server, or it would never answer.
    flow.shutdown().await.expect("half-close");
    let mut answer = String::new();
    flow.read_to_string(&mut answer).await.expect("answer");
    assert_eq!(answer, "got 3145728 bytes");
}

#[tokio::test]
async fn udp_flow_exchanges_datagrams() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");
    let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = server.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 65535];
        while let Ok((len, peer)) = server.recv_from(&mut buf).await {
            let mut answer = b"echo: ".to_vec();
            answer.extend_from_slice(&buf[..len]);
            let _ = server.send_to(&answer, peer).await;
        }
    });

    let mut flow = link.open_udp("localhost", port).await.expect("flow opens");
    let mut buf = [0u8; 65535];
    for message in ["one", "two"] {
        write_datagram(&mut flow, message.as_bytes())
            .await
            .expect("send");
        let len = read_datagram(&mut flow, &mut buf)
            .await
            .expect("receive")
            .expect("a datagram");
        assert_eq!(&buf[..len], format!("echo: {message}").as_bytes());
    }
}

#[tokio::test]
async fn a_taken_over_udp_port_carries_each_peers_datagrams_to_the_workstation_and_back() {
    let port = {
        let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let config = format!(
        r#"{{"listeners":[{{"port":{port},"app_port":53,"app_running":false,"transport":"udp"}}]}}"#
    );
    let agent = Agent::start_with(&config);
    let (link, mut inbound_rx) = agent.link_with_inbound().await;
    link.claim(53, None, None).await.expect("claimed");

    // The workstation: answers each flow's datagrams, naming the flow.
    tokio::spawn(async move {
        let mut flows = 0;
        while let Some(mut stream) = inbound_rx.recv().await {
            flows += 1;
            let request: OpenRequest = read_message(&mut stream).await.expect("request");
            assert_eq!(
                request,
                OpenRequest::Incoming {
                    port: 53,
                    transport: Transport::Udp,
                    stripe: None,
                }
            );
            write_message(&mut stream, &OpenReply::Connected)
                .await
                .expect("reply");
            tokio::spawn(async move {
                let mut buf = [0u8; 65535];
                while let Ok(Some(len)) = read_datagram(&mut stream, &mut buf).await {
                    let mut answer = format!("flow {flows}: ").into_bytes();
                    answer.extend_from_slice(&buf[..len]);
                    write_datagram(&mut stream, &answer).await.expect("answer");
                }
            });
        }
    });

    let mut buf = [0u8; 65535];
    let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let second = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for (peer, message, answer) in [
        (&first, "a", "flow 1: a"),
        (&first, "b", "flow 1: b"),
        (&second, "c", "flow 2: c"),
    ] {
        peer.send_to(message.as_bytes(), ("127.0.0.1", port))
            .await
            .expect("send");
        let (len, from) = tokio::time::timeout(LIVENESS, peer.recv_from(&mut buf))
            .await
            .expect("answered in time")
            .expect("receive");
        assert_eq!(
            from.port(),
            port,
            "the reply comes from the taken-over port"
        );
        assert_eq!(&buf[..len], answer.as_bytes());
    }
}

#[tokio::test]
async fn names_resolve_as_in_the_agent_host() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");
    let addresses = link.resolve("localhost").await.expect("resolves");
    assert!(
        addresses.contains(&"127.0.0.1".parse().expect("ip")),
        "{addresses:?}"
    );
}

#[tokio::test]
async fn failures_are_reported_with_their_cause() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let err = link.open_tcp("127.0.0.1", port).await.expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains(&format!("connect to 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");

    // The session survives a failed flow.
    assert!(link.resolve("localhost").await.is_ok());
}

#[tokio::test]
async fn keepalive_ping_is_answered_while_flows_run() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");
    let port = counting_server().await;
    let _open_flow = link.open_tcp("127.0.0.1", port).await.expect("flow");
    link.ping(Duration::from_secs(5)).await.expect("pong");
    link.close();
    link.closed().await;
    assert!(
        link.ping(Duration::from_secs(5)).await.is_err(),
        "no pong from a closed session"
    );
}

#[tokio::test]
async fn silent_connections_cannot_crowd_out_a_workstation_for_long() {
    let agent = Agent::start();
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(TcpStream::connect(agent.addr).await.expect("connect"));
    }
    let mut one_more = TcpStream::connect(agent.addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), one_more.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed at once: {read:?}");
    drop(silent);
    // Their turns come back as the agent sees them close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while agent.link(TOKEN).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session after they left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_agent_out_of_file_descriptors_goes_on_and_serves_again() {
    let mut agent = Agent::start_with_files(32);
    let mut held = Vec::new();
    for _ in 0..48 {
        if let Ok(connection) = TcpStream::connect(agent.addr).await {
            held.push(connection);
        }
    }
    // The agent meets its limit accepting these; it keeps going.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while agent.link(TOKEN).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session after the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.process.try_wait().expect("status").is_none(),
        "the agent exited"
    );
}

#[tokio::test]
async fn tokens_that_differ_open_no_session_and_neither_is_sent() {
    // Each side proves itself before the other: with another token, the agent's proof
    // fails first, and the client stops there.
    let agent = Agent::start();
    let err = agent.link("not-the-token").await.expect_err("refused");
    assert!(
        err.to_string().contains("is not this session's agent"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stalled_flow_does_not_stall_the_others() {
    let agent = Agent::start();
    let link = agent.link(TOKEN).await.expect("session");

    // A server that sends without end; the one flow to it is never read.
    let firehose = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let firehose_port = firehose.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut conn, _) = firehose.accept().await.expect("accept");
        let chunk = vec![0u8; 64 * 1024];
        while conn.write_all(&chunk).await.is_ok() {}
    });
    let _stalled = link
        .open_tcp("127.0.0.1", firehose_port)
        .await
        .expect("flow");
    // Let the stalled flow fill every buffer it can.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let port = counting_server().await;
    let flows = (0..199).map(|_| {
        let link = link.clone();
        async move {
            let mut flow = link.open_tcp("127.0.0.1", port).await.expect("flow");
            flow.write_all(&[1u8; 64 * 1024]).await.expect("send");
            flow.shutdown().await.expect("half-close");
            let mut answer = String::new();
            flow.read_to_string(&mut answer).await.expect("answer");
            answer
        }
    });
    let answers = tokio::time::timeout(LIVENESS, futures::future::join_all(flows))
        .await
        .expect("the other flows finish while one is stalled");
    assert_eq!(answers.len(), 199);
    assert!(answers.iter().all(|a| a == "got 65536 bytes"));
}

/// A free TCP port on loopback, for the agent to listen on.
async fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    probe.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_connection_the_workstation_does_not_accept_goes_to_the_app_before_its_client_gives_up() {
    let app_port = counting_server().await;
    let (agent, port) = Agent::intercepting(app_port).await;
    // The workstation claims the port on each of its links, then stops answering (they died
    // unnoticed): the streams the agent opens toward it are kept, never answered.
    let (unanswered_tx, mut unanswered_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    for _ in 0..4 {
        let (link, mut inbound_rx) = agent.link_with_inbound().await;
        link.claim(app_port, None, None).await.expect("claimed");
        let unanswered_tx = unanswered_tx.clone();
        tokio::spawn(async move {
            while let Some(stream) = inbound_rx.recv().await {
                let _ = unanswered_tx.send(stream);
            }
        });
        links.push(link);
    }

    // A client with a common timeout gets the app's answer, and so does every next one.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
    for attempt in 0..3 {
        let mut client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        client.write_all(b"hello").await.expect("send");
        client.shutdown().await.expect("half-close");
        let mut answer = String::new();
        tokio::time::timeout(CLIENT_TIMEOUT, client.read_to_string(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("connection {attempt}: no answer within {CLIENT_TIMEOUT:?}"))
            .expect("answer");
        assert_eq!(
            answer, "got 5 bytes",
            "connection {attempt}: the app answers"
        );
        assert!(
            unanswered_rx.recv().await.is_some(),
            "the workstation was asked first"
        );
    }
}

/// A gRPC echo server answering as `name`, on a free loopback port.
async fn grpc_server(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(grpc::serve(listener, name.to_owned()));
    port
}

/// An agent in front of a gRPC app, and a workstation ("laptop", serving gRPC too) that
/// claimed the requests with `x-dev: alice` (copies of them, for wiretap `wiretap`);
/// returns the agent, the workstation's link and the port that takes the app's clients.
async fn grpc_app_and_laptop(wiretap: Option<&str>) -> (Agent, AgentLink, u16) {
    let app_port = grpc_server("app").await;
    let laptop_port = grpc_server("laptop").await;
    let (agent, port) = Agent::intercepting(app_port).await;
    let (link, inbound_rx) = agent.link_with_inbound().await;
    let filter = HttpFilter {
        headers: vec![("x-dev".into(), "alice".into())],
        path_prefix: None,
    };
    link.claim(app_port, Some(filter), wiretap.map(str::to_owned))
        .await
        .expect("claimed");
    deliver_inbound(inbound_rx, laptop_port);
    (agent, link, port)
}

/// Makes the gRPC `calls` (see `Call::parse`) on one channel to the agent's `port`.
async fn grpc_calls(port: u16, calls: &[&str]) -> Vec<String> {
    let calls: Vec<Call> = calls
        .iter()
        .map(|spec| Call::parse(spec).expect("call"))
        .collect();
    tokio::time::timeout(LIVENESS, grpc::call(&format!("127.0.0.1:{port}"), &calls))
        .await
        .expect("answered in time")
        .expect("every call answered")
}

/// Delivers every stream the agent opens to `local_port`, as tunneld does (a striped
/// connection on its first stream alone: no other link joins it).
fn deliver_inbound(mut inbound_rx: mpsc::Receiver<MuxStream>, local_port: u16) {
    tokio::spawn(async move {
        while let Some(mut stream) = inbound_rx.recv().await {
            tokio::spawn(async move {
                let request: OpenRequest = read_message(&mut stream).await.expect("request");
                let mut local = TcpStream::connect(("127.0.0.1", local_port))
                    .await
                    .expect("local server");
                write_message(&mut stream, &OpenReply::Connected)
                    .await
                    .expect("reply");
                match request {
                    OpenRequest::Incoming {
                        stripe: Some(_), ..
                    } => {
                        let (_joins_tx, joined_rx) = mpsc::channel(1);
                        let mut flow = Striped::new(stream, joined_rx);
                        let _ = splice(&mut flow, &mut local).await;
                    }
                    _ => drop(splice(&mut stream, &mut local).await),
                }
            });
        }
    });
}

#[tokio::test]
async fn grpc_calls_on_one_channel_are_routed_one_by_one_by_their_metadata() {
    let (_agent, _link, port) = grpc_app_and_laptop(None).await;

    let answers = grpc_calls(
        port,
        &[
            "say:x-dev=alice",
            "say",
            "count:x-dev=alice",
            "count:x-dev=bob",
            "chat:x-dev=alice",
            "chat",
        ],
    )
    .await;
    assert_eq!(
        answers,
        [
            "laptop: say",
            "app: say",
            "laptop: count 1 | laptop: count 2 | laptop: count 3",
            "app: count 1 | app: count 2 | app: count 3",
            "laptop: chat 1 | laptop: chat 2 | laptop: chat 3",
            "app: chat 1 | app: chat 2 | app: chat 3",
        ]
    );
}

/// Sends `bytes` bytes to the agent's `port`, closes its side, and returns the answer.
async fn send_through(port: u16, bytes: usize) -> String {
    let mut client = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    client.write_all(&vec![b'x'; bytes]).await.expect("send");
    client.shutdown().await.expect("half-close");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.expect("answer");
    answer
}

/// Accepts every stream the agent opens; `read` says whether its bytes are read (and
/// their count sent on `copied_tx`) or left unread, as by a workstation that stalled.
fn wiretap_workstation(
    mut inbound_rx: mpsc::Receiver<MuxStream>,
    read: bool,
    copied_tx: mpsc::UnboundedSender<usize>,
) {
    tokio::spawn(async move {
        let mut stalled = Vec::new();
        while let Some(mut stream) = inbound_rx.recv().await {
            let _: OpenRequest = read_message(&mut stream).await.expect("request");
            write_message(&mut stream, &OpenReply::Connected)
                .await
                .expect("reply");
            if !read {
                stalled.push(stream);
                continue;
            }
            let copied_tx = copied_tx.clone();
            tokio::spawn(async move {
                let mut copy = Vec::new();
                if stream.read_to_end(&mut copy).await.is_ok() {
                    let _ = copied_tx.send(copy.len());
                }
            });
        }
    });
}

#[tokio::test]
async fn a_wiretap_gets_the_clients_bytes_and_a_stalled_one_never_slows_the_connection() {
    let app_port = counting_server().await;
    let (agent, port) = Agent::intercepting(app_port).await;
    let (copied_tx, mut copied_rx) = mpsc::unbounded_channel();
    // Alice's wiretap reads its copies; Bob's two links accept theirs and never read.
    let (alice, alice_rx) = agent.link_with_inbound().await;
    alice
        .claim(app_port, None, Some("alice".into()))
        .await
        .expect("claimed");
    wiretap_workstation(alice_rx, true, copied_tx.clone());
    let mut bob_links = Vec::new();
    for _ in 0..2 {
        let (bob, bob_rx) = agent.link_with_inbound().await;
        bob.claim(app_port, None, Some("bob".into()))
            .await
            .expect("claimed");
        wiretap_workstation(bob_rx, false, copied_tx.clone());
        bob_links.push(bob);
    }

    for bytes in [5, 1 << 20] {
        assert_eq!(
            send_through(port, bytes).await,
            format!("got {bytes} bytes")
        );
        let copied = tokio::time::timeout(LIVENESS, copied_rx.recv()).await;
        assert_eq!(copied.expect("in time"), Some(bytes), "alice got a copy");
    }

    // Far more than the windows and the backlog hold: Bob's copy falls behind and is
    // dropped (so may Alice's: copies are best effort); the connection itself goes on.
    const BIG: usize = 64 << 20;
    let answer = tokio::time::timeout(LIVENESS, send_through(port, BIG))
        .await
        .expect("not held back by the stalled wiretap");
    assert_eq!(answer, format!("got {BIG} bytes"));

    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let alice_counts = alice.wiretap_counts("alice").await.expect("counts");
        let bob_counts = bob_links[0].wiretap_counts("bob").await.expect("counts");
        if alice_counts.copied + alice_counts.dropped == 3 && bob_counts.dropped >= 1 {
            assert!(alice_counts.copied >= 2, "{alice_counts:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{alice_counts:?} {bob_counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_filtered_wiretap_gets_copies_of_matching_grpc_calls_while_the_app_answers_all() {
    let (_agent, link, port) = grpc_app_and_laptop(Some("alice")).await;

    let answers = grpc_calls(
        port,
        &[
            "say:x-dev=alice",
            "count:x-dev=alice",
            "chat:x-dev=alice",
            "say",
        ],
    )
    .await;
    assert!(
        answers.iter().all(|a| a.starts_with("app: ")),
        "{answers:?}"
    );

    // The three matching calls were copied, and the laptop answered each.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let counts = link.wiretap_counts("alice").await.expect("counts");
        if counts.copied + counts.dropped == 3 {
            assert_eq!(counts.dropped, 0, "{counts:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP server that echoes each connection until its client closes it.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reading, mut writing) = conn.into_split();
                let _ = tokio::io::copy(&mut reading, &mut writing).await;
            });
        }
    });
    port
}

/// Whether `text` sent on `io` comes back.
async fn echoes<S>(io: &mut S, text: &[u8]) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let exchange = async {
        io.write_all(text).await?;
        let mut back = vec![0u8; text.len()];
        io.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == text)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), exchange).await,
        Ok(Ok(true))
    )
}

#[tokio::test]
async fn flows_beyond_a_links_cap_are_refused_and_the_link_and_its_flows_carry_on() {
    kubedev_process::limits::raise_open_files_limit();
    let agent = Agent::start();
    let connection = TcpStream::connect(agent.addr).await.expect("connect");
    // Thousands of round trips, each a few small frames: none waits on a delayed ACK.
    connection.set_nodelay(true).expect("nodelay");
    let (link, _inbound_rx) = AgentLink::connect(connection, TOKEN, "component-test", POD_UID)
        .await
        .expect("session");
    let port = echo_server().await;
    let mut flows = Vec::new();
    for _ in 0..OPENED_STREAMS_CAP {
        let mut flow = link.open_tcp("127.0.0.1", port).await.expect("flow");
        assert!(echoes(&mut flow, b"x").await);
        flows.push(flow);
    }

    let refused = link.open_tcp("127.0.0.1", port).await;
    assert!(
        matches!(refused, Err(LinkError::Full(OPENED_STREAMS_CAP))),
        "{refused:?}"
    );
    assert!(echoes(&mut flows[0], b"an earlier flow").await);
    link.ping(Duration::from_secs(5))
        .await
        .expect("the keepalive gets through");
    assert!(!link.is_closed());

    flows.truncate(OPENED_STREAMS_CAP - 10);
    let mut again = link.open_tcp("127.0.0.1", port).await.expect("room again");
    assert!(echoes(&mut again, b"again").await);
}

/// A connection to `port` on loopback from the address `from`.
async fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((from, 0).into()).expect("bind");
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect")
}

#[tokio::test]
async fn one_client_address_cannot_take_every_connection_of_the_taken_over_ports() {
    // The agent's cap, per client address over all its ports.
    const CONNECTIONS_PER_SOURCE: usize = 512;
    kubedev_process::limits::raise_open_files_limit();
    let (first_app, second_app) = (echo_server().await, echo_server().await);
    let (first, second) = (free_port().await, free_port().await);
    let config = format!(
        r#"{{"listeners":[{{"port":{first},"app_port":{first_app},"app_running":true}},{{"port":{second},"app_port":{second_app},"app_running":true}}]}}"#
    );
    let _agent = Agent::start_with(&config);
    let mut held = Vec::new();
    for taken in 0..CONNECTIONS_PER_SOURCE {
        // Half on each port: the share counts them together.
        let port = if taken % 2 == 0 { first } else { second };
        let mut connection = connect_from([127, 0, 0, 1], port).await;
        assert!(echoes(&mut connection, b"x").await, "under the cap");
        held.push(connection);
    }

    for port in [first, second] {
        let mut one_more = connect_from([127, 0, 0, 1], port).await;
        assert!(!echoes(&mut one_more, b"x").await, "closed beyond the cap");
    }
    let mut other = connect_from([127, 0, 0, 2], second).await;
    assert!(echoes(&mut other, b"y").await, "another address is served");
    assert!(echoes(&mut held[0], b"z").await, "an earlier connection");

    // A place comes back once the agent has seen a connection end.
    held.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !echoes(&mut connect_from([127, 0, 0, 1], first).await, b"again").await {
        assert!(tokio::time::Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stopping_agent_serves_its_taken_over_port_while_the_proxies_catch_up() {
    let app = echo_server().await;
    let (mut agent, port) = Agent::intercepting(app).await;
    let told = Command::new("kill")
        .args(["-TERM", &agent.process.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(told.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A second after being told to stop, a client is still served (by the app, here).
    let mut client = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("still accepting");
    assert!(echoes(&mut client, b"late client").await);
    assert!(
        agent.process.try_wait().expect("wait").is_none(),
        "still running"
    );
    // It does stop, once the drain is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while agent.process.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A certificate for `name` and its key, as PEM.
fn pem_certificate(name: &str) -> (String, String) {
    let signed = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a cert");
    (signed.cert.pem(), signed.signing_key.serialize_pem())
}

/// An HTTP/2 server in TLS (`cert`, `key`) on a free loopback port that answers every
/// request with `NAME: PATH`.
async fn h2_tls_server(name: &'static str, (cert, key): &(String, String)) -> u16 {
    let config = tests_fixtures::tls::server_config(cert.as_bytes(), key.as_bytes())
        .expect("a server certificate");
    let mut config = std::sync::Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(connection).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let answer = format!("{name}: {}", request.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from(answer)),
                        ))
                    }
                });
                let executor = hyper_util::rt::TokioExecutor::new();
                let _ = hyper::server::conn::http2::Builder::new(executor)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn http2_in_tls_is_routed_stream_by_stream_and_goes_on_in_tls() {
    use http_body_util::BodyExt as _;

    let app = pem_certificate("web.test");
    let app_port = h2_tls_server("app", &app).await;
    // The workstation's server has a development certificate of its own.
    let laptop_port = h2_tls_server("laptop", &pem_certificate("localhost")).await;
    let tls_dir = std::env::temp_dir().join(format!("kubedev-agent-tls-{}", std::process::id()));
    std::fs::create_dir_all(&tls_dir).expect("a directory");
    std::fs::write(tls_dir.join("tls.crt"), &app.0).expect("tls.crt");
    std::fs::write(tls_dir.join("tls.key"), &app.1).expect("tls.key");
    let port = free_port().await;
    let config = format!(
        r#"{{"listeners":[{{"port":{port},"app_port":{app_port},"app_running":true,"tls":true}}]}}"#
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubedev-agent"));
    command.env("KUBEDEV_AGENT_TLS_DIR", &tls_dir);
    let agent = Agent::start_from(command, &config);
    let (link, inbound_rx) = agent.link_with_inbound().await;
    let filter = HttpFilter {
        headers: vec![("x-dev".into(), "alice".into())],
        path_prefix: None,
    };
    link.claim(app_port, Some(filter), None)
        .await
        .expect("claimed");
    deliver_inbound(inbound_rx, laptop_port);

    // A client that trusts only the app's certificate, on one HTTP/2 connection.
    let client = tests_fixtures::tls::client_config(app.0.as_bytes()).expect("a client");
    let mut client = std::sync::Arc::unwrap_or_clone(client);
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("web.test").expect("a name");
    let stream = connector
        .connect(name, tcp)
        .await
        .expect("the app's certificate");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2");
    tokio::spawn(connection);
    let mut answers = Vec::new();
    for (path, dev) in [("/a", "alice"), ("/b", "bob"), ("/c", "alice")] {
        let request = hyper::Request::get(format!("https://web.test{path}"))
            .header("x-dev", dev)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .expect("a request");
        let response = tokio::time::timeout(LIVENESS, sender.send_request(request))
            .await
            .expect("answered in time")
            .expect("a response");
        let body = response.into_body().collect().await.expect("a body");
        answers.push(String::from_utf8_lossy(&body.to_bytes()).into_owned());
    }
    std::fs::remove_dir_all(&tls_dir).expect("removed");
    assert_eq!(answers, ["laptop: /a", "app: /b", "laptop: /c"]);
}
