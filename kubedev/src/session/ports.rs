//! Which container and which of its ports a session takes: the ports the user named, as
//! the agent's targets and where their connections go on the workstation.

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort};

use super::Plan;
use super::SessionError;
use super::error::corrupt;
use crate::control::Forward;
use crate::inject::{self, TargetPort};
use crate::workload::WorkloadRef;
use kubedev_protocol::Transport;

pub(super) fn choose_container(
    template: &PodTemplateSpec,
    wanted: Option<&str>,
    workload: &WorkloadRef,
) -> Result<String, SessionError> {
    let names: Vec<&str> = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter().map(|c| c.name.as_str()))
        .collect();
    match (wanted, names.as_slice()) {
        (Some(wanted), _) if names.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), _) => Err(SessionError::Choice(format!(
            "{workload} has no container {wanted:?}; its containers: {}",
            names.join(", ")
        ))),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => Err(SessionError::Choice(format!(
            "{workload} has several containers ({}): choose one with -c",
            names.join(", ")
        ))),
    }
}

/// intercept without `-c` on pods with several containers: the one container that declares
/// every port the asked-for Service ports target (by name, or by number), if exactly one does.
pub(super) fn container_serving(
    service: &Service,
    template: &PodTemplateSpec,
    plan: &Plan,
) -> Result<Option<String>, SessionError> {
    let targets: Vec<TargetPort> = asked_service_ports(service, plan)?
        .into_iter()
        .filter_map(TargetPort::of_service_port)
        .collect();
    let serving: Vec<&str> = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .filter(|container| {
            let declared = container.ports.iter().flatten();
            targets.iter().all(|target| {
                declared.clone().any(|port| match target {
                    TargetPort::Named(name) => port.name.as_deref() == Some(name),
                    TargetPort::Number(number) => port.container_port == i32::from(*number),
                })
            })
        })
        .map(|container| container.name.as_str())
        .collect();
    Ok(match serving.as_slice() {
        [only] => Some((*only).to_owned()),
        _ => None,
    })
}

/// The TCP ports of `service` that `plan --port` names, one for each mapping.
fn asked_service_ports<'a>(
    service: &'a Service,
    plan: &Plan,
) -> Result<Vec<&'a ServicePort>, SessionError> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let ports: Vec<&ServicePort> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .collect();
    let describe = || {
        ports
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{n} ({})", p.port),
                None => p.port.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if plan.ports.is_empty() {
        return Err(SessionError::Choice(
            "say which port to intercept with --port LOCAL[:SERVICE-PORT]".into(),
        ));
    }
    plan.ports
        .iter()
        .map(|mapping| match &mapping.remote {
            Some(remote) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(remote) || p.port.to_string() == *remote)
                .copied()
                .ok_or_else(|| {
                    SessionError::Choice(format!(
                        "service {name} has no TCP port {remote:?}; its ports: {}",
                        describe()
                    ))
                }),
            None if ports.len() == 1 => Ok(ports[0]),
            None => Err(SessionError::Choice(format!(
                "service {name} has several ports ({}): choose one with --port {}:PORT",
                describe(),
                mapping.local
            ))),
        })
        .collect()
}

/// The Service ports the user named, as the targets the agent takes over and where their
/// connections go on the workstation.
pub(super) fn intercepted_ports(
    service: &Service,
    template: &PodTemplateSpec,
    container: &str,
    plan: &Plan,
) -> Result<(Vec<TargetPort>, Vec<Forward>), SessionError> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut targets = Vec::new();
    let mut forwards = Vec::new();
    for (mapping, port) in plan.ports.iter().zip(asked_service_ports(service, plan)?) {
        let target = TargetPort::of_service_port(port)
            .ok_or_else(|| corrupt(&format!("service {name}"), "has a port out of range"))?;
        let app_port = match &target {
            TargetPort::Number(number) => *number,
            TargetPort::Named(wanted) => named_port(template, container, wanted).ok_or_else(|| {
                SessionError::Choice(format!(
                    "service {name} targets port {wanted:?}, which container {container} does not declare"
                ))
            })?,
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
        forwards.push(Forward {
            app_port,
            local_host: plan.address.clone(),
            local_port: mapping.local,
            filter: plan.filter.clone(),
            transport: Transport::Tcp,
            wiretap: plan.wiretap,
        });
    }
    Ok((targets, forwards))
}

pub(super) fn named_port(template: &PodTemplateSpec, container: &str, name: &str) -> Option<u16> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// replace: every TCP port of the container goes to the same port locally, unless the
/// user mapped it (`--port LOCAL:CONTAINER-PORT`).
pub(super) fn replaced_ports(
    template: &PodTemplateSpec,
    container: &str,
    plan: &Plan,
) -> Result<Vec<Forward>, SessionError> {
    let declared: Vec<(Option<String>, u16, Transport)> = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .filter(|c| c.name == container)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let number = u16::try_from(p.container_port).ok()?;
            Some((p.name.clone(), number, inject::transport_of(p)?))
        })
        .collect();
    let mut forwards: Vec<Forward> = declared
        .iter()
        .map(|(_, number, transport)| Forward {
            app_port: *number,
            local_host: plan.address.clone(),
            local_port: *number,
            filter: None,
            transport: *transport,
            wiretap: false,
        })
        .collect();
    let mut numbers: Vec<u16> = declared.iter().map(|(_, number, _)| *number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    for mapping in &plan.ports {
        let remote = mapping.remote.as_deref();
        // A number (or name) can stand for a TCP and a UDP port at once, as DNS's 53 does.
        let number = match remote {
            Some(remote) => declared.iter().find_map(|(name, number, _)| {
                (name.as_deref() == Some(remote) || number.to_string() == remote).then_some(*number)
            }),
            None if numbers.len() == 1 => numbers.first().copied(),
            None => None,
        }
        .ok_or_else(|| {
            SessionError::Choice(format!(
                "container {container} declares no port {}",
                remote.unwrap_or("(give --port LOCAL:CONTAINER-PORT)")
            ))
        })?;
        for forward in forwards.iter_mut().filter(|f| f.app_port == number) {
            forward.local_port = mapping.local;
        }
    }
    Ok(forwards)
}
