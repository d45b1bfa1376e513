//! kubectl-style cluster selection: `-n/--namespace`, `--context`, `--kubeconfig`
//! and the `KUBECONFIG` variable, resolved the way kubectl resolves them; the API server
//! is reached through the proxy kubectl would use ([`proxy`]), as the user `--as` names
//! (`impersonation`), with kubectl's `--request-timeout`.

mod client;
mod impersonation;

pub(crate) use impersonation::digest_name;
mod kubeconfig_files;
pub mod proxy;

pub use client::{interrupted, unanswered};
pub use kubeconfig_files::read_kubeconfig;

use client::{ANSWER_DEADLINE, client_for};

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use proxy::{Proxy, ProxyEnvironment, ProxyError};

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
    /// `--as-group` was given without `--as`.
    #[error("--as-group needs --as: groups are impersonated along with a user")]
    GroupsWithoutUser,
    /// The client could not be configured (its TLS settings, say).
    #[error("cannot build a Kubernetes client")]
    Client {
        /// Why.
        source: kube::Error,
    },
}

/// The flags every plugin shares to pick a cluster, user and namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
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

    /// Act as this user (impersonation, as kubectl's --as): the kubeconfig's user must be
    /// allowed to impersonate.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,

    /// Act in this group as well; repeat for more (needs --as).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_groups: Vec<String>,

    /// How long the API server may take to answer one request, e.g. 30s or 2m; 0 means no
    /// limit [default: 60s].
    #[arg(long, global = true, value_name = "DURATION",
          value_parser = crate::duration::parse_limit)]
    pub request_timeout: Option<Duration>,
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
    /// Who the client is, in 16 hex digits: a digest of the API server, the kubeconfig's
    /// user entry and whom it impersonates (`--as`). Each identity has a tunneld of its
    /// own, whatever the contexts are named.
    pub identity: String,
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
            .field("identity", &self.identity)
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
        let user = user_of(&kubeconfig, context.as_deref()).unwrap_or_default();
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| ClusterError::Invalid { source })?;
        impersonation::impersonate(
            &mut config.auth_info,
            self.as_user.as_deref(),
            &self.as_groups,
        )?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let identity = impersonation::identity(&server, &user, &config.auth_info);
        let client = client_for(config, proxy.as_ref(), self.answer_deadline())
            .map_err(|source| ClusterError::Client { source })?;
        Ok(Connection {
            client,
            namespace,
            context,
            identity,
            server,
            proxy,
        })
    }

    /// How long a request may wait for its answer: `--request-timeout`, where 0 is no
    /// limit, else [`ANSWER_DEADLINE`].
    fn answer_deadline(&self) -> Option<Duration> {
        match self.request_timeout {
            None => Some(ANSWER_DEADLINE),
            Some(Duration::ZERO) => None,
            Some(limit) => Some(limit),
        }
    }
}

/// The name of the user entry `context` uses.
fn user_of(kubeconfig: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let named = kubeconfig
        .contexts
        .iter()
        .find(|named| Some(named.name.as_str()) == context)?;
    named.context.as_ref()?.user.clone()
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
}
