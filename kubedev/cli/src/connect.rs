//! `connect`: the cluster's network on this machine with no workload touched, through an
//! agent pod of the session's own (`kubedev::session::connect`). Held by tunneld and
//! covered by a lease like any session (see `life`): the pod goes when the session ends,
//! however it ends.

use std::process::ExitCode;

use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::mode::Mode;
use kubedev::session::{self, connect};
use kubedev::tunneld::Hold;

use super::args::SessionLife;
use super::config::{self, ImageSource};
use super::life::{
    Joining, Life, Live, Session, command_network, forget_in_tunneld, join_tunneld, live_through,
    release_after_the_end,
};
use super::output::spinner;
use super::reclaim::reclaim_expired;

/// The session's name when `--name` does not give one.
const DEFAULT_NAME: &str = "connect";

pub(super) async fn run_connect(
    mode: Mode,
    cluster: &ClusterArgs,
    args: SessionLife,
) -> anyhow::Result<ExitCode> {
    let connection = cluster.connect().await?;
    let (image, image_source) =
        config::agent_image(args.agent_image.as_deref(), connection.context.as_deref())?;
    let name = args.name.clone().unwrap_or_else(|| DEFAULT_NAME.into());
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
            pods: 1,
            timeout: self.args.timeout,
        };
        let proxy = self.args.proxy_choices();
        let (variables, status) = join_tunneld(self.connection, &joining, proxy, &[]).await?;
        eprintln!(
            "connected: the cluster's network is here, through pod {} in namespace {}",
            self.pod, self.connection.namespace
        );
        Ok(Live {
            variables,
            mounted: None,
            command_network: command_network(status),
        })
    }

    async fn end(&self, hold: Option<Hold>) -> anyhow::Result<()> {
        end_connect(self.connection, self.name, Some(self.owner), hold).await
    }

    fn pods((): &()) -> usize {
        1
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
    forget_in_tunneld(connection, name).await;
    connect::end_connect(&connection.client, &connection.namespace, name, owner).await?;
    // Only now: had this process died before, tunneld would have deleted the pod.
    release_after_the_end(hold).await;
    eprintln!("connect session {name:?} ended");
    Ok(())
}
