//! `leave NAME` and `leave --all`: ending sessions, and restoring what they changed.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

use super::command_of;
use super::connect::end_connect;
use super::run::end_session;
use super::survey::{CONNECT_MODE, Listed, survey};
use kubedev::cluster::Connection;
use kubedev::control::DaemonStatus;
use kubedev::mode::Mode;
use kubedev::session::connect;
use kubedev::session::lease::Holder;
use kubedev::tunneld;
use kubedev::workload::WorkloadRef;

/// What `leave` was asked to end.
pub(super) struct Ending<'a> {
    /// The session; none for `--all`.
    pub(super) name: Option<&'a str>,
    /// End it even though another machine holds it.
    pub(super) force: bool,
    /// How long to wait for the restored pods.
    pub(super) timeout: Duration,
}

/// `leave NAME`, or `leave --all`: the sessions this machine's tunneld keeps for the context,
/// in every namespace; ends them and restores their workloads, and names the sessions of
/// other machines (or of a tunneld that is gone) it left alone. NAME held by another
/// machine is ended only with `--force`.
pub(super) async fn leave(
    connection: &Connection,
    socket: &Path,
    mode: Mode,
    ending: Ending<'_>,
) -> anyhow::Result<()> {
    let Some(name) = ending.name else {
        return leave_all(connection, socket, mode, ending.timeout).await;
    };
    let daemon = tunneld::status(socket).await.ok();
    let survey = survey(connection, daemon.as_ref(), false).await?;
    let rows = survey.rows(daemon.as_ref());
    let meant = session_meant(&rows, daemon.as_ref(), name)?;
    if meant != name {
        eprintln!("ending session {meant} (on {name})");
    }
    let name = meant.as_str();
    if !ending.force {
        refuse_if_held_elsewhere(connection, (&rows, daemon.as_ref()), mode, name)?;
    }
    let named: Vec<&WorkloadRef> = survey
        .sessions
        .iter()
        .filter(|(_, record)| record.sessions().any(|session| session.name == name))
        .map(|(workload, _)| &workload.reference)
        .collect();
    match named.as_slice() {
        [] => {}
        [workload] => {
            return end_session(connection, name, workload, ending.timeout, None).await;
        }
        several => anyhow::bail!(
            "sessions named {name:?} are on {} in namespace {}: end this machine's with `{} \
             leave --all`",
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            connection.namespace,
            command_of(mode)
        ),
    }
    let connects = connect::connects_in(&connection.client, &connection.namespace).await?;
    if connects.iter().any(|c| c.session == name) {
        return end_connect(connection, name, None, None).await;
    }
    Err(NoSuchSession {
        name: name.to_owned(),
        namespace: connection.namespace.clone(),
        command: command_of(mode),
    }
    .into())
}

/// `leave NAME` found no session of that name.
#[derive(Debug)]
pub(super) struct NoSuchSession {
    name: String,
    namespace: String,
    command: &'static str,
}

impl std::fmt::Display for NoSuchSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no session {:?} in namespace {} (see `{} list -A`)",
            self.name, self.namespace, self.command
        )
    }
}

impl std::error::Error for NoSuchSession {}

/// The session `name` means: the session of that name, else this machine's one session
/// (kept by its tunneld, or held by this user here) on the workload of that name (`leave
/// web` ends `web-alice`); `connect` means this
/// machine's one connect session. Another's session is ended only by its own name: where
/// only others' sessions are on the workload, they are named, and nothing ends.
fn session_meant(
    rows: &[Listed],
    daemon: Option<&DaemonStatus>,
    name: &str,
) -> anyhow::Result<String> {
    // This machine's: kept by this identity's tunneld, else held by this user here (its
    // tunneld gone, or another identity's).
    let here = Holder::here("");
    let in_tunneld = |row: &Listed| kept_by(daemon, row);
    let held_here =
        |row: &Listed| (row.holder.as_ref()).is_some_and(|h| h.same_user_and_host(&here));
    let kept = |row: &Listed| in_tunneld(row) || held_here(row);
    let on_it = |row: &&Listed| match row.mode.as_str() {
        CONNECT_MODE => name == CONNECT_MODE,
        _ => row.workload == name || row.workload.split_once('/').is_some_and(|(_, w)| w == name),
    };
    let mine_by = |mine: &dyn Fn(&Listed) -> bool| -> Vec<&str> {
        (rows.iter().filter(on_it))
            .filter(|row| mine(row) && row.name != name)
            .map(|row| row.name.as_str())
            .collect()
    };
    let in_this_tunneld = mine_by(&in_tunneld);
    let mine = match in_this_tunneld.is_empty() {
        true => mine_by(&held_here),
        false => in_this_tunneld,
    };
    if let Some(named) = rows.iter().find(|row| row.name == name) {
        if kept(named) || mine.is_empty() {
            return Ok(name.to_owned());
        }
        anyhow::bail!(
            "{name} names a session this machine does not hold, and the workload of this \
             machine's session {}: say which session to end",
            mine.join(", ")
        );
    }
    match mine[..] {
        [one] => Ok(one.to_owned()),
        [] => {
            let theirs: Vec<&str> = (rows.iter().filter(on_it))
                .map(|row| row.name.as_str())
                .collect();
            anyhow::ensure!(
                theirs.is_empty(),
                "no session of this machine is on {name}; others' are: {} (end one by its \
                 name)",
                theirs.join(", ")
            );
            Ok(name.to_owned())
        }
        _ => anyhow::bail!(
            "this machine has several sessions on {name}: {}; say which",
            mine.join(", ")
        ),
    }
}

/// Fails, naming who holds it, where session `name` is neither kept by this machine's
/// tunneld nor held by this user here, and its lease is live: a teammate's session is
/// theirs to end.
fn refuse_if_held_elsewhere(
    connection: &Connection,
    (rows, daemon): (&[Listed], Option<&DaemonStatus>),
    mode: Mode,
    name: &str,
) -> anyhow::Result<()> {
    let namespace = &connection.namespace;
    let mine = daemon.is_some_and(|daemon| daemon.keeps(namespace, name));
    let Some(row) = rows.iter().find(|row| row.name == name) else {
        return Ok(());
    };
    let live = row.lease_ends.is_some_and(|ends| ends > Timestamp::now());
    let here = Holder::here("");
    let ours = |holder: &Holder| holder.same_user_and_host(&here);
    if let (false, true, Some(holder)) = (mine, live, row.holder.as_ref().filter(|h| !ours(h))) {
        anyhow::bail!(
            "session {name:?} on {} is held by {} (its lease is live): it is theirs to end; \
             end it anyway, taking its traffic back from them, with `{} leave {name} -n \
             {namespace} --force`",
            row.workload,
            holder.describe(),
            command_of(mode)
        );
    }
    Ok(())
}

/// Whether `daemon`, this machine's tunneld for the context, keeps the session of `row`.
fn kept_by(daemon: Option<&DaemonStatus>, row: &Listed) -> bool {
    daemon.is_some_and(|daemon| daemon.keeps(&row.namespace, &row.name))
}

async fn leave_all(
    connection: &Connection,
    socket: &Path,
    mode: Mode,
    timeout: Duration,
) -> anyhow::Result<()> {
    let daemon = tunneld::status(socket).await.ok();
    let survey = survey(connection, daemon.as_ref(), true).await?;
    survey.note_limits();
    let (mine, others): (Vec<Listed>, Vec<Listed>) =
        (survey.rows(daemon.as_ref()).into_iter()).partition(|row| kept_by(daemon.as_ref(), row));
    if mine.is_empty() {
        eprintln!("no kubedev sessions of this machine");
    }
    // Each session is ended whatever became of the one before; one the connection failed
    // for is tried once more.
    let mut failed = Vec::new();
    for row in &mine {
        let ended = match end_row(connection, row, timeout).await {
            Err(err) if err.chain().any(kubedev::cluster::interrupted) => {
                eprintln!("session {}: {err:#}; trying again", row.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                end_row(connection, row, timeout).await
            }
            ended => ended,
        };
        if let Err(err) = ended {
            eprintln!("error: session {}: {err:#}", row.name);
            failed.push(row.name.as_str());
        }
    }
    for row in &others {
        let holder = row
            .holder
            .as_ref()
            .map_or_else(|| "no lease".to_owned(), Holder::describe);
        eprintln!(
            "left alone: session {} on {} in namespace {} ({holder}); end it with `{} leave {} -n {} --force`",
            row.name,
            row.workload,
            row.namespace,
            command_of(mode),
            row.name,
            row.namespace
        );
    }
    match failed.is_empty() {
        true => Ok(()),
        false => anyhow::bail!("sessions not ended: {}", failed.join(", ")),
    }
}

/// Ends the session of `row`, of this machine.
async fn end_row(connection: &Connection, row: &Listed, timeout: Duration) -> anyhow::Result<()> {
    let in_namespace = Connection {
        namespace: row.namespace.clone(),
        ..connection.clone()
    };
    if row.mode == CONNECT_MODE {
        return end_connect(&in_namespace, &row.name, None, None).await;
    }
    let workload: WorkloadRef = row.workload.parse().map_err(anyhow::Error::msg)?;
    end_session(&in_namespace, &row.name, &workload, timeout, None).await
}

#[cfg(test)]
mod tests {
    use kubedev::control::{NetworkStatus, SessionStatus};

    use super::*;

    fn row(name: &str, mode: &str, workload: &str) -> Listed {
        Listed {
            name: name.into(),
            mode: mode.into(),
            wiretap: false,
            workload: workload.into(),
            container: "app".into(),
            namespace: "shop".into(),
            holder: None,
            lease_ends: None,
            linked_pods: Vec::new(),
        }
    }

    /// This machine's tunneld, keeping sessions `names` in namespace shop.
    fn keeping(names: &[&str]) -> DaemonStatus {
        DaemonStatus {
            pid: 1,
            version: None,
            network: NetworkStatus::Off,
            proxy: None,
            sessions: (names.iter())
                .map(|name| SessionStatus {
                    name: (*name).into(),
                    namespace: "shop".into(),
                    linked_pods: Vec::new(),
                    wiretap: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_workloads_name_means_this_machines_one_session_on_it() {
        let rows = [
            row("web-alice", "intercept", "deployment/web"),
            row("web-bob", "intercept", "deployment/web"),
            row(
                "connect-alice",
                CONNECT_MODE,
                "pod/kubedev-connect-connect-alice",
            ),
        ];
        let mine = keeping(&["web-alice", "connect-alice"]);
        let meant = |name| session_meant(&rows, Some(&mine), name).expect("meant");
        assert_eq!(meant("web-bob"), "web-bob", "a session's own name wins");
        assert_eq!(meant("web"), "web-alice");
        assert_eq!(meant("deployment/web"), "web-alice");
        assert_eq!(meant("connect"), "connect-alice");
        assert_eq!(meant("db"), "db", "nothing on it: left to say so");
    }

    #[test]
    fn others_sessions_are_ended_only_by_their_own_names() {
        let rows = [
            row("web-bob", "intercept", "deployment/web"),
            row("web-carol", "intercept", "deployment/web"),
        ];
        let asked = session_meant(&rows, None, "web").expect_err("theirs");
        assert_eq!(
            asked.to_string(),
            "no session of this machine is on web; others' are: web-bob, web-carol (end one \
             by its name)"
        );
        // A session named like the workload of one of this machine's (a decoy, say).
        let rows = [
            row("web", CONNECT_MODE, "pod/kubedev-connect-web"),
            row("web-alice", "intercept", "deployment/web"),
        ];
        let mine = keeping(&["web-alice"]);
        let asked = session_meant(&rows, Some(&mine), "web").expect_err("which");
        assert!(
            asked.to_string().contains("say which session to end"),
            "{asked}"
        );
    }

    #[test]
    fn a_session_held_here_is_this_machines_with_its_tunneld_gone() {
        let mut mine = row("web-alice", "intercept", "deployment/web");
        mine.holder = Some(Holder::here("run-1"));
        let mut theirs = row("web-bob", "intercept", "deployment/web");
        theirs.holder = Some(Holder {
            owner: "run-2".into(),
            host: "bobs-laptop".into(),
            user: "bob".into(),
        });
        let meant = session_meant(&[theirs, mine], None, "web").expect("meant");
        assert_eq!(meant, "web-alice");
        // Held here twice (two identities): this identity's tunneld says which.
        let mut mine = row("web-alice", "intercept", "deployment/web");
        mine.holder = Some(Holder::here("run-1"));
        let mut other_identity = row("web-admin", "intercept", "deployment/web");
        other_identity.holder = Some(Holder::here("run-3"));
        let kept = keeping(&["web-alice"]);
        let meant = session_meant(&[other_identity, mine], Some(&kept), "web").expect("meant");
        assert_eq!(meant, "web-alice");
    }

    #[test]
    fn several_sessions_of_this_machine_on_a_workload_are_named() {
        let rows = [
            row("web-alice", "intercept", "deployment/web"),
            row("web-v2", "intercept", "deployment/web"),
        ];
        let mine = keeping(&["web-alice", "web-v2"]);
        let asked = session_meant(&rows, Some(&mine), "web").expect_err("several");
        assert_eq!(
            asked.to_string(),
            "this machine has several sessions on web: web-alice, web-v2; say which"
        );
    }
}
