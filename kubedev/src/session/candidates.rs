//! What a namespace offers to a session: its workloads, their containers, and the Service
//! ports that lead to them (`list` shows this when there is no session yet).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;

use super::SessionError;
use super::service::selects;
use crate::workload::{Workload, WorkloadError, WorkloadRef};

/// A workload a session can start on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its containers, by name.
    pub containers: Vec<String>,
    /// The Services selecting its pods, each with its TCP ports.
    pub services: Vec<(String, Vec<CandidatePort>)>,
}

/// A TCP port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidatePort {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// The port the Service listens on.
    pub port: i32,
    /// The pods' port it leads to, by number or name.
    pub target: String,
}

impl std::fmt::Display for CandidatePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} {}->{}", self.port, self.target),
            None => write!(f, "{}->{}", self.port, self.target),
        }
    }
}

/// The workloads of their own (not a Deployment's ReplicaSets) in
/// `namespace`, with what leads to them.
pub async fn candidates_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<Candidate>, SessionError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let services = services
        .list(&Default::default())
        .await
        .map_err(|err| WorkloadError::from_api(err, "list", "services", namespace))?
        .items;
    let mut found = Vec::new();
    for workload in Workload::list_every_kind(client, Some(namespace)).await? {
        if !workload.is_controlled() {
            found.push(candidate(&workload, &services)?);
        }
    }
    Ok(found)
}

fn candidate(workload: &Workload, services: &[Service]) -> Result<Candidate, SessionError> {
    let template = workload.template()?;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let containers = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter().map(|c| c.name.clone()))
        .collect();
    let services = services
        .iter()
        .filter(|service| selects(service, &labels))
        .map(|service| {
            let ports = service
                .spec
                .iter()
                .flat_map(|spec| spec.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .map(|p| CandidatePort {
                    name: p.name.clone(),
                    port: p.port,
                    target: match &p.target_port {
                        Some(IntOrString::Int(number)) => number.to_string(),
                        Some(IntOrString::String(name)) => name.clone(),
                        None => p.port.to_string(),
                    },
                })
                .collect();
            (service.metadata.name.clone().unwrap_or_default(), ports)
        })
        .collect();
    Ok(Candidate {
        workload: workload.reference.clone(),
        containers,
        services,
    })
}
