//! Connect sessions: the cluster's network on the workstation without touching any
//! workload. The session is a plain agent pod of its own in the user's namespace, created
//! with namespace rights only and compatible with the restricted Pod Security Standard
//! (non-root, no privilege escalation, no capabilities, the runtime's default seccomp
//! profile). It holds a lease like any session, and is deleted when the session ends, by
//! `leave`, by tunneld when the plugin dies, or by the next run after the lease ran out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use super::SessionError;
use super::lease::end_lease;
use crate::inject::{AGENT_CONTAINER, AGENT_USER, SESSION_LABEL};
use crate::workload::{WorkloadError, agent_failure, is_ready, why_not_ready};
use kubedev_protocol::AGENT_TOKEN_ENV;

/// The label on a connect session's pod: the session's name.
pub const CONNECT_LABEL: &str = "kubedev.io/connect";
/// The annotation on a connect session's pod: the plugin run that started it (see
/// [`super::Record::owner`]).
pub const OWNER_ANNOTATION: &str = "kubedev.io/owner";

/// How often a starting or ending connect pod is looked at.
const POLL: Duration = Duration::from_millis(250);

/// How long ending a session waits for its pod to be gone.
const GONE_WAIT: Duration = Duration::from_secs(30);

/// A connect session's pod, as found in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPod {
    /// The session's name.
    pub session: String,
    /// The pod's name.
    pub pod: String,
    /// The plugin run that started it.
    pub owner: Option<String>,
}

/// The name of session `name`'s pod: one per session name in a namespace.
pub fn pod_name(name: &str) -> String {
    format!("kubedev-connect-{name}")
}

/// The label selector of session `name`'s pod.
pub fn selector(name: &str) -> String {
    format!("{CONNECT_LABEL}={name}")
}

/// The pod of connect session `name` of run `owner`, with an agent that takes `token`.
pub fn connect_pod(name: &str, owner: &str, token: &str, image: &str) -> Pod {
    let pod = json!({
        "metadata": {
            "name": pod_name(name),
            "labels": {CONNECT_LABEL: name, SESSION_LABEL: name},
            "annotations": {OWNER_ANNOTATION: owner}
        },
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": AGENT_USER,
                "runAsGroup": AGENT_USER,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": AGENT_CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "env": [
                    {"name": AGENT_TOKEN_ENV, "value": token},
                    crate::inject::pod_uid_env()
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}
                },
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError"
            }]
        }
    });
    serde_json::from_value(pod).expect("a connect pod is a valid Pod")
}

/// Creates connect session `name`'s pod for run `owner` and waits until its agent runs;
/// a pod that does not get there in `timeout` is deleted before the error returns.
pub async fn start_connect(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    owner: &str,
    token: &str,
    image: &str,
    timeout: Duration,
) -> Result<(), SessionError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = connect_pod(name, owner, token, image);
    if let Err(err) = pods.create(&PostParams::default(), &pod).await {
        return Err(match err {
            kube::Error::Api(status) if status.code == 409 => SessionError::Refused(format!(
                "a connect session named {name:?} is already in namespace {namespace}: choose \
                 another --name, or end it with `leave {name}`"
            )),
            err => WorkloadError::from_api(err, "create", "pods", namespace).into(),
        });
    }
    let running = wait_running(&pods, namespace, &pod_name(name), timeout).await;
    if running.is_err() {
        let _ = pods.delete(&pod_name(name), &DeleteParams::default()).await;
    }
    running
}

async fn wait_running(
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), SessionError> {
    let late = |pod: &Pod| {
        let why = why_not_ready(pod).unwrap_or_else(|| "not ready".into());
        format!("connect pod {name} did not start in {timeout:?}: {why}")
    };
    let settled = |pod: &Pod| is_ready(pod).then_some(Ok(()));
    watch_agent_pod(pods, namespace, name, timeout, late, settled).await?;
    Ok(())
}

/// Looks at agent pod `name` until `settled` says it is done (or failed), its agent fails
/// in a way waiting will not cure, or `timeout` passes (refused as `late` words it).
/// Returns the pod as last seen.
pub(super) async fn watch_agent_pod(
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
    timeout: Duration,
    late: impl Fn(&Pod) -> String,
    settled: impl Fn(&Pod) -> Option<Result<(), SessionError>>,
) -> Result<Pod, SessionError> {
    let started = tokio::time::Instant::now();
    loop {
        let pod = pods
            .get(name)
            .await
            .map_err(|err| WorkloadError::from_api(err, "get", "pods", namespace))?;
        if let Some(failure) = agent_failure(&pod) {
            return Err(failure.into());
        }
        if let Some(outcome) = settled(&pod) {
            return outcome.map(|()| pod);
        }
        if started.elapsed() > timeout {
            return Err(SessionError::Refused(late(&pod)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The connect sessions' pods in `namespace`.
pub async fn connects_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<ConnectPod>, SessionError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(CONNECT_LABEL))
        .await
        .map_err(|err| WorkloadError::from_api(err, "list", "pods", namespace))?;
    Ok(listed.items.iter().filter_map(connect_of).collect())
}

fn connect_of(pod: &Pod) -> Option<ConnectPod> {
    let labels: &BTreeMap<String, String> = pod.metadata.labels.as_ref()?;
    Some(ConnectPod {
        session: labels.get(CONNECT_LABEL)?.clone(),
        pod: pod.metadata.name.clone()?,
        owner: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(OWNER_ANNOTATION))
            .cloned(),
    })
}

/// Ends connect session `name` in `namespace` if it is there and (with `owner`) that
/// run's: deletes its pod and ends its lease. Returns whether there was one to end.
pub async fn end_connect(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    owner: Option<&str>,
) -> Result<bool, SessionError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let found = connects_in(client, namespace)
        .await?
        .into_iter()
        .find(|c| c.session == name && (owner.is_none() || c.owner.as_deref() == owner));
    let Some(found) = found else {
        return Ok(false);
    };
    match pods.delete(&found.pod, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => return Err(WorkloadError::from_api(err, "delete", "pods", namespace).into()),
    }
    // Gone, not terminating: the session's name is free again when this returns.
    let deadline = tokio::time::Instant::now() + GONE_WAIT;
    while tokio::time::Instant::now() < deadline {
        match pods.get_opt(&found.pod).await {
            Ok(None) => break,
            Ok(Some(_)) => tokio::time::sleep(POLL).await,
            Err(err) => return Err(WorkloadError::from_api(err, "get", "pods", namespace).into()),
        }
    }
    if let Some(owner) = &found.owner
        && let Err(err) = end_lease(client, namespace, owner).await
    {
        tracing::warn!("ending the lease of connect session {name}: {err}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_pod_meets_the_restricted_pod_security_standard() {
        let pod = connect_pod("dev", "run-1", "secret", "registry/agent:1");
        let value = serde_json::to_value(&pod).expect("json");
        let spec = &value["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let agent = &spec["containers"][0];
        assert_eq!(agent["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            agent["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert!(spec.get("volumes").is_none() && agent.get("ports").is_none());
        assert_eq!(value["metadata"]["name"], "kubedev-connect-dev");
        assert_eq!(
            connect_of(&pod),
            Some(ConnectPod {
                session: "dev".into(),
                pod: "kubedev-connect-dev".into(),
                owner: Some("run-1".into()),
            })
        );
    }
}
