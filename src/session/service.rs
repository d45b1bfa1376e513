//! The Service an intercept takes over: choosing it, and pointing a numeric targetPort at
//! the agent.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use kube::api::{Api, PostParams};

use super::start::Plan;
use crate::inject::TargetPort;

pub(super) async fn choose_service(
    client: &kube::Client,
    namespace: &str,
    template: &PodTemplateSpec,
    plan: &Plan,
) -> anyhow::Result<Service> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let listed = services
        .list(&Default::default())
        .await
        .map_err(|err| crate::cluster::explain(err, "list", "services", namespace))?;
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
            let index = names.iter().position(|n| n == wanted).with_context(|| {
                format!(
                    "service {wanted:?} does not select the pods of {}{}",
                    plan.workload,
                    listing(" (these do: ", &names)
                )
            })?;
            Ok(matching.swap_remove(index))
        }
        None if matching.len() == 1 => Ok(matching.remove(0)),
        None if matching.is_empty() => anyhow::bail!(
            "no Service in namespace {namespace} selects the pods of {}: intercept works on \
             Service traffic",
            plan.workload
        ),
        None => anyhow::bail!(
            "several Services select the pods of {} ({}): choose one with --service",
            plan.workload,
            names.join(", ")
        ),
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

pub(super) async fn point_service_at_agent(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    targets: &[(u16, String)],
) -> anyhow::Result<()> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let mut service = services.get(name).await?;
    for port in service
        .spec
        .iter_mut()
        .flat_map(|spec| spec.ports.iter_mut().flatten())
    {
        let target = port
            .target_port
            .as_ref()
            .and_then(TargetPort::from_int_or_string)
            .unwrap_or(TargetPort::Number(u16::try_from(port.port)?));
        if let Some((_, agent_name)) = targets
            .iter()
            .find(|(number, _)| target == TargetPort::Number(*number))
        {
            port.target_port = Some(IntOrString::String(agent_name.clone()));
        }
    }
    services
        .replace(name, &PostParams::default(), &service)
        .await
        .map_err(|err| crate::cluster::explain(err, "update", "services", namespace))?;
    Ok(())
}
