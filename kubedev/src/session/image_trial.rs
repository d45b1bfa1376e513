//! Whether the nodes can pull and run the agent image: a pod of the connect session's
//! hardened shape runs `kubedev-agent --version` once, and is deleted whatever happens.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, LogParams, PostParams};

use super::SessionError;
use super::connect::{connect_pod, watch_agent_pod};
use crate::workload::{WorkloadError, why_not_ready};

/// The label on a trial pod: the plugin run that made it.
pub const TRIAL_LABEL: &str = "kubedev.io/image-trial";

/// What the trial found: the node that ran the image and what the agent says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTrial {
    /// The node that pulled and ran it.
    pub node: String,
    /// What `kubedev-agent --version` printed (`kubedev-agent 0.1.0`).
    pub version: String,
}

/// Runs `image` once in a pod in `namespace` for run `owner`, within `timeout`; the pod is
/// deleted before this returns, and trial pods earlier runs left (killed midway) go too
/// ([`remove_trial_pods`]).
pub async fn try_agent_image(
    client: &kube::Client,
    namespace: &str,
    image: &str,
    owner: &str,
    timeout: Duration,
) -> Result<ImageTrial, SessionError> {
    remove_trial_pods(client, namespace).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = trial_pod(image, owner);
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|err| WorkloadError::from_api(err, "create", "pods", namespace))?;
    let outcome = watch_trial(&pods, namespace, &name, timeout).await;
    let _ = pods.delete(&name, &gone_now()).await;
    outcome
}

/// A connect pod's shape, run once: `kubedev-agent --version`.
fn trial_pod(image: &str, owner: &str) -> Pod {
    let mut pod = connect_pod("image-trial", owner, "", image);
    pod.metadata.name = Some(format!("kubedev-image-trial-{owner}"));
    pod.metadata.labels = Some([(TRIAL_LABEL.to_owned(), owner.to_owned())].into());
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.restart_policy = Some("Never".into());
        for container in &mut spec.containers {
            container.args = Some(vec!["--version".into()]);
            container.env = None;
        }
    }
    pod
}

/// Waits until the trial pod's agent ran, or failed in a way waiting will not cure.
async fn watch_trial(
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<ImageTrial, SessionError> {
    let late = |pod: &Pod| {
        let why = why_not_ready(pod).unwrap_or_else(|| "not started".into());
        format!("the agent image did not run within {timeout:?}: {why}")
    };
    let settled = |pod: &Pod| match pod.status.as_ref()?.phase.as_deref()? {
        "Succeeded" => Some(Ok(())),
        "Failed" => {
            let why = why_not_ready(pod).unwrap_or_else(|| "it failed".into());
            Some(Err(SessionError::Refused(format!(
                "the agent image did not run: {why}"
            ))))
        }
        _ => None,
    };
    let pod = watch_agent_pod(pods, namespace, name, timeout, late, settled).await?;
    let printed = pods
        .logs(name, &LogParams::default())
        .await
        .map_err(|err| WorkloadError::from_api(err, "get", "pods/log", namespace))?;
    Ok(ImageTrial {
        node: pod.spec.and_then(|spec| spec.node_name).unwrap_or_default(),
        version: printed.trim().to_owned(),
    })
}

/// Deletes the trial pods in `namespace`: of runs killed before they deleted theirs, or
/// this run's when it is stopped midway.
pub async fn remove_trial_pods(client: &kube::Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // One by one: the Role grants `delete`, not `deletecollection`.
    let selector = kube::api::ListParams::default().labels(TRIAL_LABEL);
    let Ok(found) = pods.list(&selector).await else {
        return;
    };
    for name in found.items.into_iter().filter_map(|pod| pod.metadata.name) {
        let _ = pods.delete(&name, &gone_now()).await;
    }
}

/// Deleted at once: the pod has nothing to finish.
fn gone_now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_pod_runs_the_agents_version_once_with_no_token() {
        let pod = trial_pod("registry/kubedev-agent:0.1.0", "abc123");
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("kubedev-image-trial-abc123")
        );
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels.get(TRIAL_LABEL).map(String::as_str), Some("abc123"));
        assert_eq!(labels.len(), 1, "not a session's pod: {labels:?}");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let agent = &spec.containers[0];
        assert_eq!(agent.args.as_deref(), Some(&["--version".to_owned()][..]));
        assert_eq!(agent.env, None, "no token");
        assert_eq!(agent.image.as_deref(), Some("registry/kubedev-agent:0.1.0"));
        let security = spec.security_context.expect("hardened as a connect pod");
        assert_eq!(security.run_as_non_root, Some(true));
    }
}
