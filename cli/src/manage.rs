//! `list`, `leave`, `role`, `status` and `config`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::args::{Manage, Output};
use super::command_of;
use super::config::run_config;
use super::output::{describe_status, render};
use super::reclaim::reclaim_expired;
use super::run::end_session;
use super::tunneld::{tunneld_socket, tunneld_status};
use k8s_openapi::jiff::Timestamp;
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::ControlError;
use kubedev::inject::Mode;
use kubedev::session::{self, lease::Holder};
use kubedev::workload::Workload;

/// How long `list` and `status` wait for the pods of a workload they restore (see
/// [`reclaim_expired`]), as `leave` does by default.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);

/// The Role the plugins need in a namespace (deploy/kubedev-role.yaml).
const ROLE: &str = include_str!("../../deploy/kubedev-role.yaml");

/// One row of `list`.
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    name: String,
    mode: Mode,
    workload: String,
    container: String,
    namespace: String,
    /// Who holds the session, from its lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
    /// When the lease runs out unless renewed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ends: Option<Timestamp>,
    linked_pods: Vec<String>,
}

pub(super) async fn run_manage(
    mode: Mode,
    cluster: &ClusterArgs,
    manage: Manage,
) -> anyhow::Result<()> {
    match manage {
        Manage::Role => {
            print!("{ROLE}");
            return Ok(());
        }
        Manage::Config(action) => return run_config(cluster, action).await,
        _ => {}
    }
    let connection = cluster.connect().await?;
    let socket = tunneld_socket(&connection)?;
    let timeout = match &manage {
        Manage::Leave { timeout, .. } => *timeout,
        _ => RESTORE_TIMEOUT,
    };
    reclaim_expired(&connection, &session::random_id()?, timeout).await;
    match manage {
        Manage::List { output } => list(&connection, &socket, output).await,
        Manage::Leave { name, all, timeout } => {
            leave(&connection, mode, name.as_deref(), all, timeout).await
        }
        Manage::Role | Manage::Config(_) => unreachable!("done without a connection"),
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
    let (sessions, leases) = futures::try_join!(
        session::sessions_in(&connection.client, &connection.namespace),
        async {
            // Without the right to read leases the list is still worth having.
            Ok(
                session::lease::leases_in(&connection.client, &connection.namespace)
                    .await
                    .unwrap_or_default(),
            )
        }
    )?;
    let rows: Vec<Listed> = sessions
        .iter()
        .flat_map(|(workload, record)| {
            record
                .holders()
                .map(move |(name, owner)| (workload, record, name, owner))
        })
        .map(|(workload, record, name, owner)| {
            let lease = leases
                .iter()
                .find(|lease| owner.is_some() && lease.session_owner() == owner);
            (workload, record, name, lease)
        })
        .map(|(workload, record, name, lease)| Listed {
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
            holder: lease.map(|lease| lease.holder.clone()),
            lease_ends: lease.map(|lease| lease.ends),
        })
        .collect();
    match output {
        Some(output) => print!("{}", render(&rows, output)?),
        None if rows.is_empty() => {
            eprintln!("no kubedev sessions in namespace {}", connection.namespace);
        }
        None => print!("{}", table(&rows, Timestamp::now())),
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
    let sessions = session::sessions_in(&connection.client, &connection.namespace).await?;
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

pub(super) fn table(rows: &[Listed], now: Timestamp) -> String {
    let mut lines = vec![[
        "NAME".to_owned(),
        "MODE".to_owned(),
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "HOLDER".to_owned(),
        "LEASE".to_owned(),
        "LINKED PODS".to_owned(),
    ]];
    for row in rows {
        lines.push([
            row.name.clone(),
            row.mode.to_string(),
            row.workload.clone(),
            row.container.clone(),
            row.holder
                .as_ref()
                .map_or_else(|| "-".to_owned(), Holder::describe),
            row.lease_ends
                .map_or_else(|| "-".to_owned(), |ends| describe_lease(ends, now)),
            row.linked_pods.len().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len())
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

/// How long a lease ending at `ends` has left at `now` (`45s left`), or since when it ran out.
fn describe_lease(ends: Timestamp, now: Timestamp) -> String {
    let left = ends.duration_since(now).as_secs();
    if left >= 0 {
        format!("{left}s left")
    } else {
        format!("ran out {}s ago", -left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_role_is_a_role_allowing_what_the_plugins_call() {
        let role: k8s_openapi::api::rbac::v1::Role = serde_saphyr::from_str(ROLE).expect("a Role");
        let rules = role.rules.expect("rules");
        let allows = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|rule| {
                let has = |list: &Option<Vec<String>>, item: &str| {
                    list.iter().flatten().any(|entry| entry == item)
                };
                has(&rule.api_groups, group)
                    && has(&rule.resources, resource)
                    && rule.verbs.iter().any(|v| v == verb)
            })
        };
        for (group, resource, verb) in [
            ("apps", "deployments", "update"),
            ("apps", "statefulsets", "update"),
            ("", "services", "update"),
            ("", "pods", "watch"),
            ("", "pods/portforward", "create"),
            ("discovery.k8s.io", "endpointslices", "list"),
            ("coordination.k8s.io", "leases", "update"),
            ("coordination.k8s.io", "leases", "delete"),
        ] {
            assert!(allows(group, resource, verb), "{verb} {group}/{resource}");
        }
        assert!(
            !allows("", "secrets", "get"),
            "the plugins read no Secret themselves"
        );
    }

    #[test]
    fn list_is_a_table_with_aligned_columns() {
        let rows = [Listed {
            name: "web".into(),
            mode: Mode::Intercept,
            workload: "deployment/web".into(),
            container: "app".into(),
            namespace: "shop".into(),
            holder: Some(Holder {
                owner: "0f3a".into(),
                host: "laptop".into(),
                user: "alice".into(),
            }),
            lease_ends: Some("2026-12-01T10:01:00Z".parse().expect("time")),
            linked_pods: vec!["web-1".into()],
        }];
        let now = "2026-12-01T10:00:15Z".parse().expect("time");
        assert_eq!(
            table(&rows, now),
            "NAME   MODE        WORKLOAD         CONTAINER   HOLDER         LEASE      LINKED PODS\n\
             web    intercept   deployment/web   app         alice@laptop   45s left   1\n"
        );
        let later = "2026-12-01T10:01:03Z".parse().expect("time");
        assert!(table(&rows, later).contains("   ran out 3s ago   "));
        let json = render(&rows, Output::Json).expect("json");
        assert!(json.contains("\"mode\": \"intercept\""), "{json}");
        let yaml = render(&rows, Output::Yaml).expect("yaml");
        assert!(yaml.contains("mode: intercept"), "{yaml}");
        assert!(
            json.contains("\"lease_ends\": \"2026-12-01T10:01:00Z\""),
            "{json}"
        );
        assert!(json.contains("\"user\": \"alice\""), "{json}");
    }
}
