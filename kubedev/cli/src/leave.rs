//! `leave NAME` and `leave --all`: ending sessions, and restoring what they changed.

use std::path::Path;
use std::time::Duration;

use super::command_of;
use super::connect::end_connect;
use super::run::end_session;
use super::survey::{CONNECT_MODE, Listed, survey};
use kubedev::cluster::Connection;
use kubedev::mode::Mode;
use kubedev::session::lease::Holder;
use kubedev::session::{self, connect};
use kubedev::tunneld;
use kubedev::workload::WorkloadRef;

/// `leave NAME`, or `leave --all`: the sessions this machine's tunneld keeps for the context,
/// in every namespace; ends them and restores their workloads, and names the sessions of
/// other machines (or of a tunneld that is gone) it left alone.
pub(super) async fn leave(
    connection: &Connection,
    socket: &Path,
    mode: Mode,
    name: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let Some(name) = name else {
        return leave_all(connection, socket, mode, timeout).await;
    };
    let sessions = session::sessions_in(&connection.client, &connection.namespace).await?;
    let workload = sessions.iter().find_map(|(workload, record)| {
        record
            .sessions()
            .any(|session| session.name == name)
            .then_some(workload)
    });
    if let Some(workload) = workload {
        return end_session(connection, name, &workload.reference, timeout, None).await;
    }
    let connects = connect::connects_in(&connection.client, &connection.namespace).await?;
    if connects.iter().any(|c| c.session == name) {
        return end_connect(connection, name, None, None).await;
    }
    anyhow::bail!(
        "no session {name:?} in namespace {} (see `{} list -A`)",
        connection.namespace,
        command_of(mode)
    );
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
        survey.rows(daemon.as_ref()).into_iter().partition(|row| {
            daemon
                .iter()
                .flat_map(|d| d.sessions.iter())
                .any(|session| session.name == row.name && session.namespace == row.namespace)
        });
    if mine.is_empty() {
        eprintln!("no kubedev sessions of this machine");
    }
    for row in &mine {
        let in_namespace = Connection {
            namespace: row.namespace.clone(),
            ..connection.clone()
        };
        if row.mode == CONNECT_MODE {
            end_connect(&in_namespace, &row.name, None, None).await?;
            continue;
        }
        let workload: WorkloadRef = row.workload.parse().map_err(anyhow::Error::msg)?;
        end_session(&in_namespace, &row.name, &workload, timeout, None).await?;
    }
    for row in &others {
        let holder = row
            .holder
            .as_ref()
            .map_or_else(|| "no lease".to_owned(), Holder::describe);
        eprintln!(
            "left alone: session {} on {} in namespace {} ({holder}); end it with `{} leave {} -n {}`",
            row.name,
            row.workload,
            row.namespace,
            command_of(mode),
            row.name,
            row.namespace
        );
    }
    Ok(())
}
