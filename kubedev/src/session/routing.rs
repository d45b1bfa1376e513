//! Whether a live session still has what it needs on the cluster: its record on the
//! workload, the agent and its ports in the pod template, the session label, and a Service
//! still pointed at the agent. A GitOps controller re-applying the workload from git (Argo
//! CD's client-side apply, Flux's forced server-side apply) or a teammate's `kubectl apply`
//! takes these back silently; this says what changed and who changed it.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::Api;
use serde_json::Value;

use super::SessionError;
use super::record::{Record, record_of};
use crate::inject::{AGENT_CONTAINER, SESSION_LABEL};
use crate::printable::printable;
use crate::workload::{FIELD_MANAGER, Workload, WorkloadError, WorkloadRef};

/// What became of a session's hold on its workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Routing {
    /// Everything the session set is in place, as this record says.
    InPlace(Box<Record>),
    /// Something the session set was changed back: by a reconciler or a teammate, or by
    /// another run of kubedev that ended the session (a teammate's `leave`, a reclaim once
    /// this machine had been away for longer than the lease), which takes the session's
    /// lease too and leaves no name of its own on the objects.
    Undone {
        /// The workload no longer holds the session's record (it was replaced whole): what
        /// the session changed is known only from the record last seen.
        record_gone: bool,
        /// What changed, in words.
        what: String,
        /// Who last changed the object, from its managed fields (`kustomize-controller
        /// (Apply)`), if not kubedev.
        by: Option<String>,
    },
}

impl Routing {
    /// The change and who made it, in words.
    pub fn describe(&self) -> Option<String> {
        let said = match self {
            Self::InPlace(_) => return None,
            Self::Undone {
                what, by: Some(by), ..
            } => format!("{what} (changed by {by})"),
            Self::Undone { what, by: None, .. } => what.clone(),
        };
        Some(printable(&said))
    }
}

/// Whether session `name` on `reference` still has everything it set in place.
pub async fn routing_of(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    name: &str,
) -> Result<Routing, SessionError> {
    let workload = Workload::get(client, namespace, reference).await?;
    let by = last_writer(workload.managed_fields());
    let undone = |what: String| Routing::Undone {
        record_gone: false,
        what,
        by: by.clone(),
    };
    let Some(record) = record_of(&workload)? else {
        return Ok(Routing::Undone {
            record_gone: true,
            what: format!("the session record was removed from {reference}"),
            by,
        });
    };
    if !record.holders().any(|(session, _)| session == name) {
        return Ok(undone(format!(
            "{reference} no longer records session {name:?}"
        )));
    }
    if let Some(what) = template_undone(&record, workload.stored_template()?) {
        return Ok(undone(format!("{reference}: {what}")));
    }
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for recorded in &record.services {
        let Some(applied) = &recorded.applied_ports else {
            continue;
        };
        let service = services
            .get_opt(&recorded.name)
            .await
            .map_err(|err| WorkloadError::from_api(err, "get", "services", namespace))?;
        let Some(service) = service else {
            return Ok(undone(format!("service {} was deleted", recorded.name)));
        };
        let live = ports_of(&service);
        if let Some(what) = ports_undone(applied, &live) {
            let by = last_writer(service.metadata.managed_fields.as_deref());
            let what = format!("service/{}: {what}", recorded.name);
            return Ok(Routing::Undone {
                record_gone: false,
                what,
                by,
            });
        }
    }
    Ok(Routing::InPlace(Box::new(record)))
}

/// What of the session's change to the pod template is gone from `live`, if anything: the
/// agent, one of its ports (or its name, now the app's again), or the session label.
fn template_undone(record: &Record, live: &Value) -> Option<String> {
    let applied = record.applied.as_ref()?;
    let label = |template: &Value| {
        template["metadata"]["labels"][SESSION_LABEL]
            .as_str()
            .map(str::to_owned)
    };
    if label(applied).is_some() && label(live) != label(applied) {
        return Some(format!("the pod template lost the label {SESSION_LABEL}"));
    }
    let agent = container(applied, AGENT_CONTAINER)?;
    let Some(live_agent) = container(live, AGENT_CONTAINER) else {
        return Some("the agent container was removed from the pod template".to_owned());
    };
    for port in agent["ports"].as_array().into_iter().flatten() {
        let Some(port_name) = port["name"].as_str() else {
            continue;
        };
        if !has_port(live_agent, port_name) {
            return Some(format!("the agent lost its port {port_name:?}"));
        }
        let others = live["spec"]["containers"].as_array().into_iter().flatten();
        if let Some(other) = others
            .filter(|c| c["name"] != AGENT_CONTAINER)
            .find(|c| has_port(c, port_name))
        {
            let owner = other["name"].as_str().unwrap_or_default();
            return Some(format!(
                "container {owner} took back the port name {port_name:?} from the agent"
            ));
        }
    }
    None
}

fn container<'a>(template: &'a Value, name: &str) -> Option<&'a Value> {
    template["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn has_port(container: &Value, name: &str) -> bool {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|port| port["name"] == name)
}

/// `service`'s `spec.ports`, as JSON: what the records keep and compare.
pub(super) fn ports_of(service: &Service) -> Value {
    let ports = service.spec.as_ref().and_then(|spec| spec.ports.as_ref());
    serde_json::to_value(ports).unwrap_or(Value::Null)
}

/// Which Service port no longer targets the agent, if any.
pub(super) fn ports_undone(applied: &Value, live: &Value) -> Option<String> {
    for port in applied.as_array().into_iter().flatten() {
        let key = |p: &Value| (p["port"].clone(), p["protocol"].clone());
        let Some(now) = live
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| key(p) == key(port))
        else {
            return Some(format!("port {} was removed", port["port"]));
        };
        if now["targetPort"] != port["targetPort"] {
            return Some(format!(
                "port {} targets {} again, not the agent's {}",
                port["port"], now["targetPort"], port["targetPort"]
            ));
        }
    }
    None
}

/// The newest writer of an object, with how it wrote; kubedev itself is another run of it
/// (a teammate's `leave`, a reclaim).
fn last_writer(fields: Option<&[ManagedFieldsEntry]>) -> Option<String> {
    let newest = newest(fields)?;
    let manager = newest.manager.clone()?;
    if manager == FIELD_MANAGER {
        return Some("another run of kubedev: a teammate's `leave`, or a reclaim".to_owned());
    }
    Some(match &newest.operation {
        Some(operation) => format!("{manager} ({operation})"),
        None => manager,
    })
}

/// The newest write to an object's own fields (not its status).
fn newest(fields: Option<&[ManagedFieldsEntry]>) -> Option<&ManagedFieldsEntry> {
    fields?
        .iter()
        .filter(|entry| entry.subresource.is_none())
        .max_by_key(|entry| entry.time.as_ref().map(|time| time.0))
}

#[cfg(test)]
mod tests;
