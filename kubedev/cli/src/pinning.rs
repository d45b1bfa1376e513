//! Pinning the agent image to what its tag resolved to: after the first session in a kube
//! context runs an image named by tag, the digest the nodes pulled is kept in the settings
//! file ([`config::pin`]) and later sessions name the image by that digest, so a tag
//! moved in the registry (or a registry that serves something else) changes nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::config::{self, ImageSource};
use kubedev::cluster::Connection;
use kubedev::inject::AGENT_CONTAINER;
use kubedev::session::{Plan, Started};
use kubedev::workload::PodOwners;

/// The image to run: `image`, or the digest it was pinned to in this context.
pub(super) fn image_to_run(image: String, source: &ImageSource, context: Option<&str>) -> String {
    config::pinned(&image, source, context).unwrap_or(image)
}

/// Keeps the digest the agent pods of `started` run, for `image` named by tag, if this run
/// added the agent (a run that joined a teammate's runs their image); says so the first
/// time. Only the workload's own pods count, whatever else wears its labels, and only
/// their container of `image`, all of which must have pulled the same digest: the pin is
/// `image`'s repository at that digest. Failing to pin is only a warning.
pub(super) async fn pin_after_start(
    connection: &Connection,
    (plan, source): (&Plan, &ImageSource),
    started: &Started,
) {
    let image = plan.agent_image.as_str();
    let Some(context) = connection.context.as_deref() else {
        return;
    };
    let added_here = started.record.owner.as_deref() == Some(plan.owner.as_str());
    if !config::is_pinnable(image, source) || !added_here {
        return;
    }
    let pods: Api<Pod> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let params = ListParams::default().labels(&started.agents);
    let Ok(listed) = pods.list(&params).await else {
        return;
    };
    let mut owners = PodOwners::new(
        connection.client.clone(),
        &connection.namespace,
        plan.workload.clone(),
    );
    let mut digests = Vec::new();
    for pod in &listed.items {
        if owners.owns(pod).await {
            digests.extend(pulled_digest(pod, image));
        }
    }
    let Some(digest) = agreed(digests) else {
        return;
    };
    let pinned = format!("{}@{digest}", repository_of(image));
    match config::pin(image, &pinned, context) {
        Ok(true) => eprintln!(
            "agent image {image} pinned to {pinned} for context {context}: later sessions run \
             this very image (`config view` shows it)"
        ),
        Ok(false) => {}
        Err(err) => eprintln!("warning: cannot pin the agent image: {err:#}"),
    }
}

/// The one digest every pod that reported one pulled; none if they differ (a pod that
/// only looks like the workload's, or nodes that pulled the tag at different times).
fn agreed(digests: Vec<String>) -> Option<String> {
    let first = digests.first()?;
    digests
        .iter()
        .all(|digest| digest == first)
        .then(|| first.clone())
}

/// The digest (`sha256:…`) `pod` pulled for its agent container of `image`, if that is what
/// it runs.
fn pulled_digest(pod: &Pod, image: &str) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let agent = statuses
        .iter()
        .find(|status| status.name == AGENT_CONTAINER && status.image == image)?;
    let (_, digest) = agent.image_id.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    let well_formed = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| digest.to_owned())
}

/// `image` without its tag (`registry:5000/team/agent:1` is `registry:5000/team/agent`).
fn repository_of(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_pinned_only_where_every_pod_pulled_it() {
        let (a, b) = ("sha256:a".to_owned(), "sha256:b".to_owned());
        assert_eq!(agreed(vec![a.clone(), a.clone()]), Some(a.clone()));
        assert_eq!(agreed(vec![a.clone(), b]), None);
        assert_eq!(agreed(Vec::new()), None);
    }

    #[test]
    fn a_tag_comes_off_but_a_registry_port_stays() {
        assert_eq!(
            repository_of("registry:5000/team/agent:1"),
            "registry:5000/team/agent"
        );
        assert_eq!(
            repository_of("registry:5000/team/agent"),
            "registry:5000/team/agent"
        );
        assert_eq!(repository_of("agent:0.1.0"), "agent");
    }

    #[test]
    fn only_a_well_formed_digest_of_the_image_asked_for_is_pinned() {
        let pod = |image: &str, id: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [{
                "name": AGENT_CONTAINER, "image": image, "imageID": id, "ready": true,
                "restartCount": 0
            }]}}))
            .expect("pod")
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        let asked = "reg/agent:1";
        let id = format!("reg/agent@{digest}");
        assert_eq!(pulled_digest(&pod(asked, &id), asked), Some(digest.clone()));
        let docker = format!("docker-pullable://reg/agent@{digest}");
        assert_eq!(pulled_digest(&pod(asked, &docker), asked), Some(digest));
        assert_eq!(
            pulled_digest(&pod("evil/agent:1", &id), asked),
            None,
            "another image"
        );
        assert_eq!(
            pulled_digest(&pod(asked, "reg/agent@sha256:abc"), asked),
            None
        );
    }
}
