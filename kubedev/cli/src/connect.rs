//! `connect`: the cluster's network on this machine with no workload touched, through an
//! agent pod of the session's own (`kubedev::session::connect`). Held by tunneld and
//! covered by a lease like any session: the pod goes when the session ends, however it
//! ends.

use std::process::ExitCode;

use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{self, ControlError, ControlRequest, Hold, ProxyChoices};
use kubedev::inject::Mode;
use kubedev::session::{self, connect};
use kubedev_process::signals::StopSignals;

use super::args::SessionLife;
use super::command_of;
use super::config;
use super::links::Watched;
use super::output::spinner;
use super::reclaim::reclaim_expired;
use super::run::{
    Identity, Joining, Live, Stayed, command_resolver, end_lease, hold_tunneld, join_tunneld,
    publish_hint, stay, take_lease,
};
use super::tunneld::tunneld_socket;

/// The session's name when `--name` does not give one.
const DEFAULT_NAME: &str = "connect";

pub(super) async fn run_connect(
    mode: Mode,
    cluster: &ClusterArgs,
    life: SessionLife,
) -> anyhow::Result<ExitCode> {
    let connection = cluster.connect().await?;
    let (image, image_source) =
        config::agent_image(life.agent_image.as_deref(), connection.context.as_deref())?;
    let name = life.name.clone().unwrap_or_else(|| DEFAULT_NAME.into());
    let owner = session::random_id()?;
    reclaim_expired(&connection, &owner, life.timeout).await;
    let mut signals = StopSignals::listen()?;
    let pod = connect::pod_name(&name);
    let identity = Identity {
        mode,
        name: &name,
        owner: &owner,
        target: &format!("pod/{pod}"),
    };
    let lease = take_lease(&connection, &identity, life.lease).await?;
    let held = control::Held {
        name: name.clone(),
        owner: owner.clone(),
        namespace: connection.namespace.clone(),
        workload: None,
        timeout: life.timeout,
        lease,
    };
    let hold = match hold_tunneld(&connection, cluster, held).await {
        Ok(hold) => hold,
        Err(err) => {
            end_lease(&connection, &owner).await;
            return Err(err);
        }
    };
    let token = session::random_id()?;
    let bar = spinner(format!(
        "starting pod {pod} in namespace {}",
        connection.namespace
    ));
    let started = tokio::select! {
        started = connect::start_connect(
            &connection.client,
            &connection.namespace,
            &name,
            &owner,
            &token,
            &image,
            life.timeout,
        ) => started,
        () = signals.recv() => {
            drop(bar);
            eprintln!("stopped while starting");
            end_connect(&connection, &name, Some(&owner), Some(hold)).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    drop(bar);
    if let Err(err) = started {
        let _ = hold.release().await;
        end_lease(&connection, &owner).await;
        let hint = err
            .cannot_pull_agent()
            .then(|| format!("\n{}", publish_hint(mode, &image, &image_source)));
        let err = anyhow::Error::from(err);
        anyhow::bail!("{err:#}{}", hint.unwrap_or_default());
    }
    let agents = connect::selector(&name);
    let joining = Joining {
        mode,
        name: &name,
        agents: &agents,
        token: &token,
        forwards: &[],
        pods: 1,
        timeout: life.timeout,
    };
    let proxy = ProxyChoices {
        also_proxy: life.also_proxy.clone(),
        never_proxy: life.never_proxy.clone(),
    };
    let joined = tokio::select! {
        joined = join_tunneld(&connection, &joining, proxy, &[]) => joined.map(Some),
        () = signals.recv() => Ok(None),
    };
    let (variables, network) = match joined {
        Ok(Some(joined)) => joined,
        stopped_or_failed => {
            end_connect(&connection, &name, Some(&owner), Some(hold)).await?;
            return stopped_or_failed.map(|_| ExitCode::SUCCESS);
        }
    };
    eprintln!(
        "connected: the cluster's network is here, through pod {pod} in namespace {}",
        connection.namespace
    );
    if life.detach {
        hold.release().await?;
        eprintln!(
            "session {name:?} is live; end it with `{} leave {name}`",
            command_of(mode)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let live = Live {
        variables,
        mounted: None,
        command_resolver: command_resolver(network),
    };
    let links = Watched {
        socket: tunneld_socket(&connection)?,
        session: name.clone(),
        mode,
        wanted: 1,
    };
    let mut hold = hold;
    match stay(&life.command, &live, &mut signals, &mut hold, links).await? {
        Stayed::Done(code) => {
            end_connect(&connection, &name, Some(&owner), Some(hold)).await?;
            Ok(code)
        }
        Stayed::Lost(reason) => {
            let _ = hold.release().await;
            anyhow::bail!("{reason}: the session is over")
        }
        Stayed::TunneldGone => {
            end_connect(&connection, &name, Some(&owner), Some(hold)).await?;
            anyhow::bail!("tunneld exited during the session: the session was ended")
        }
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
    if let Some(hold) = hold
        && let Err(err) = hold.release().await
    {
        eprintln!("warning: tunneld: {err}");
    }
    eprintln!("connect session {name:?} ended");
    Ok(())
}

/// Has tunneld drop session `name`'s tunnels, if it runs.
pub(super) async fn forget_in_tunneld(connection: &Connection, name: &str) {
    if let Ok(socket) = tunneld_socket(connection) {
        match control::request(
            &socket,
            &ControlRequest::RemoveSession { name: name.into() },
        )
        .await
        {
            Ok(_) | Err(ControlError::NotRunning(_)) => {}
            Err(err) => eprintln!("warning: {err}"),
        }
    }
}
