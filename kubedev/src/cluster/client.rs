//! The client for the API server: through the proxy kubectl would use, quick to notice a
//! dead path, and with a deadline for each answer (`--request-timeout`).

use std::time::Duration;

use super::proxy::{Proxy, ProxyProtocol};

/// Whether `error` is a request the API server did not answer within its deadline
/// (`--request-timeout`).
pub fn unanswered(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tower::timeout::error::Elapsed>()
}

/// Whether `error` is a connection to the API server that broke (reset, aborted, closed
/// mid-request): the call may go through when made again.
pub fn interrupted(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let broken = [
        ConnectionReset,
        ConnectionAborted,
        BrokenPipe,
        UnexpectedEof,
    ];
    let io_broke = |io: &std::io::Error| broken.contains(&io.kind());
    let http_broke = |http: &hyper::Error| {
        http.is_incomplete_message() || http.is_closed() || http.is_canceled()
    };
    error.downcast_ref::<std::io::Error>().is_some_and(io_broke)
        || error.downcast_ref::<hyper::Error>().is_some_and(http_broke)
}

/// How long the API server may leave what was sent unacknowledged before the connection is
/// given up (TCP_USER_TIMEOUT): a route that vanished (a VPN went down, a network namespace
/// was deleted) would otherwise hold a call for the kernel's ~15 minutes of retransmits.
#[cfg(target_os = "linux")]
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(30);
/// An idle connection is probed after this, then every [`KEEPALIVE_INTERVAL`], and given
/// up after [`KEEPALIVE_PROBES`] unanswered probes: about 30 s for a dead one, as kubectl.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// How long the API server may take to start answering a request, unless
/// `--request-timeout` says otherwise: more than admission webhooks may take (30 s at
/// most), so only a server that stopped answering hits it.
/// Watches and port-forwards are answered at once and then stream for as long as they
/// last.
pub(super) const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// A client for `config`, through `proxy` when there is one, whose connections to the
/// API server (or the proxy) send small writes at once, notice a dead path within a
/// minute, and whose requests are answered within `deadline` (if any) or fail.
///
/// kube's own stack leaves Nagle's algorithm on: a small write (a stream's open request, a
/// window update, one keystroke) then waits for the ACK of what is in flight, a whole round
/// trip and more with the server's delayed ACKs, on every port-forward. kubectl (Go) sets
/// TCP_NODELAY; so does this. It sets no read deadline either (watches and port-forwards
/// are idle for long), so a call over a path that died would wait for TCP to give up; keepalive
/// probes and TCP_USER_TIMEOUT end such a connection, and the call fails, in well under a
/// minute.
pub(super) fn client_for(
    config: kube::Config,
    proxy: Option<&Proxy>,
    deadline: Option<Duration>,
) -> Result<kube::Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::ConfigExt as _;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    #[cfg(target_os = "linux")]
    http.set_tcp_user_timeout(Some(UNACKNOWLEDGED_LIMIT));
    let Some(proxy) = proxy else {
        return client_over(config, http, deadline);
    };
    match proxy.protocol() {
        ProxyProtocol::Http => client_over(config, proxy.named(proxy.tunnel(http)), deadline),
        ProxyProtocol::Https => {
            // As kubectl, the proxy's TLS is the cluster's: its certificate authority, if
            // the kubeconfig names one.
            let tls = config.rustls_https_connector_with_connector(http)?;
            client_over(config, proxy.named(proxy.tunnel(tls)), deadline)
        }
        ProxyProtocol::Socks5 => client_over(config, proxy.named(proxy.socks(http)), deadline),
    }
}

/// A client for `config` whose connections to the API server `connector` makes.
fn client_over<C>(
    config: kube::Config,
    connector: C,
    deadline: Option<Duration>,
) -> Result<kube::Client, kube::Error>
where
    C: tower::Service<hyper::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin
        + 'static,
    C::Future: Send + 'static,
    C::Error: Into<tower::BoxError>,
{
    use kube::client::ConfigExt as _;
    let https = config.rustls_https_connector_with_connector(connector)?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The auth layer's errors are boxed; the others' must be too, to be one type.
        .map_err(tower::BoxError::from)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .option_layer(deadline.map(tower::timeout::TimeoutLayer::new))
        // With a deadline or without, the client's errors are boxed alike.
        .map_err(tower::BoxError::from)
        .service(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https),
        );
    Ok(kube::Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterArgs;
    use crate::cluster::proxy::{self, ProxyEnvironment};

    #[test]
    fn a_broken_connection_is_worth_another_try_and_a_refusal_is_not() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(interrupted(&reset));
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!interrupted(&missing));
    }

    /// An API server on loopback that takes connections and requests, and says nothing.
    async fn silent_server() -> kube::Config {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        kube::Config::new(url.parse().expect("url"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_api_server_never_answers_fails_at_the_deadline() {
        let request_timeout = Duration::from_secs(3);
        for (flag, deadline) in [
            (None, ANSWER_DEADLINE),
            (Some(request_timeout), request_timeout),
        ] {
            let args = ClusterArgs {
                request_timeout: flag,
                ..ClusterArgs::default()
            };
            let client =
                client_for(silent_server().await, None, args.answer_deadline()).expect("client");
            let started = tokio::time::Instant::now();
            let answer = tokio::time::timeout(ANSWER_DEADLINE * 2, client.apiserver_version())
                .await
                .expect("the request gave up by itself");
            let failure = answer.expect_err("no answer");
            assert!(started.elapsed() >= deadline, "failed only at the deadline");
            assert!(started.elapsed() < deadline * 2, "failed at the deadline");
            let failure: &(dyn std::error::Error + 'static) = &failure;
            let mut causes = std::iter::successors(Some(failure), |error| error.source());
            assert!(causes.any(unanswered), "{failure}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_timeout_of_zero_waits_for_as_long_as_it_takes() {
        let args = ClusterArgs {
            request_timeout: Some(Duration::ZERO),
            ..ClusterArgs::default()
        };
        assert_eq!(args.answer_deadline(), None);
        let client = client_for(silent_server().await, None, None).expect("client");
        let waited = tokio::time::timeout(ANSWER_DEADLINE * 10, client.apiserver_version()).await;
        assert!(waited.is_err(), "still waiting: {waited:?}");
    }

    /// What a request through the proxy at `proxy_url` fails with, its causes after it.
    async fn failure_through(proxy_url: &str) -> String {
        // Only the proxy is dialled; the server is named in the CONNECT request.
        let server: hyper::Uri = "https://127.0.0.1:6443".parse().expect("server");
        let proxy = proxy::choose(&server, Some(proxy_url), &ProxyEnvironment::default())
            .expect("usable")
            .expect("a proxy");
        let client = client_for(kube::Config::new(server), Some(&proxy), None).expect("client");
        let failure = client.apiserver_version().await.expect_err("no tunnel");
        let mut message = failure.to_string();
        let mut cause = std::error::Error::source(&failure);
        while let Some(error) = cause {
            message = format!("{message}: {error}");
            cause = error.source();
        }
        message
    }

    /// A proxy on loopback (`scheme://127.0.0.1:PORT`) that answers each message of every
    /// connection with the next of `replies`.
    async fn proxy_answering(scheme: &str, replies: &'static [&'static [u8]]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("{scheme}://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                for reply in replies {
                    let mut request = [0; 1024];
                    let _ = connection.read(&mut request).await;
                    let _ = connection.write_all(reply).await;
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn a_proxy_that_cannot_be_reached_is_named() {
        for scheme in ["http", "socks5"] {
            // Bound, so no other test takes the port, but not listening: connections to it
            // are refused.
            let closed = tokio::net::TcpSocket::new_v4().expect("socket");
            closed
                .bind("127.0.0.1:0".parse().expect("address"))
                .expect("bind");
            let url = format!("{scheme}://{}", closed.local_addr().expect("address"));
            let message = failure_through(&url).await;
            assert!(
                message.contains(&format!(
                    "the proxy {url} (from the kubeconfig cluster's proxy-url) is unreachable"
                )),
                "{message}"
            );
            assert!(message.contains("refused"), "and why: {message}");
        }
    }

    #[tokio::test]
    async fn a_proxy_that_refuses_the_tunnel_is_named() {
        const FORBIDDEN: &[&[u8]] = &[b"HTTP/1.1 403 Forbidden\r\n\r\n"];
        const CREDENTIALS: &[&[u8]] = &[b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"];
        // No authentication; then "connection refused" for the request.
        const SOCKS_REFUSAL: &[&[u8]] = &[&[5, 0], &[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]];
        for (scheme, replies, failure) in [
            ("http", FORBIDDEN, "refused the tunnel"),
            ("http", CREDENTIALS, "asks for credentials"),
            ("socks5", SOCKS_REFUSAL, "refused the connection"),
        ] {
            let url = proxy_answering(scheme, replies).await;
            let message = failure_through(&url).await;
            assert!(
                message.contains(&format!(
                    "the proxy {url} (from the kubeconfig cluster's proxy-url) {failure}"
                )),
                "{message}"
            );
        }
    }
}
