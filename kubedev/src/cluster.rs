//! kubectl-style cluster selection: `-n/--namespace`, `--context`, `--kubeconfig`
//! and the `KUBECONFIG` variable, resolved the way kubectl resolves them; the API server
//! is reached through the proxy kubectl would use ([`proxy`]).

mod kubeconfig_files;
pub mod proxy;

pub use kubeconfig_files::read_kubeconfig;

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use proxy::{Proxy, ProxyEnvironment, ProxyError, ProxyProtocol};

/// Why no client for the cluster could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The file `--kubeconfig` names cannot be read.
    #[error("cannot read kubeconfig {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KubeconfigError,
    },
    /// Neither `KUBECONFIG` nor ~/.kube/config can be read.
    #[error("cannot read a kubeconfig: set KUBECONFIG or pass --kubeconfig FILE")]
    Read {
        /// Why.
        source: KubeconfigError,
    },
    /// None of the files `KUBECONFIG` lists exists.
    #[error(
        "none of the kubeconfig files KUBECONFIG lists exists: {}",
        listed.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoneListed {
        /// The files listed.
        listed: Vec<PathBuf>,
    },
    /// `--context` names a context the kubeconfig does not have.
    #[error("context {name:?} does not exist (`kubectl config get-contexts` lists them)")]
    NoContext {
        /// The name given.
        name: String,
    },
    /// The kubeconfig lacks the context, cluster or user it names.
    #[error("invalid kubeconfig")]
    Invalid {
        /// What is missing.
        source: KubeconfigError,
    },
    /// The proxy settings name no proxy that can be used.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The client could not be configured (its TLS settings, say).
    #[error("cannot build a Kubernetes client")]
    Client {
        /// Why.
        source: kube::Error,
    },
}

/// The flags every plugin shares to pick a cluster, user and namespace.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Namespace of the workload (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// Name of the kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// A client for the chosen cluster, with the namespace commands act in.
#[derive(Clone)]
pub struct Connection {
    /// The client, for the context's user.
    pub client: kube::Client,
    /// Where commands act: `-n`, else the context's namespace, else "default".
    pub namespace: String,
    /// The kubeconfig context in use, which names the tunneld instance to share.
    pub context: Option<String>,
    /// The API server's URL (its address must never be routed into the tunnel).
    pub server: String,
    /// The proxy the client reaches the API server through, if any (its address must
    /// never be routed into the tunnel either).
    pub proxy: Option<Proxy>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("namespace", &self.namespace)
            .field("context", &self.context)
            .field("server", &self.server)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl ClusterArgs {
    /// Reads the kubeconfig the way kubectl does and connects to the selected context.
    pub async fn connect(&self) -> Result<Connection, ClusterError> {
        let kubeconfig = read_kubeconfig(self.kubeconfig.as_deref())?;
        let context = self
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone());
        if let Some(name) = &self.context
            && !kubeconfig.contexts.iter().any(|named| &named.name == name)
        {
            return Err(ClusterError::NoContext { name: name.clone() });
        }
        let proxy = proxy_for(&kubeconfig, context.as_deref())?;
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| ClusterError::Invalid { source })?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client =
            client_for(config, proxy.as_ref()).map_err(|source| ClusterError::Client { source })?;
        Ok(Connection {
            client,
            namespace,
            context,
            server,
            proxy,
        })
    }
}

/// The proxy for the server of `context`'s cluster (kube reports a context, cluster or
/// server that is missing or malformed).
fn proxy_for(kubeconfig: &Kubeconfig, context: Option<&str>) -> Result<Option<Proxy>, ProxyError> {
    let cluster = context.and_then(|context| {
        let named = kubeconfig
            .contexts
            .iter()
            .find(|named| named.name == context)?;
        let cluster = &named.context.as_ref()?.cluster;
        let named = kubeconfig
            .clusters
            .iter()
            .find(|named| &named.name == cluster)?;
        named.cluster.as_ref()
    });
    let Some(server) = cluster
        .and_then(|cluster| cluster.server.as_deref())
        .and_then(|server| server.parse().ok())
    else {
        return Ok(None);
    };
    let proxy_url = cluster.and_then(|cluster| cluster.proxy_url.as_deref());
    proxy::choose(&server, proxy_url, &ProxyEnvironment::read())
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
/// How long the API server may take to start answering a request: more than admission
/// webhooks may take (30 s at most), so only a server that stopped answering hits it.
/// Watches and port-forwards are answered at once and then stream for as long as they
/// last.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// A client for `config`, through `proxy` when there is one, whose connections to the
/// API server (or the proxy) send small writes at once, notice a dead path within a
/// minute, and whose requests are answered within [`ANSWER_DEADLINE`] or fail.
///
/// kube's own stack leaves Nagle's algorithm on: a small write (a stream's open request, a
/// window update, one keystroke) then waits for the ACK of what is in flight, a whole round
/// trip and more with the server's delayed ACKs, on every port-forward. kubectl (Go) sets
/// TCP_NODELAY; so does this. It sets no read deadline either (watches and port-forwards
/// are idle for long), so a call over a path that died would wait for TCP to give up; keepalive
/// probes and TCP_USER_TIMEOUT end such a connection, and the call fails, in well under a
/// minute.
fn client_for(config: kube::Config, proxy: Option<&Proxy>) -> Result<kube::Client, kube::Error> {
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
        return client_over(config, http);
    };
    match proxy.protocol() {
        ProxyProtocol::Http => client_over(config, proxy.named(proxy.tunnel(http))),
        ProxyProtocol::Https => {
            // As kubectl, the proxy's TLS is the cluster's: its certificate authority, if
            // the kubeconfig names one.
            let tls = config.rustls_https_connector_with_connector(http)?;
            client_over(config, proxy.named(proxy.tunnel(tls)))
        }
        ProxyProtocol::Socks5 => client_over(config, proxy.named(proxy.socks(http))),
    }
}

/// A client for `config` whose connections to the API server `connector` makes.
fn client_over<C>(config: kube::Config, connector: C) -> Result<kube::Client, kube::Error>
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
        .timeout(ANSWER_DEADLINE)
        .service(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https),
        );
    Ok(kube::Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    #[test]
    fn parses_kubectl_style_flags() {
        let cli = Cli::parse_from([
            "x",
            "-n",
            "shop",
            "--context",
            "dev",
            "--kubeconfig",
            "/tmp/kc",
        ]);
        assert_eq!(cli.cluster.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.cluster.context.as_deref(), Some("dev"));
        assert_eq!(
            cli.cluster.kubeconfig.as_deref(),
            Some(std::path::Path::new("/tmp/kc"))
        );
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: a
contexts:
- name: a
  context: {cluster: c, user: u, namespace: team-a}
- name: b
  context: {cluster: c, user: u}
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: u
  user: {token: t}
"#;

    async fn connect_with(args: ClusterArgs) -> Connection {
        try_connect_with(args).await.expect("connect")
    }

    async fn try_connect_with(args: ClusterArgs) -> Result<Connection, ClusterError> {
        // A directory of each call's own: tests run at once, and each removes its own.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kubedev-kc-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).expect("write kubeconfig");
        let connected = ClusterArgs {
            kubeconfig: Some(path),
            ..args
        }
        .connect()
        .await;
        std::fs::remove_dir_all(&dir).expect("clean up");
        connected
    }

    #[tokio::test]
    async fn a_context_the_kubeconfig_lacks_is_named() {
        let missing = try_connect_with(ClusterArgs {
            context: Some("nope".into()),
            ..ClusterArgs::default()
        })
        .await
        .expect_err("no such context");
        assert_eq!(
            missing.to_string(),
            "context \"nope\" does not exist (`kubectl config get-contexts` lists them)"
        );
    }

    #[tokio::test]
    async fn namespace_comes_from_flag_then_context_then_default() {
        let from_context = connect_with(ClusterArgs::default()).await;
        assert_eq!(from_context.namespace, "team-a");
        assert_eq!(from_context.context.as_deref(), Some("a"));

        let other_context = connect_with(ClusterArgs {
            context: Some("b".into()),
            ..ClusterArgs::default()
        })
        .await;
        assert_eq!(other_context.namespace, "default");
        assert_eq!(other_context.context.as_deref(), Some("b"));

        let from_flag = connect_with(ClusterArgs {
            namespace: Some("n1".into()),
            context: Some("a".into()),
            ..ClusterArgs::default()
        })
        .await;
        assert_eq!(from_flag.namespace, "n1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_api_server_never_answers_fails_at_the_deadline() {
        // Takes the connection and the request, and says nothing.
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
        let config = kube::Config::new(url.parse().expect("url"));
        let client = client_for(config, None).expect("client");
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(ANSWER_DEADLINE * 2, client.apiserver_version())
            .await
            .expect("the request gave up by itself");
        assert!(answer.is_err(), "no answer, yet {answer:?}");
        assert!(
            started.elapsed() >= ANSWER_DEADLINE,
            "failed only at the deadline"
        );
    }

    /// What a request through the proxy at `proxy_url` fails with, its causes after it.
    async fn failure_through(proxy_url: &str) -> String {
        // Only the proxy is dialled; the server is named in the CONNECT request.
        let server: hyper::Uri = "https://127.0.0.1:6443".parse().expect("server");
        let proxy = proxy::choose(&server, Some(proxy_url), &ProxyEnvironment::default())
            .expect("usable")
            .expect("a proxy");
        let client = client_for(kube::Config::new(server), Some(&proxy)).expect("client");
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
