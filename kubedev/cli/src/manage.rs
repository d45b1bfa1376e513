//! `list`, `leave`, `role`, `status`, `config` and `gather-logs`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::args::{Manage, Output};
use super::command_of;
use super::config::run_config;
use super::connect::end_connect;
use super::gather::gather_logs;
use super::output::{describe_status, render};
use super::reclaim::reclaim_expired;
use super::run::end_session;
use super::tunneld::{tunneld_socket, tunneld_status};
use k8s_openapi::jiff::Timestamp;
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{ControlError, DaemonStatus};
use kubedev::inject::Mode;
use kubedev::session::connect::{self, ConnectPod};
use kubedev::session::lease::{Holder, SessionLease};
use kubedev::session::{self, Candidate, Record};
use kubedev::workload::{Workload, WorkloadRef};

/// How long `list` and `status` wait for the pods of a workload they restore (see
/// [`reclaim_expired`]), as `leave` does by default.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);

/// The Role the plugins need in a namespace (deploy/kubedev-role.yaml).
const ROLE: &str = include_str!("../../../deploy/kubedev-role.yaml");

/// The mode `list` shows for a connect session.
const CONNECT_MODE: &str = "connect";

/// One row of `list`.
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    name: String,
    /// intercept, replace or ingest, or connect (a session with an agent pod of its own).
    mode: String,
    /// An intercept that gets copies and takes nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    wiretap: bool,
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
    // A bug report wants the sessions as they are, expired or not.
    if !matches!(manage, Manage::GatherLogs { .. }) {
        reclaim_expired(&connection, &session::random_id()?, timeout).await;
    }
    match manage {
        Manage::List {
            output,
            all_namespaces,
        } => list(&connection, &socket, output, all_namespaces).await,
        Manage::Leave { name, timeout, .. } => {
            leave(&connection, &socket, mode, name.as_deref(), timeout).await
        }
        Manage::Role | Manage::Config(_) => unreachable!("done without a connection"),
        Manage::Connect(_) => unreachable!("a session, run by `run_connect`"),
        Manage::GatherLogs {
            output_file,
            all_namespaces,
        } => {
            let path = gather_logs(&connection, &socket, output_file, all_namespaces).await?;
            eprintln!(
                "wrote {}: attach it to your report (it holds logs, pod states and the \
                 sessions' pod templates: look for anything secret first)",
                path.display()
            );
            Ok(())
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

/// The sessions `list`, `leave --all` and `gather-logs` look at, and their leases.
pub(super) struct Survey {
    pub(super) sessions: Vec<(Workload, Record)>,
    /// Connect sessions' pods, by namespace.
    connects: Vec<(String, ConnectPod)>,
    leases: Vec<SessionLease>,
    /// Where the role may not list workloads cluster-wide: the namespaces looked in instead.
    only: Option<Vec<String>>,
}

/// The sessions in the namespace, or (`everywhere`) in every namespace the role may list:
/// cluster-wide, else the namespaces of this machine's sessions and the current one.
pub(super) async fn survey(
    connection: &Connection,
    daemon: Option<&DaemonStatus>,
    everywhere: bool,
) -> anyhow::Result<Survey> {
    let client = &connection.client;
    let mut only = None;
    let sessions = if everywhere {
        match session::sessions_everywhere(client).await {
            Ok(found) => found,
            Err(err) if err.is_forbidden() => {
                let mut namespaces: Vec<String> = daemon
                    .iter()
                    .flat_map(|daemon| daemon.sessions.iter())
                    .map(|session| session.namespace.clone())
                    .chain([connection.namespace.clone()])
                    .collect();
                namespaces.sort_unstable();
                namespaces.dedup();
                let mut found = Vec::new();
                for namespace in &namespaces {
                    match session::sessions_in(client, namespace).await {
                        Ok(more) => found.extend(more),
                        Err(err) if err.is_forbidden() => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                only = Some(namespaces);
                found
            }
            Err(err) => return Err(err.into()),
        }
    } else {
        session::sessions_in(client, &connection.namespace).await?
    };
    // Connect sessions: in the current namespace; everywhere, also in those of the sessions
    // found and of this machine's sessions.
    let mut looked_in = vec![connection.namespace.as_str()];
    if everywhere {
        let daemons = daemon.iter().flat_map(|d| d.sessions.iter());
        looked_in.extend(daemons.map(|s| s.namespace.as_str()));
        looked_in.extend(sessions.iter().map(|(w, _)| w.namespace.as_str()));
    }
    looked_in.sort_unstable();
    looked_in.dedup();
    let mut connects = Vec::new();
    for namespace in looked_in {
        match connect::connects_in(client, namespace).await {
            Ok(found) => connects.extend(found.into_iter().map(|c| (namespace.to_owned(), c))),
            Err(err) if err.is_forbidden() => {}
            Err(err) => return Err(err.into()),
        }
    }
    let mut namespaces: Vec<&str> = sessions
        .iter()
        .map(|(workload, _)| workload.namespace.as_str())
        .chain(connects.iter().map(|(namespace, _)| namespace.as_str()))
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    // Without the right to read leases the list is still worth having.
    let leases = futures::future::join_all(
        namespaces
            .iter()
            .map(|namespace| session::lease::leases_in(client, namespace)),
    )
    .await
    .into_iter()
    .flat_map(Result::unwrap_or_default)
    .collect();
    Ok(Survey {
        sessions,
        connects,
        leases,
        only,
    })
}

impl Survey {
    /// One row per session, with the pods `daemon` links to here.
    pub(super) fn rows(&self, daemon: Option<&DaemonStatus>) -> Vec<Listed> {
        let lease_of = |owner: Option<&str>| {
            self.leases
                .iter()
                .find(|lease| owner.is_some() && lease.session_owner() == owner)
        };
        let linked_pods = |name: &str, namespace: &str| {
            daemon
                .iter()
                .flat_map(|d| d.sessions.iter())
                .find(|s| s.name == name && s.namespace == namespace)
                .map(|s| s.linked_pods.clone())
                .unwrap_or_default()
        };
        let connects = self.connects.iter().map(|(namespace, connect)| {
            let lease = lease_of(connect.owner.as_deref());
            Listed {
                linked_pods: linked_pods(&connect.session, namespace),
                name: connect.session.clone(),
                mode: CONNECT_MODE.to_owned(),
                wiretap: false,
                workload: format!("pod/{}", connect.pod),
                container: "-".to_owned(),
                namespace: namespace.clone(),
                holder: lease.map(|lease| lease.holder.clone()),
                lease_ends: lease.map(|lease| lease.ends),
            }
        });
        self.sessions
            .iter()
            .flat_map(|(workload, record)| {
                record
                    .holders()
                    .map(move |(name, owner)| (workload, record, name, owner))
            })
            .map(|(workload, record, name, owner)| {
                let lease = lease_of(owner);
                Listed {
                    linked_pods: linked_pods(name, &workload.namespace),
                    name: name.to_owned(),
                    mode: record.mode.to_string(),
                    wiretap: record.sessions().any(|s| s.name == name && s.wiretap),
                    workload: workload.reference.to_string(),
                    container: record.container.clone(),
                    namespace: workload.namespace.clone(),
                    holder: lease.map(|lease| lease.holder.clone()),
                    lease_ends: lease.map(|lease| lease.ends),
                }
            })
            .chain(connects)
            .collect()
    }

    /// Says where the role kept `list -A` or `leave --all` from looking.
    fn note_limits(&self) {
        if let Some(namespaces) = &self.only {
            eprintln!(
                "note: your role may not list workloads in every namespace; looked in {}",
                namespaces.join(", ")
            );
        }
    }
}

/// `list`: the sessions, with the pods tunneld links to here; with none in the namespace,
/// what a session can start on.
async fn list(
    connection: &Connection,
    socket: &Path,
    output: Option<Output>,
    all_namespaces: bool,
) -> anyhow::Result<()> {
    let daemon = tunneld_status(socket).await.ok();
    let survey = survey(connection, daemon.as_ref(), all_namespaces).await?;
    survey.note_limits();
    let rows = survey.rows(daemon.as_ref());
    match output {
        Some(output) => print!("{}", render(&rows, output)?),
        None if rows.is_empty() && all_namespaces => eprintln!("no kubedev sessions"),
        None if rows.is_empty() => {
            let namespace = &connection.namespace;
            let candidates = session::candidates_in(&connection.client, namespace).await?;
            if candidates.is_empty() {
                eprintln!("no kubedev sessions and no workloads in namespace {namespace}");
            } else {
                eprintln!("no kubedev sessions in namespace {namespace}; its workloads:");
                print!("{}", candidates_table(&candidates));
            }
        }
        None => print!("{}", table(&rows, all_namespaces, Timestamp::now())),
    }
    Ok(())
}

/// `leave NAME`, or `leave --all`: the sessions this machine's tunneld keeps for the context,
/// in every namespace; ends them and restores their workloads, and names the sessions of
/// other machines (or of a tunneld that is gone) it left alone.
async fn leave(
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
    let daemon = tunneld_status(socket).await.ok();
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

/// The workloads of a namespace, their containers and the Service ports leading to them.
fn candidates_table(candidates: &[Candidate]) -> String {
    let mut lines = vec![[
        "WORKLOAD".to_owned(),
        "CONTAINERS".to_owned(),
        "SERVICE PORTS".to_owned(),
    ]];
    for candidate in candidates {
        let services = candidate
            .services
            .iter()
            .map(|(service, ports)| {
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                format!("{service}: {}", ports.join(", "))
            })
            .collect::<Vec<_>>();
        lines.push([
            candidate.workload.to_string(),
            candidate.containers.join(","),
            match services.is_empty() {
                true => "(no Service)".to_owned(),
                false => services.join("; "),
            },
        ]);
    }
    aligned(&lines)
}

pub(super) fn table(rows: &[Listed], with_namespace: bool, now: Timestamp) -> String {
    let mut lines = vec![vec![
        "NAME".to_owned(),
        "MODE".to_owned(),
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "HOLDER".to_owned(),
        "LEASE".to_owned(),
        "LINKED PODS".to_owned(),
    ]];
    for row in rows {
        lines.push(vec![
            row.name.clone(),
            if row.wiretap {
                "wiretap".to_owned()
            } else {
                row.mode.clone()
            },
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
    if with_namespace {
        lines[0].insert(0, "NAMESPACE".to_owned());
        for (line, row) in lines.iter_mut().skip(1).zip(rows) {
            line.insert(0, row.namespace.clone());
        }
    }
    aligned(&lines)
}

/// `lines` as columns as wide as their widest cell, three spaces apart.
fn aligned<Line: AsRef<[String]>>(lines: &[Line]) -> String {
    let columns = lines.first().map_or(0, |line| line.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|i| lines.iter().map(|l| l.as_ref()[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .as_ref()
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
            ("", "pods/log", "get"),
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
            mode: "intercept".into(),
            wiretap: false,
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
            table(&rows, false, now),
            "NAME   MODE        WORKLOAD         CONTAINER   HOLDER         LEASE      LINKED PODS\n\
             web    intercept   deployment/web   app         alice@laptop   45s left   1\n"
        );
        let later = "2026-12-01T10:01:03Z".parse().expect("time");
        assert!(table(&rows, false, later).contains("   ran out 3s ago   "));
        assert!(
            table(&rows, true, now).starts_with("NAMESPACE   NAME   MODE")
                && table(&rows, true, now).contains("\nshop        web    intercept"),
            "{}",
            table(&rows, true, now)
        );
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
