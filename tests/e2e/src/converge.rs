//! Waiting for the cluster to converge, and saying why it did not: a test that times out
//! reports what keeps the namespace's pods from running (a node under disk pressure, an
//! image that cannot be pulled, a sandbox that cannot be made), not only that it waited.

use std::fmt::Write as _;
use std::future::Future;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};

use crate::CONVERGE_TIMEOUT;

/// Runs `wait` for at most [`CONVERGE_TIMEOUT`]; on timeout the error says `what` did
/// not happen and describes the cluster as seen from `namespace`.
pub async fn within_timeout<T, E>(
    client: &kube::Client,
    namespace: &str,
    what: &str,
    wait: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    anyhow::Error: From<E>,
{
    match tokio::time::timeout(CONVERGE_TIMEOUT, wait).await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => {
            let state = cluster_state(client, namespace).await;
            anyhow::bail!("{what} in {CONVERGE_TIMEOUT:?}\n{state}")
        }
    }
}

/// The nodes' troubles, the namespace's pods that are not running and ready, and its
/// latest warnings.
pub async fn cluster_state(client: &kube::Client, namespace: &str) -> String {
    let mut report = String::new();
    let nodes = Api::<Node>::all(client.clone());
    describe_each(nodes, "nodes", describe_node, &mut report).await;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    describe_each(pods, "pods", describe_pod, &mut report).await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    if let Ok(events) = events.list(&ListParams::default()).await {
        let warnings = events
            .items
            .iter()
            .filter(|event| event.type_.as_deref() == Some("Warning"));
        let latest: Vec<&Event> = warnings.collect();
        for event in latest.iter().rev().take(10).rev() {
            let _ = writeln!(
                report,
                "warning {}: {} {}",
                event.involved_object.name.as_deref().unwrap_or("?"),
                event.reason.as_deref().unwrap_or("?"),
                event.message.as_deref().unwrap_or("").trim()
            );
        }
    }
    report
}

/// Adds what `describe` says of each object `api` lists, or why they cannot be listed.
async fn describe_each<K>(
    api: Api<K>,
    what: &str,
    describe: fn(&K, &mut String),
    report: &mut String,
) where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => list.items.iter().for_each(|item| describe(item, report)),
        Err(error) => {
            let _ = writeln!(report, "{what}: cannot list: {error}");
        }
    }
}

/// A node's conditions other than a healthy one, and its taints.
fn describe_node(node: &Node, report: &mut String) {
    let name = node.metadata.name.as_deref().unwrap_or("?");
    let status = node.status.as_ref();
    for condition in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let healthy = (condition.type_ == "Ready") == (condition.status == "True");
        if !healthy {
            let _ = writeln!(
                report,
                "node {name}: {}={} {}",
                condition.type_,
                condition.status,
                condition.message.as_deref().unwrap_or("")
            );
        }
    }
    let taints = node.spec.as_ref().and_then(|spec| spec.taints.as_ref());
    for taint in taints.into_iter().flatten() {
        let _ = writeln!(report, "node {name}: taint {}:{}", taint.key, taint.effect);
    }
}

/// A pod that is not running with every container ready: its phase, why it is not
/// scheduled, and why each container waits or ended.
fn describe_pod(pod: &Pod, report: &mut String) {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let Some(status) = pod.status.as_ref() else {
        let _ = writeln!(report, "pod {name}: no status yet");
        return;
    };
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let running = status.phase.as_deref() == Some("Running");
    if running && containers.iter().all(|c| c.ready) {
        return;
    }
    let _ = writeln!(
        report,
        "pod {name}: {}",
        status.phase.as_deref().unwrap_or("?")
    );
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" && condition.message.is_some() {
            let _ = writeln!(
                report,
                "  {}: {}",
                condition.type_,
                condition.message.as_deref().unwrap_or("")
            );
        }
    }
    for container in containers {
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let _ = writeln!(
                report,
                "  {} waiting: {} {}",
                container.name,
                waiting.reason.as_deref().unwrap_or(""),
                waiting.message.as_deref().unwrap_or("")
            );
        }
        if let Some(ended) = state.and_then(|s| s.terminated.as_ref()) {
            let _ = writeln!(
                report,
                "  {} ended: {} (exit {})",
                container.name,
                ended.reason.as_deref().unwrap_or(""),
                ended.exit_code
            );
        }
    }
}
