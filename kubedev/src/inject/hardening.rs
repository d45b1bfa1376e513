//! The agent's own securityContext and resources, never the app's privileges: it runs as
//! the app's user where that is set and is not root (so files written through the mount
//! belong to the app's user), else as [`AGENT_USER`]; never privileged, without privilege
//! escalation or any capability, on a read-only root filesystem. A replaced app's port
//! below 1024 is opened to unprivileged users in the pod with the namespaced, safe sysctl
//! `net.ipv4.ip_unprivileged_port_start`, instead of a capability.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile,
    SecurityContext, Sysctl, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The uid (and gid) the agent runs as where the app's is unset or root.
pub const AGENT_USER: i64 = 65532;

/// The sysctl that lets unprivileged processes in the pod bind ports from its value up.
const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

/// The agent's securityContext, for `app`'s pod with `pod`'s.
pub(super) fn agent_security(app: &Container, pod: Option<&PodSecurityContext>) -> SecurityContext {
    let app_own = app.security_context.as_ref();
    let set = |own: Option<i64>, pods: Option<i64>| own.or(pods).filter(|id| *id != 0);
    let user = set(
        app_own.and_then(|s| s.run_as_user),
        pod.and_then(|p| p.run_as_user),
    );
    let group = set(
        app_own.and_then(|s| s.run_as_group),
        pod.and_then(|p| p.run_as_group),
    );
    SecurityContext {
        run_as_user: Some(user.unwrap_or(AGENT_USER)),
        run_as_group: Some(group.unwrap_or(if user.is_some() { 0 } else { AGENT_USER })),
        run_as_non_root: Some(true),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// Lets the (unprivileged) agent bind `ports` in `pod`: where one is below 1024 and the pod
/// does not already allow it, the pod's unprivileged ports start at the lowest.
pub(super) fn allow_ports(pod: &mut PodSpec, ports: impl IntoIterator<Item = u16>) {
    let Some(lowest) = ports.into_iter().filter(|port| *port < 1024).min() else {
        return;
    };
    let security = pod.security_context.get_or_insert_with(Default::default);
    let sysctls = security.sysctls.get_or_insert_with(Vec::new);
    match sysctls
        .iter_mut()
        .find(|s| s.name == UNPRIVILEGED_PORT_START)
    {
        Some(sysctl) => {
            if sysctl
                .value
                .parse::<u16>()
                .is_ok_and(|start| start > lowest)
            {
                sysctl.value = lowest.to_string();
            }
        }
        None => sysctls.push(Sysctl {
            name: UNPRIVILEGED_PORT_START.to_owned(),
            value: lowest.to_string(),
        }),
    }
}

/// What the agent asks for and may use unless the user says otherwise: a little CPU and
/// memory reserved, and memory capped well above what a link's buffers take under load.
pub fn default_agent_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "10m"), ("memory", "32Mi")])),
        limits: Some(quantities(&[("memory", "512Mi")])),
        ..ResourceRequirements::default()
    }
}

/// [`default_agent_resources`] with the user's `requests` and `limits` over them (an empty
/// quantity removes that default).
pub fn agent_resources(
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
) -> ResourceRequirements {
    let over = |defaults: Option<BTreeMap<String, Quantity>>,
                given: &BTreeMap<String, Quantity>| {
        let mut list = defaults.unwrap_or_default();
        for (name, value) in given {
            if value.0.is_empty() {
                list.remove(name);
            } else {
                list.insert(name.clone(), value.clone());
            }
        }
        (!list.is_empty()).then_some(list)
    };
    let defaults = default_agent_resources();
    ResourceRequirements {
        requests: over(defaults.requests, requests),
        limits: over(defaults.limits, limits),
        ..ResourceRequirements::default()
    }
}

/// Fails where the agent would request more of a resource than its limit allows (the
/// API server would refuse the pods), naming the flag that changes it.
pub fn check_agent_resources(resources: &ResourceRequirements) -> Result<(), String> {
    let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits) else {
        return Ok(());
    };
    for (name, limit) in limits {
        let Some(request) = requests.get(name) else {
            continue;
        };
        if amount(name, &request.0) > amount(name, &limit.0) {
            return Err(format!(
                "the agent would request {name}={} over its limit {name}={}: raise the limit \
                 with --agent-limits {name}=… or lower the request with --agent-requests",
                request.0, limit.0
            ));
        }
    }
    Ok(())
}

/// A quantity of `name` as a number (cores, bytes), if it is one the agent takes: plain,
/// or with a suffix Kubernetes gives (`m` for cpu; `Ki`…`Ei`, `k`…`E` for bytes).
fn amount(name: &str, value: &str) -> Option<f64> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match (name, suffix) {
        (_, "") => 1.0,
        ("cpu", "m") => 1e-3,
        ("cpu", _) => return None,
        (_, "k") => 1e3,
        (_, "M") => 1e6,
        (_, "G") => 1e9,
        (_, "T") => 1e12,
        (_, "Ki") => 1024.0,
        (_, "Mi") => 1024f64.powi(2),
        (_, "Gi") => 1024f64.powi(3),
        (_, "Ti") => 1024f64.powi(4),
        _ => return None,
    };
    Some(number * scale)
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), Quantity((*value).to_owned())))
        .collect()
}

/// Parses `cpu=100m,memory=64Mi` (as `kubectl set resources` takes them); an empty value
/// (`memory=`) stands for none.
pub fn parse_resource_list(text: &str) -> Result<BTreeMap<String, Quantity>, String> {
    let mut list = BTreeMap::new();
    for pair in text.split(',').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not NAME=QUANTITY, e.g. cpu=100m,memory=64Mi"))?;
        if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
            return Err(format!(
                "{pair:?}: the agent takes cpu, memory and ephemeral-storage quantities, e.g. \
                 cpu=100m,memory=64Mi"
            ));
        }
        if !value.is_empty() && amount(name, value).is_none() {
            return Err(format!(
                "{pair:?} is not a quantity of {name}: e.g. {}",
                if name == "cpu" {
                    "cpu=250m or cpu=1"
                } else {
                    "memory=64Mi or memory=1Gi"
                }
            ));
        }
        list.insert(name.to_owned(), Quantity(value.to_owned()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests;

/// Where the API server mounts a pod's service account token.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Takes out of the agent's mounts, which it serves to the workstation, every service
/// account token the pod's spec mounts: Kubernetes' own, and those that admission webhooks
/// add for a cloud's workload identity (a projected `serviceAccountToken`). A pod's own
/// spec (`pod/NAME`) carries them; a workload's template does not.
pub(super) fn serve_no_token(agent: &mut Container, volumes: &[Volume]) {
    let carries_token = |name: &str| {
        volumes.iter().any(|volume| {
            volume.name == name
                && volume.projected.as_ref().is_some_and(|projected| {
                    let sources = projected.sources.iter().flatten();
                    sources
                        .into_iter()
                        .any(|source| source.service_account_token.is_some())
                })
        })
    };
    if let Some(mounts) = agent.volume_mounts.as_mut() {
        mounts.retain(|mount| {
            let path = mount.mount_path.trim_end_matches('/');
            !path.ends_with(TOKEN_MOUNT_PATH) && !carries_token(&mount.name)
        });
    }
}
