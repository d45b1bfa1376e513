//! A session's life, the same for a workload's session (`run`) and a connect session
//! (`connect`): its lease taken and tunneld holding it before anything changes, started,
//! made usable here (live), kept in the foreground (until Ctrl-C, until `-- CMD` exits, or
//! until tunneld ends it) or detached (until `leave`), and ended however it ends.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use super::args::SessionLife;
use super::command::{CommandNetwork, run_command};
use super::command_of;
use super::links::{Watched, report_links};
use super::output::{network_notes, spinner};
use super::together::{Member, Stop};
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{
    AgentOwner, ControlRequest, Forward, Held, PodPort, ProxyChoices, SessionKey,
};
use kubedev::mode::Mode;
use kubedev::mount::Mount;
use kubedev::session;
use kubedev::session::lease::Holder;
use kubedev::tunneld::{self, Hold, HoldNews};
use kubedev::workload::{WorkloadRef, check_agents};

/// How often the pods are checked for a failing agent while tunneld links to them.
const AGENT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What differs between a workload's session and a connect session.
pub(super) trait Session {
    /// What starting gave.
    type Started;
    /// Changes the cluster for the session; on failure, puts back what it changed.
    async fn start(&self) -> anyhow::Result<Self::Started>;
    /// Makes the started session usable here.
    async fn go_live(&self, started: &Self::Started) -> anyhow::Result<Live>;
    /// Ends the session: tunneld forgets it and the cluster gets back what was there; then
    /// `hold`, if any, is released.
    async fn end(&self, hold: Option<Hold>) -> anyhow::Result<()>;
    /// How many agent pods tunneld links to while the session lasts.
    fn pods(started: &Self::Started) -> usize;
}

/// Who a session is and how it lives, whatever it changes.
pub(super) struct Life<'a> {
    pub(super) connection: &'a Connection,
    pub(super) cluster: &'a ClusterArgs,
    pub(super) mode: Mode,
    pub(super) name: &'a str,
    /// This run of the plugin (see `Plan::owner`).
    pub(super) owner: &'a str,
    /// Its workload, or none for a connect session (whose pod is its `target`).
    pub(super) workload: Option<WorkloadRef>,
    /// What it changes, for its lease: `deployment/web`, or a connect session's pod.
    pub(super) target: String,
    pub(super) args: &'a SessionLife,
    /// The sessions it starts and ends with (`-f`), if any.
    pub(super) together: Option<Member<'a>>,
}

/// The exit status of a run stopped while it starts its session (the cluster still being
/// changed), as shells report a command Ctrl-C stopped (128 + SIGINT); once the session
/// takes traffic, a stop signal is how it is meant to end, with 0.
const INTERRUPTED: u8 = 130;

/// Lives `session` through: held, started, made live, then detached or kept until it
/// ends. A stop signal at any point ends it with everything put back.
pub(super) async fn live_through<S: Session>(
    life: &Life<'_>,
    session: &S,
) -> anyhow::Result<ExitCode> {
    // Listening from the start: a stop signal during set-up must not kill the process with
    // the cluster half changed; set-up stops and the session is ended.
    let mut stop = Stop::listen(life.together)?;
    let Some(turn) = stop.turn().await else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    let hold = hold(life).await?;
    let (started, live, hold) = match set_up(life, session, &mut stop, hold).await? {
        SetUp::Live(started, live, hold) => (started, *live, hold),
        SetUp::Ended(code) => return Ok(code),
    };
    turn.went_live(life.name);
    if life.args.detach {
        // The session lives in tunneld until `leave`, and the mount with sshfs.
        hold.release().await?;
        std::mem::forget(live.mounted);
        if life.together.is_none() {
            eprintln!(
                "session {:?} is live; end it with `{} leave {} -n {}`",
                life.name,
                command_of(life.mode),
                life.name,
                life.connection.namespace
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Run together, a session's command waits for the others to be live.
    if !stop.all_live().await {
        drop(live);
        session.end(Some(hold)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let pods = S::pods(&started);
    stay_until_the_end(life, session, pods, live, stop, hold).await
}

/// How setting a session up ended.
enum SetUp<Started> {
    /// It is live, held.
    Live(Started, Box<Live>, Hold),
    /// It was stopped, and ended.
    Ended(ExitCode),
}

/// Starts the held session and makes it live; ends it where that fails or it is stopped.
async fn set_up<S: Session>(
    life: &Life<'_>,
    session: &S,
    stop: &mut Stop<'_>,
    mut hold: Hold,
) -> anyhow::Result<SetUp<S::Started>> {
    let started = tokio::select! {
        started = session.start() => started,
        () = stop.recv() => {
            eprintln!("stopped while starting session {}", life.name);
            session.end(Some(hold)).await?;
            return Ok(SetUp::Ended(ExitCode::from(INTERRUPTED)));
        }
    };
    let started = match started {
        Ok(started) => started,
        Err(err) => {
            // Nothing is left to restore: `start` put back what it changed.
            release_after_the_end(Some(hold)).await;
            end_lease(life.connection, life.owner).await;
            return Err(err);
        }
    };
    let live = tokio::select! {
        live = session.go_live(&started) => {
            live.and_then(|live| for_the_command(live, &life.args.command)).map(Some)
        }
        () = stop.recv() => Ok(None),
        // The lease can be lost while the session goes live (the machine slept): tunneld
        // has ended it, and the plugin says why.
        news = hold.news() => match news {
            HoldNews::Ended(reason) => {
                let _ = hold.release().await;
                anyhow::bail!("{reason}: the session is over");
            }
            HoldNews::Released | HoldNews::DaemonGone => Err(anyhow::anyhow!(
                "tunneld exited while the session was going live (see {})",
                tunneld::log_path(&tunneld::socket_for(life.connection)?).display()
            )),
        },
    };
    match live {
        Ok(Some(live)) => Ok(SetUp::Live(started, Box::new(live), hold)),
        Ok(None) => {
            session.end(Some(hold)).await?;
            Ok(SetUp::Ended(ExitCode::SUCCESS))
        }
        Err(failed) => {
            // Why it failed comes first, whether or not ending it went well.
            if let Err(ending) = session.end(Some(hold)).await {
                eprintln!("error: ending the session: {ending:#}");
            }
            Err(failed)
        }
    }
}

/// Gives `-- CMD`, if there is one, the container's environment but the variables that stay
/// this machine's ([`kubedev::env::for_command`]), saying which; refused if a name is not
/// one every shell can carry.
fn for_the_command(mut live: Live, command: &[String]) -> anyhow::Result<Live> {
    let Some(program) = command.first() else {
        return Ok(live);
    };
    let (given, kept_here) = kubedev::env::for_command(&live.variables)?;
    if !kept_here.is_empty() {
        eprintln!(
            "warning: {program} keeps this machine's {}: the container's values would decide \
             how programs here load code or run (the env files have them)",
            kept_here.join(", ")
        );
    }
    live.variables = given;
    Ok(live)
}

/// Keeps a live foreground session until it ends, then ends it.
async fn stay_until_the_end(
    life: &Life<'_>,
    session: &impl Session,
    pods: usize,
    live: Live,
    mut stop: Stop<'_>,
    mut hold: Hold,
) -> anyhow::Result<ExitCode> {
    let socket = tunneld::socket_for(life.connection)?;
    let links = Watched {
        socket: socket.clone(),
        session: SessionKey::new(&life.connection.namespace, life.name),
        mode: life.mode,
        wanted: pods,
    };
    // Sessions run together say it once, when they are all live.
    let say_how_to_end = life.args.command.is_empty() && life.together.is_none();
    if say_how_to_end {
        eprintln!("press Ctrl-C to end the session");
    }
    let stayed = stay(&life.args.command, &live, &mut stop, &mut hold, links).await?;
    // Unmounts the volumes before the session ends.
    drop(live);
    match stayed {
        Stayed::Done(code) => {
            session.end(Some(hold)).await?;
            Ok(code)
        }
        Stayed::Lost(reason) => {
            let _ = hold.release().await;
            anyhow::bail!("{reason}: the session is over")
        }
        Stayed::TunneldGone => {
            session.end(Some(hold)).await?;
            anyhow::bail!(
                "tunneld exited during the session (see {}): the session was ended",
                tunneld::log_path(&socket).display()
            )
        }
    }
}

/// Takes the session's lease and has tunneld hold the session, so that it is ended if
/// this process dies (and only this run's session: see `Plan::owner`).
async fn hold(life: &Life<'_>) -> anyhow::Result<Hold> {
    let lease = take_lease(life).await?;
    let held = Held {
        name: life.name.to_owned(),
        owner: life.owner.to_owned(),
        namespace: life.connection.namespace.clone(),
        workload: life.workload.clone(),
        timeout: life.args.timeout,
        lease,
    };
    let held = async {
        let socket = tunneld::socket_for(life.connection)?;
        let start = tunneld::start_command(&socket, life.cluster);
        let running = tunneld::ensure_running(&socket, start, &tunneld::log_path(&socket)).await?;
        if let Some(skew) = running.skew(env!("CARGO_PKG_VERSION")) {
            eprintln!("warning: {skew}");
        }
        tunneld::hold(&socket, held).await
    };
    match held.await {
        Ok(hold) => Ok(hold),
        Err(err) => {
            end_lease(life.connection, life.owner).await;
            Err(err.into())
        }
    }
}

/// Takes the session's lease; returns its lifetime, or none where the user's role has no
/// leases (the session then works, but only `leave` can end it if this machine dies).
async fn take_lease(life: &Life<'_>) -> anyhow::Result<Option<Duration>> {
    let lifetime = life.args.lease;
    let taken = session::lease::take_lease(
        &life.connection.client,
        &life.connection.namespace,
        &Holder::here(life.owner),
        life.name,
        &life.target,
        lifetime,
    )
    .await;
    match taken {
        Ok(()) => Ok(Some(lifetime)),
        Err(err) if err.is_forbidden() => {
            let command = command_of(life.mode);
            eprintln!(
                "warning: {err}; without a lease, a session whose machine dies stays in the \
                 cluster until someone runs `{command} leave {}` (`{command} role` prints the \
                 Role kubedev needs)",
                life.name
            );
            Ok(None)
        }
        Err(err) => Err(anyhow::Error::from(err).context("taking the session's lease")),
    }
}

/// Releases `hold`, if any, once the session's end was done by the plugin; a failure only
/// warns, since nothing is left for tunneld to restore.
pub(super) async fn release_after_the_end(hold: Option<Hold>) {
    if let Some(hold) = hold
        && let Err(err) = hold.release().await
    {
        eprintln!("warning: tunneld: {err}");
    }
}

/// Ends run `owner`'s lease where its session never reached the cluster.
async fn end_lease(connection: &Connection, owner: &str) {
    if let Err(err) =
        session::lease::end_lease(&connection.client, &connection.namespace, owner).await
    {
        eprintln!("warning: {err} (the next kubedev command in the namespace deletes it)");
    }
}

/// A session usable here.
pub(super) struct Live {
    /// The container's environment; once live, what `-- CMD` gets of it.
    pub(super) variables: BTreeMap<String, String>,
    pub(super) mounted: Option<Mount>,
    /// How `-- CMD` reaches the cluster's network.
    pub(super) command_network: CommandNetwork,
}

/// How a foreground session's stay ended.
enum Stayed {
    /// Ctrl-C, or `-- CMD` exited with this status: the session is to be ended.
    Done(ExitCode),
    /// The session is over without this run: tunneld says why.
    Lost(String),
    /// tunneld exited: the session's tunnels are gone.
    TunneldGone,
}

/// Keeps a foreground session until Ctrl-C, or runs `-- CMD` with its environment until
/// it exits, unless tunneld ends the session first.
/// Meanwhile, says when the links to the agents go and come back.
async fn stay(
    command: &[String],
    live: &Live,
    stop: &mut Stop<'_>,
    hold: &mut Hold,
    links: Watched,
) -> anyhow::Result<Stayed> {
    let mut news = None;
    let stop = async {
        tokio::select! {
            () = stop.recv() => {}
            told = hold.news() => news = Some(told),
            () = report_links(links) => {}
        }
    };
    let code = if command.is_empty() {
        stop.await;
        ExitCode::SUCCESS
    } else {
        run_command(command, &live.variables, &live.command_network, stop).await?
    };
    Ok(match news {
        None | Some(HoldNews::Released) => Stayed::Done(code),
        Some(HoldNews::Ended(reason)) => Stayed::Lost(reason),
        Some(HoldNews::DaemonGone) => Stayed::TunneldGone,
    })
}

/// A live session in the cluster, as tunneld is handed it.
pub(super) struct Joining<'a> {
    pub(super) mode: Mode,
    pub(super) name: &'a str,
    /// The label selector of its agent pods.
    pub(super) agents: &'a str,
    pub(super) token: &'a str,
    pub(super) forwards: &'a [Forward],
    /// What controls its agent pods: tunneld links to no other pod.
    pub(super) owner: AgentOwner,
    /// How many agent pods to link to.
    pub(super) pods: usize,
    pub(super) timeout: Duration,
}

/// Hands the session to tunneld, waits for a link to every pod and fetches the app's
/// environment; returns it and how `-- CMD` reaches the cluster's network.
pub(super) async fn join_tunneld(
    connection: &Connection,
    session: &Joining<'_>,
    proxy: ProxyChoices,
    to_pod: &[PodPort],
) -> anyhow::Result<(BTreeMap<String, String>, CommandNetwork)> {
    let socket = tunneld::socket_for(connection)?;
    let bar = spinner("connecting to the agents".into());
    let adding = ControlRequest::AddSession {
        name: session.name.to_owned(),
        namespace: connection.namespace.clone(),
        agents: session.agents.to_owned(),
        token: session.token.to_owned(),
        forwards: session.forwards.to_vec(),
        proxy,
        to_pod: to_pod.to_vec(),
        owner: Some(session.owner.clone()),
    };
    tunneld::request(&socket, &adding).await?;
    let wanted = session.pods;
    let deadline = tokio::time::Instant::now() + session.timeout;
    let mut agents_checked = tokio::time::Instant::now();
    let key = SessionKey::new(&connection.namespace, session.name);
    let status = loop {
        if agents_checked.elapsed() >= AGENT_CHECK_PERIOD {
            check_agents(&connection.client, &connection.namespace, session.agents).await?;
            agents_checked = tokio::time::Instant::now();
        }
        let status = tunneld::status(&socket).await?;
        let linked = status
            .sessions
            .iter()
            .find(|s| s.key() == key)
            .map_or(0, |s| s.linked_pods.len());
        bar.set_message(format!(
            "connecting to the agents: {linked}/{wanted} linked"
        ));
        if linked >= wanted {
            break status;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "tunneld could not reach the agents within {:?}; see {}",
            session.timeout,
            tunneld::log_path(&socket).display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    for note in network_notes(&status.network, command_of(session.mode)) {
        eprintln!("note: {note}");
    }
    let variables = tunneld::environment(&socket, &key).await?;
    let command_network = CommandNetwork::of(&status, &socket, &key);
    Ok((variables, command_network))
}

/// Has tunneld drop session `name`'s tunnels, if it runs and keeps them, and if its agent
/// pods are `owner`'s (whoever's, for none): a run whose start failed must not drop the
/// namesake another run added.
pub(super) async fn forget_in_tunneld(
    connection: &Connection,
    name: &str,
    owner: Option<&AgentOwner>,
    by_leave: bool,
) {
    let socket = match tunneld::socket_for(connection) {
        Ok(socket) => socket,
        Err(err) => return eprintln!("warning: {err}"),
    };
    // Only a session this machine's tunneld keeps: another machine's, or one stopped
    // while starting, is not there, and that is no news.
    let kept = (tunneld::status(&socket).await)
        .is_ok_and(|status| status.keeps(&connection.namespace, name));
    if !kept {
        return;
    }
    if let Err(err) = tunneld::forget(
        &socket,
        &SessionKey::new(&connection.namespace, name),
        owner,
        by_leave,
    )
    .await
    {
        eprintln!("warning: {err}");
    }
}
