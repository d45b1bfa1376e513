//! `connect`: the cluster's network on this machine with no workload touched, through an
//! agent pod of the session's own (`kubedev::session::connect`). Held by tunneld and
//! covered by a lease like any session (see `life`): the pod goes when the session ends,
//! however it ends.

use std::process::ExitCode;

use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{AgentOwner, NetworkStatus};
use kubedev::mode::Mode;
use kubedev::session::{self, connect};
use kubedev::tunneld::{self, Hold};

use super::args::SessionLife;
use super::config::{self, ImageSource};
use super::life::{
    Joining, Life, Live, Session, forget_in_tunneld, join_tunneld, live_through,
    release_after_the_end,
};
use super::output::spinner;
use super::reclaim::reclaim_expired;

/// What the session's name is made from when `--name` does not give one.
const DEFAULT_NAME_BASE: &str = "connect";

pub(super) async fn run_connect(
    mode: Mode,
    cluster: &ClusterArgs,
    args: SessionLife,
) -> anyhow::Result<ExitCode> {
    super::command::resolve_program(&args.command)?;
    let connection = cluster.connect().await?;
    let (image, image_source) =
        config::agent_image(args.agent_image.as_deref(), connection.context.as_deref())?;
    let name =
        (args.name.clone()).unwrap_or_else(|| session::naming::default_name(DEFAULT_NAME_BASE));
    let owner = session::random_id()?;
    reclaim_expired(&connection, &owner, args.timeout).await;
    let pod = connect::pod_name(&name);
    let life = Life {
        connection: &connection,
        cluster,
        mode,
        name: &name,
        owner: &owner,
        workload: None,
        target: format!("pod/{pod}"),
        args: &args,
        together: None,
    };
    let session = OwnPod {
        connection: &connection,
        mode,
        name: &name,
        owner: &owner,
        pod: &pod,
        token: session::random_id()?,
        image: &image,
        image_source: &image_source,
        args: &args,
    };
    live_through(&life, &session).await
}

/// A connect session, as its life sees it.
struct OwnPod<'a> {
    connection: &'a Connection,
    mode: Mode,
    name: &'a str,
    owner: &'a str,
    pod: &'a str,
    /// The secret its agent takes.
    token: String,
    image: &'a str,
    image_source: &'a ImageSource,
    args: &'a SessionLife,
}

impl Session for OwnPod<'_> {
    type Started = ();

    async fn start(&self) -> anyhow::Result<()> {
        let namespace = &self.connection.namespace;
        let bar = spinner(format!(
            "starting pod {} in namespace {namespace}",
            self.pod
        ));
        let started = connect::start_connect(
            &self.connection.client,
            namespace,
            self.name,
            self.owner,
            &self.token,
            self.image,
            self.args.timeout,
        )
        .await;
        drop(bar);
        started.map_err(|err| {
            let hint = err.cannot_pull_agent().then(|| {
                let hint = config::publish_hint(self.mode, self.image, self.image_source);
                format!("\n{hint}")
            });
            let err = anyhow::Error::from(err);
            anyhow::anyhow!("{err:#}{}", hint.unwrap_or_default())
        })
    }

    async fn go_live(&self, (): &()) -> anyhow::Result<Live> {
        let agents = connect::selector(self.name);
        let joining = Joining {
            mode: self.mode,
            name: self.name,
            agents: &agents,
            token: &self.token,
            forwards: &[],
            owner: AgentOwner::Pod {
                name: self.pod.to_owned(),
            },
            pods: 1,
            timeout: self.args.timeout,
        };
        let proxy = self.args.proxy_choices();
        let (variables, command_network) =
            join_tunneld(self.connection, &joining, proxy, &[]).await?;
        let socket = tunneld::socket_for(self.connection)?;
        let network = tunneld::status(&socket).await?.network;
        eprintln!(
            "{}",
            connected(self.pod, &self.connection.namespace, &network)
        );
        Ok(Live {
            variables,
            mounted: None,
            command_network,
        })
    }

    async fn end(&self, hold: Option<Hold>) -> anyhow::Result<()> {
        end_connect(self.connection, self.name, Some(self.owner), hold).await
    }

    fn pods((): &()) -> usize {
        1
    }
}

/// What a connect session brought here: the cluster's network only where tunneld says it
/// is up.
fn connected(pod: &str, namespace: &str, network: &NetworkStatus) -> String {
    match network {
        NetworkStatus::Up { .. } => format!(
            "connected: the cluster's network is here, through pod {pod} in namespace {namespace}"
        ),
        NetworkStatus::Unavailable { .. } | NetworkStatus::Off => format!(
            "connected to pod {pod} in namespace {namespace}, but without the cluster's \
             network on this whole machine: service names and pod and service IPs reach the \
             cluster only from `-- CMD` and through tunneld's proxy (see the note above)"
        ),
    }
}

/// Ends connect session `name` (of run `owner`, if given): tunneld forgets it and its pod
/// is deleted; then the hold, if any, is released.
pub(super) async fn end_connect(
    connection: &Connection,
    name: &str,
    owner: Option<&str>,
    hold: Option<Hold>,
) -> anyhow::Result<()> {
    let agents = AgentOwner::Pod {
        name: connect::pod_name(name),
    };
    forget_in_tunneld(connection, name, Some(&agents), hold.is_none()).await;
    connect::end_connect(&connection.client, &connection.namespace, name, owner).await?;
    // Only now: had this process died before, tunneld would have deleted the pod.
    release_after_the_end(hold).await;
    eprintln!("connect session {name:?} ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_claims_the_network_only_where_it_is_up() {
        let unavailable = NetworkStatus::Unavailable {
            reason: "creating a TUN device needs root or CAP_NET_ADMIN".into(),
        };
        for network in [unavailable, NetworkStatus::Off] {
            let said = connected("kubedev-connect-x", "shop", &network);
            assert!(!said.contains("network is here"), "{said}");
            assert!(said.contains("without the cluster's network"), "{said}");
        }
        let up = NetworkStatus::Up {
            routes: Vec::new(),
            ranges: Vec::new(),
            dns: "198.18.0.53".into(),
            resolver: kubedev::control::ResolverStatus::ResolvConf {
                path: "/etc/resolv.conf".into(),
            },
            helper: None,
        };
        assert!(connected("p", "shop", &up).contains("the cluster's network is here"));
    }
}
