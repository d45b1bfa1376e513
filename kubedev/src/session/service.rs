//! The Service an intercept takes over: choosing it, and pointing a numeric targetPort at
//! the agent.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use super::Plan;
use super::SessionError;
use super::error::corrupt;
use super::record::{FLUX_PAUSED, FLUX_RECONCILE, ServiceRecord};
use crate::inject::{ServiceTarget, TargetPort};
use crate::workload::{PROXY_SYNC, WorkloadError, write_params};

/// How often the Service's EndpointSlices are read while they change.
const ENDPOINTS_POLL: Duration = Duration::from_millis(250);

pub(super) async fn choose_service(
    client: &kube::Client,
    namespace: &str,
    template: &PodTemplateSpec,
    plan: &Plan,
) -> Result<Service, SessionError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let listed = services
        .list(&Default::default())
        .await
        .map_err(|err| WorkloadError::from_api(err, "list", "services", namespace))?;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut matching: Vec<Service> = listed
        .items
        .into_iter()
        .filter(|service| selects(service, &labels))
        .collect();
    let names: Vec<String> = matching
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    match &plan.service {
        Some(wanted) => {
            let index = names.iter().position(|n| n == wanted).ok_or_else(|| {
                SessionError::Choice(format!(
                    "service {wanted:?} does not select the pods of {}{}",
                    plan.workload,
                    listing(" (these do: ", &names)
                ))
            })?;
            Ok(matching.swap_remove(index))
        }
        None if matching.len() == 1 => Ok(matching.remove(0)),
        None if matching.is_empty() => Err(SessionError::Choice(format!(
            "no Service in namespace {namespace} selects the pods of {}: intercept works on \
             Service traffic",
            plan.workload
        ))),
        None => Err(SessionError::Choice(format!(
            "several Services select the pods of {} ({}): choose one with --service",
            plan.workload,
            names.join(", ")
        ))),
    }
}

pub(super) fn listing(prefix: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("{prefix}{})", names.join(", "))
    }
}

pub(super) fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .is_some_and(|selector| {
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
}

/// Points the Service `recorded` names at the agent's ports for `targets`, pausing Flux on
/// it where the session does.
pub(super) async fn point_service_at_agent(
    client: &kube::Client,
    namespace: &str,
    recorded: &ServiceRecord,
    targets: &[ServiceTarget],
) -> Result<(), SessionError> {
    let name = recorded.name.as_str();
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let mut service = services
        .get(name)
        .await
        .map_err(|err| WorkloadError::from_api(err, "get", "services", namespace))?;
    if let Some(ports) = service.spec.as_mut().and_then(|spec| spec.ports.as_mut()) {
        point_ports_at_agent(name, ports, targets)?;
    }
    if recorded.paused_flux {
        let annotations = service
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(FLUX_RECONCILE.to_owned(), FLUX_PAUSED.to_owned());
    }
    services
        .replace(name, &write_params(), &service)
        .await
        .map_err(|err| WorkloadError::from_api(err, "update", "services", namespace))?;
    Ok(())
}

/// Points the ports of Service `name` whose targetPort is one of `targets`' numbers at the
/// agent's port standing for it.
pub(super) fn point_ports_at_agent(
    name: &str,
    ports: &mut [ServicePort],
    targets: &[ServiceTarget],
) -> Result<(), SessionError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for port in ports {
        let target = TargetPort::of_service_port(port)
            .ok_or_else(|| corrupt(&format!("service {name}"), "has a port out of range"))?;
        if let Some(agent_port) = targets
            .iter()
            .find(|agent_port| target == TargetPort::Number(agent_port.number))
        {
            port.target_port = Some(IntOrString::String(agent_port.agent_port_name.clone()));
        }
    }
    Ok(())
}

/// Waits until the EndpointSlices of Service `name` send no port to `targets`' numbers
/// any more (they go to the agent), and every node's proxy had time to follow. Without
/// permission to read EndpointSlices there is nothing to wait on but the proxies.
pub(super) async fn wait_until_pointed(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    targets: &[ServiceTarget],
    limit: Duration,
) -> Result<(), SessionError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let started = tokio::time::Instant::now();
    loop {
        let listed = match slices.list(&params).await {
            Ok(listed) => listed,
            Err(err) => match WorkloadError::from_api(err, "list", "endpointslices", namespace) {
                WorkloadError::Forbidden { .. } => break,
                other => return Err(other.into()),
            },
        };
        let old_target = listed
            .items
            .iter()
            .flat_map(|slice| slice.ports.iter().flatten())
            .filter_map(|port| port.port)
            .any(|port| targets.iter().any(|t| i32::from(t.number) == port));
        if !old_target {
            break;
        }
        if started.elapsed() > limit {
            return Err(SessionError::Refused(format!(
                "service {name} still sends traffic to the app's port after {limit:?}: its \
                 EndpointSlices did not follow the change to the agent's port"
            )));
        }
        tokio::time::sleep(ENDPOINTS_POLL).await;
    }
    tokio::time::sleep(PROXY_SYNC).await;
    Ok(())
}
