//! The proxy in this process with a real agent on loopback: 127.0.0.2 plays the cluster's
//! range, reached through the agent; everything else is the workstation's.

use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::outbound::Routing;
use crate::test_agent::{echo_server, linked_pool};

/// A proxy serving in the background, whose cluster is 127.0.0.2.
async fn proxy() -> ProxyStatus {
    let outbound = Arc::new(Outbound::new(linked_pool().await, "cluster.local"));
    outbound.set_routing(Routing {
        cluster: vec![kubedev::cidr::parse("127.0.0.2").expect("range")],
        ..Routing::default()
    });
    let proxy = Proxy::bind(0, outbound).await.expect("the proxy listens");
    let status = proxy.status().clone();
    tokio::spawn(proxy.serve());
    status
}

/// The proxy's password, from its URL.
fn secret(status: &ProxyStatus) -> String {
    let after_user = status.http_url.split_once("kubedev:").expect("user").1;
    after_user.split_once('@').expect("host").0.to_owned()
}

/// An HTTP server on 127.0.0.2 that answers each request with its request line.
async fn request_line_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.2:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let head = read_head(&mut connection).await;
            let line = head.lines().next().unwrap_or_default().to_owned();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                line.len()
            );
            let _ = connection.write_all(answer.as_bytes()).await;
        }
    });
    address
}

/// Reads up to the end of an HTTP head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8")
}

/// Sends `message` and expects it back.
async fn assert_echoes(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await.expect("read");
    assert_eq!(back, message);
}

#[tokio::test]
async fn socks_connects_through_the_agent_with_the_credentials() {
    let status = proxy().await;
    let echo = echo_server("127.0.0.2:0").await;
    let mut client = TcpStream::connect(status.address).await.expect("connect");
    let secret = secret(&status);
    let mut hello = vec![5, 1, 2, 1, 7];
    hello.extend(b"kubedev");
    hello.push(u8::try_from(secret.len()).expect("short"));
    hello.extend(secret.as_bytes());
    hello.extend([5, 1, 0, 1, 127, 0, 0, 2]);
    hello.extend(echo.port().to_be_bytes());
    client.write_all(&hello).await.expect("handshake");
    let mut answered = [0u8; 14];
    client.read_exact(&mut answered).await.expect("replies");
    assert_eq!(answered[..4], [5, 2, 1, 0], "authenticated");
    assert_eq!(answered[4..6], [5, 0], "connected");
    assert_echoes(&mut client, b"through the pod").await;
}

#[tokio::test]
async fn http_connect_and_plain_requests_are_carried_with_the_credentials() {
    let status = proxy().await;
    let echo = echo_server("127.0.0.2:0").await;
    let server = request_line_server().await;
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("kubedev:{}", secret(&status)))
    );

    let mut client = TcpStream::connect(status.address).await.expect("connect");
    let connect = format!(
        "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {authorization}\r\n\r\n"
    );
    client.write_all(connect.as_bytes()).await.expect("connect");
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_echoes(&mut client, b"tunnelled").await;

    let mut client = TcpStream::connect(status.address).await.expect("connect");
    let get = format!(
        "GET http://{server}/path?q=1 HTTP/1.1\r\nHost: {server}\r\n\
         Proxy-Authorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    client.write_all(get.as_bytes()).await.expect("get");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("GET /path?q=1 HTTP/1.1"), "{answer}");
}

#[tokio::test]
async fn a_request_without_the_credentials_is_refused() {
    let status = proxy().await;
    let server = request_line_server().await;
    let mut client = TcpStream::connect(status.address).await.expect("connect");
    let get =
        format!("GET http://{server}/ HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    client.write_all(get.as_bytes()).await.expect("get");
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"kubedev\""),
        "{head}"
    );

    let mut client = TcpStream::connect(status.address).await.expect("connect");
    client.write_all(&[5, 1, 0]).await.expect("greeting");
    let mut answered = [0u8; 2];
    client.read_exact(&mut answered).await.expect("reply");
    assert_eq!(answered, [5, 0xFF], "no acceptable method");
}

#[tokio::test]
async fn a_client_that_says_nothing_is_let_go() {
    let outbound = Arc::new(Outbound::new(linked_pool().await, "cluster.local"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    tokio::time::pause();
    // Any local user can connect: one who never speaks must not keep a file forever.
    serve_client(accepted, Credentials { secret: "s".into() }, outbound).await;
    drop(silent);
}
