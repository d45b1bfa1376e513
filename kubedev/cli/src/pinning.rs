//! Pinning the agent image to what its tag resolved to: after the first session in a kube
//! context runs an image named by tag, the digest the nodes pulled is kept in the settings
//! file ([`config::pin`]) and later sessions name the image by that digest, so a tag
//! moved in the registry (or a registry that serves something else) changes nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::config::{self, ImageSource};
use kubedev::cluster::Connection;
use kubedev::inject::AGENT_CONTAINER;
use kubedev::session::Started;

/// The image to run: `image`, or the digest it was pinned to in this context.
pub(super) fn image_to_run(image: String, source: &ImageSource, context: Option<&str>) -> String {
    config::pinned(&image, source, context).unwrap_or(image)
}

/// Keeps the digest the agent pods of `started` run, for `image` named by tag; says so
/// the first time. Failing to is only a warning.
pub(super) async fn pin_after_start(
    connection: &Connection,
    image: &str,
    source: &ImageSource,
    started: &Started,
) {
    let Some(context) = connection.context.as_deref() else {
        return;
    };
    if image.contains('@') || *source == ImageSource::Given {
        return;
    }
    let pods: Api<Pod> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let Ok(listed) = pods
        .list(&ListParams::default().labels(&started.agents))
        .await
    else {
        return;
    };
    let digest = listed
        .items
        .iter()
        .flat_map(|pod| {
            pod.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter(|status| status.name == AGENT_CONTAINER)
        .map(|status| status.image_id.as_str())
        .find(|id| id.contains("@sha256:"));
    let Some(digest) = digest else {
        return;
    };
    match config::pin(image, digest, context) {
        Ok(true) => eprintln!(
            "agent image {image} pinned to {digest} for context {context}: later sessions run \
             this very image (`config view` shows it)"
        ),
        Ok(false) => {}
        Err(err) => eprintln!("warning: cannot pin the agent image: {err:#}"),
    }
}
