//! Reaching an agent the only way it can be reached: the Kubernetes API's port-forward to
//! its loopback port, which needs nothing but `pods/portforward` in the pod's namespace.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::mpsc;

use super::{AgentLink, LinkError};
use crate::protocol::AGENT_PORT;
use crate::protocol::mux::MuxStream;

/// Opens a port-forward to the agent in `pod` and starts a session over it.
pub async fn link_through_port_forward(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    token: &str,
) -> anyhow::Result<(AgentLink, mpsc::Receiver<MuxStream>)> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut forwarder = pods
        .portforward(pod, &[AGENT_PORT])
        .await
        .with_context(|| format!("port-forward to pod {namespace}/{pod}"))?;
    let stream = forwarder
        .take_stream(AGENT_PORT)
        .context("port-forward gave no stream for the agent port")?;
    // The forwarder's task carries the stream; it ends with the connection.
    let client_name = concat!("kubedev ", env!("CARGO_PKG_VERSION"));
    AgentLink::connect(stream, token, client_name)
        .await
        .map_err(|err: LinkError| anyhow::anyhow!(err))
        .with_context(|| format!("session with the agent in pod {namespace}/{pod}"))
}
