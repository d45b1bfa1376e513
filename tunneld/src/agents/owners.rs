//! Which pods are a session's own: its workload's ([`PodOwners`]), or its connect pod.
//! Anyone who may create pods can give one a session's labels; tunneld never links to
//! such a pod.

use k8s_openapi::api::core::v1::Pod;
use kubedev::control::AgentOwner;
use kubedev::workload::PodOwners;

/// Decides which pods are the session's own.
#[derive(Debug)]
pub(super) enum Owners {
    /// No owner was given: any pod with the labels.
    Any,
    Workload(PodOwners),
    Pod(String),
}

impl Owners {
    pub(super) fn new(client: kube::Client, namespace: &str, owner: Option<AgentOwner>) -> Self {
        match owner {
            None => Self::Any,
            Some(AgentOwner::Workload { workload }) => {
                Self::Workload(PodOwners::new(client, namespace, workload))
            }
            Some(AgentOwner::Pod { name }) => Self::Pod(name),
        }
    }

    /// Whether `pod` is one of the session's own.
    pub(super) async fn own(&mut self, pod: &Pod) -> bool {
        match self {
            Self::Any => true,
            Self::Workload(owners) => owners.owns(pod).await,
            Self::Pod(name) => pod.metadata.name.as_deref() == Some(name.as_str()),
        }
    }
}
