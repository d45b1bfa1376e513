//! What a namespace offers to a session: its workloads, their containers, and the Service
//! ports that lead to them (`list` shows this when there is no session yet).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;

use super::SessionError;
use super::service::selects;
use crate::workload::{Workload, WorkloadError, WorkloadKind, WorkloadRef};

/// A workload a session can start on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its containers, by name.
    pub containers: Vec<String>,
    /// The Services selecting its pods, each with its TCP ports as `NAME PORT->TARGET`.
    pub services: Vec<(String, Vec<String>)>,
}

/// The Deployments, StatefulSets and ReplicaSets of their own (not a Deployment's) in
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
    for kind in [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::ReplicaSet,
    ] {
        for workload in Workload::list(client, namespace, kind).await? {
            if !workload.is_controlled() {
                found.push(candidate(&workload, &services)?);
            }
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
                .map(|p| {
                    let target = match &p.target_port {
                        Some(IntOrString::Int(number)) => number.to_string(),
                        Some(IntOrString::String(name)) => name.clone(),
                        None => p.port.to_string(),
                    };
                    match &p.name {
                        Some(name) => format!("{name} {}->{target}", p.port),
                        None => format!("{}->{target}", p.port),
                    }
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
