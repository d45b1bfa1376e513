//! The sessions `list`, `leave --all` and `gather-logs` look at: recorded on workloads,
//! connect sessions' pods, and their leases, in one namespace or in every one the role may
//! look in.

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use kubedev::cluster::Connection;
use kubedev::control::DaemonStatus;
use kubedev::session::connect::{self, ConnectPod};
use kubedev::session::lease::{Holder, SessionLease};
use kubedev::session::{self, Record};
use kubedev::workload::Workload;

/// The mode `list` shows for a connect session.
pub(super) const CONNECT_MODE: &str = "connect";

/// One row of `list` (camelCase keys, as Kubernetes prints them).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Listed {
    pub(super) name: String,
    /// intercept, replace or ingest, or connect (a session with an agent pod of its own).
    pub(super) mode: String,
    /// An intercept that gets copies and takes nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) wiretap: bool,
    pub(super) workload: String,
    pub(super) container: String,
    pub(super) namespace: String,
    /// Who holds the session, from its lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) holder: Option<Holder>,
    /// When the lease runs out unless renewed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lease_ends: Option<Timestamp>,
    pub(super) linked_pods: Vec<String>,
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
    pub(super) fn note_limits(&self) {
        if let Some(namespaces) = &self.only {
            eprintln!(
                "note: your role may not list workloads in every namespace; looked in {}",
                namespaces.join(", ")
            );
        }
    }
}
