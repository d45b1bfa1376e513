//! Which pods are a session's own: those its workload controls (directly, or through a
//! ReplicaSet it controls, with that ReplicaSet's pod template), or its connect pod. Anyone
//! who may create pods can give one a session's labels; tunneld never links to such a pod.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use kubedev::control::AgentOwner;
use kubedev::workload::{Workload, WorkloadKind, WorkloadRef};

/// The label a Deployment's ReplicaSet and its pods share, naming their pod template.
const TEMPLATE_HASH: &str = "pod-template-hash";

/// Decides which pods a session's owner controls, looking each ReplicaSet up once.
pub(super) struct Owners {
    client: kube::Client,
    namespace: String,
    owner: Option<AgentOwner>,
    /// The workload's uid, once fetched.
    workload_uid: Option<String>,
    /// Whether each ReplicaSet (by uid) is the workload's, with its template hash.
    replica_sets: HashMap<String, Option<String>>,
}

impl Owners {
    pub(super) fn new(client: kube::Client, namespace: &str, owner: Option<AgentOwner>) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            owner,
            workload_uid: None,
            replica_sets: HashMap::new(),
        }
    }

    /// Whether `pod` is one of the session's own (any pod, where no owner was given).
    pub(super) async fn own(&mut self, pod: &Pod) -> bool {
        match self.owner.clone() {
            None => true,
            Some(AgentOwner::Pod { name }) => pod.metadata.name.as_deref() == Some(name.as_str()),
            Some(AgentOwner::Workload { workload }) => {
                let Some(controller) = controller_of(&pod.metadata) else {
                    return false;
                };
                match workload.kind {
                    WorkloadKind::Deployment => {
                        self.through_replica_set(&workload, controller, pod).await
                    }
                    kind => {
                        controller.kind == kind.api_kind()
                            && controller.name == workload.name
                            && self.is_workload(&workload, &controller.uid).await
                    }
                }
            }
        }
    }

    /// A Deployment's pod: its ReplicaSet is the Deployment's, and the pod has that
    /// ReplicaSet's template.
    async fn through_replica_set(
        &mut self,
        workload: &WorkloadRef,
        controller: &OwnerReference,
        pod: &Pod,
    ) -> bool {
        if controller.kind != "ReplicaSet" {
            return false;
        }
        let hash = match self.replica_sets.get(&controller.uid) {
            Some(hash) => hash.clone(),
            None => {
                let hash = self.replica_set_hash(workload, controller).await;
                self.replica_sets
                    .insert(controller.uid.clone(), hash.clone());
                hash
            }
        };
        let labels = pod.metadata.labels.as_ref();
        hash.is_some() && labels.and_then(|labels| labels.get(TEMPLATE_HASH)) == hash.as_ref()
    }

    /// The template hash of the ReplicaSet `controller` names, if it is that one (same
    /// uid) and the workload controls it.
    async fn replica_set_hash(
        &mut self,
        workload: &WorkloadRef,
        controller: &OwnerReference,
    ) -> Option<String> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api.get_opt(&controller.name).await.ok().flatten()?;
        let same = found.metadata.uid.as_deref() == Some(controller.uid.as_str());
        let its_controller = controller_of(&found.metadata)?.clone();
        let owned = its_controller.kind == "Deployment"
            && its_controller.name == workload.name
            && self.is_workload(workload, &its_controller.uid).await;
        let hash = found.metadata.labels?.get(TEMPLATE_HASH).cloned();
        (same && owned).then_some(hash).flatten()
    }

    /// Whether `uid` is the workload's.
    async fn is_workload(&mut self, workload: &WorkloadRef, uid: &str) -> bool {
        if self.workload_uid.is_none() {
            let found = Workload::get(&self.client, &self.namespace, workload).await;
            self.workload_uid = found.ok().and_then(|found| found.uid().map(str::to_owned));
        }
        self.workload_uid.as_deref() == Some(uid)
    }
}

/// The owner reference marked as the object's controller.
fn controller_of(metadata: &ObjectMeta) -> Option<&OwnerReference> {
    metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|owner| owner.controller == Some(true))
}
