//! `list`, `leave` and `status`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::args::{Manage, Output};
use super::command_of;
use super::output::{describe_status, render};
use super::run::end_session;
use super::tunneld::{tunneld_socket, tunneld_status};
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::ControlError;
use kubedev::inject::Mode;
use kubedev::session::{self, Record};
use kubedev::workload::{Workload, WorkloadKind};

/// One row of `list`.
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    name: String,
    mode: Mode,
    workload: String,
    container: String,
    namespace: String,
    linked_pods: Vec<String>,
}

pub(super) async fn sessions_in(
    connection: &Connection,
) -> anyhow::Result<Vec<(Workload, Record)>> {
    let mut found = Vec::new();
    for kind in [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::ReplicaSet,
    ] {
        for workload in Workload::list(&connection.client, &connection.namespace, kind).await? {
            if workload.is_controlled() {
                continue;
            }
            if let Some(record) = session::record_of(&workload)? {
                found.push((workload, record));
            }
        }
    }
    Ok(found)
}

pub(super) async fn run_manage(
    mode: Mode,
    cluster: &ClusterArgs,
    manage: Manage,
) -> anyhow::Result<()> {
    let connection = cluster.connect().await?;
    let socket = tunneld_socket(&connection)?;
    match manage {
        Manage::List { output } => list(&connection, &socket, output).await,
        Manage::Leave { name, all, timeout } => {
            leave(&connection, mode, name.as_deref(), all, timeout).await
        }
        Manage::Status { output } => {
            let status = match tunneld_status(&socket).await {
                Ok(status) => Some(status),
                Err(ControlError::NotRunning(_)) => None,
                Err(err) => return Err(err.into()),
            };
            match output {
                Some(output) => print!("{}", render(&status, output)?),
                None => print!("{}", describe_status(status.as_ref())),
            }
            Ok(())
        }
    }
}

/// `list`: the sessions in the namespace, with the pods tunneld links to here.
async fn list(
    connection: &Connection,
    socket: &Path,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let daemon = tunneld_status(socket).await.ok();
    let sessions = sessions_in(connection).await?;
    let rows: Vec<Listed> = sessions
        .iter()
        .flat_map(|(workload, record)| {
            record
                .sessions()
                .map(move |(name, _)| (workload, record, name))
        })
        .map(|(workload, record, name)| Listed {
            linked_pods: daemon
                .iter()
                .flat_map(|d| d.sessions.iter())
                .find(|s| s.name == name && s.namespace == connection.namespace)
                .map(|s| s.linked_pods.clone())
                .unwrap_or_default(),
            name: name.to_owned(),
            mode: record.mode,
            workload: workload.reference.to_string(),
            container: record.container.clone(),
            namespace: connection.namespace.clone(),
        })
        .collect();
    match output {
        Some(output) => print!("{}", render(&rows, output)?),
        None if rows.is_empty() => {
            eprintln!("no kubedev sessions in namespace {}", connection.namespace);
        }
        None => print!("{}", table(&rows)),
    }
    Ok(())
}

/// `leave NAME` or `leave --all`: ends the sessions and restores their workloads.
async fn leave(
    connection: &Connection,
    mode: Mode,
    name: Option<&str>,
    all: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let sessions = sessions_in(connection).await?;
    let chosen: Vec<(&Workload, String)> = sessions
        .iter()
        .flat_map(|(workload, record)| {
            record
                .sessions()
                .map(move |(session, _)| (workload, session.to_owned()))
        })
        .filter(|(_, session)| all || Some(session.as_str()) == name)
        .collect();
    if chosen.is_empty() {
        if all {
            eprintln!("no kubedev sessions in namespace {}", connection.namespace);
            return Ok(());
        }
        anyhow::bail!(
            "no session {:?} in namespace {} (see `{} list`)",
            name.unwrap_or_default(),
            connection.namespace,
            command_of(mode)
        );
    }
    for (workload, session) in chosen {
        end_session(connection, &session, &workload.reference, timeout, None).await?;
    }
    Ok(())
}

pub(super) fn table(rows: &[Listed]) -> String {
    let mut lines = vec![[
        "NAME".to_owned(),
        "MODE".to_owned(),
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "LINKED PODS".to_owned(),
    ]];
    for row in rows {
        lines.push([
            row.name.clone(),
            row.mode.to_string(),
            row.workload.clone(),
            row.container.clone(),
            row.linked_pods.len().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("   ").trim_end().to_owned() + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_a_table_with_aligned_columns() {
        let rows = [Listed {
            name: "web".into(),
            mode: Mode::Intercept,
            workload: "deployment/web".into(),
            container: "app".into(),
            namespace: "shop".into(),
            linked_pods: vec!["web-1".into()],
        }];
        assert_eq!(
            table(&rows),
            "NAME   MODE        WORKLOAD         CONTAINER   LINKED PODS\n\
             web    intercept   deployment/web   app         1\n"
        );
        let json = render(&rows, Output::Json).expect("json");
        assert!(json.contains("\"mode\": \"intercept\""), "{json}");
        let yaml = render(&rows, Output::Yaml).expect("yaml");
        assert!(yaml.contains("mode: intercept"), "{yaml}");
    }
}
