//! Which pods are a workload's own: those it controls (a StatefulSet, a ReplicaSet), or
//! that a ReplicaSet it controls does, with that ReplicaSet's pod template (a Deployment,
//! an Argo Rollout).
//! Labels alone say nothing: anyone who may create pods can give one a workload's labels.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;

use super::{Workload, WorkloadKind, WorkloadRef};

/// Decides which pods a workload controls, looking it and each ReplicaSet up once.
pub struct PodOwners {
    client: kube::Client,
    namespace: String,
    workload: WorkloadRef,
    /// The workload's uid, once fetched.
    workload_uid: Option<String>,
    /// Each ReplicaSet's template hash (by uid), where it is the workload's.
    replica_sets: HashMap<String, Option<String>>,
}

impl std::fmt::Debug for PodOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodOwners")
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl PodOwners {
    /// For `workload` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, workload: WorkloadRef) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            workload,
            workload_uid: None,
            replica_sets: HashMap::new(),
        }
    }

    /// For `workload`.
    pub(super) fn of(client: &kube::Client, workload: &Workload) -> Self {
        let reference = workload.reference.clone();
        Self::new(client.clone(), &workload.namespace, reference)
    }

    /// Whether the workload controls `pod`.
    pub async fn owns(&mut self, pod: &Pod) -> bool {
        let controller = controller_of(&pod.metadata).cloned();
        if self.workload.kind == WorkloadKind::Pod {
            // A pod of its own is its own workload.
            return controller.is_none()
                && pod.metadata.name.as_deref() == Some(self.workload.name.as_str());
        }
        let Some(controller) = controller else {
            return false;
        };
        match self.workload.kind {
            WorkloadKind::Deployment | WorkloadKind::Rollout => {
                self.through_replica_set(&controller, pod).await
            }
            kind => {
                controller.kind == kind.api_kind()
                    && controller.name == self.workload.name
                    && self.is_workload(&controller.uid).await
            }
        }
    }

    /// A Deployment's pod: its ReplicaSet is the Deployment's, and the pod has that
    /// ReplicaSet's template.
    async fn through_replica_set(&mut self, controller: &OwnerReference, pod: &Pod) -> bool {
        if controller.kind != "ReplicaSet" {
            return false;
        }
        let hash = self.known_replica_set_hash(controller).await;
        let labels = pod.metadata.labels.as_ref();
        hash.is_some() && labels.and_then(|labels| labels.get(self.hash_label())) == hash.as_ref()
    }

    /// Whether the workload (a Deployment) controls ReplicaSet `name` of this `uid`.
    pub async fn controls_replica_set(&mut self, name: &str, uid: &str) -> bool {
        let reference = OwnerReference {
            kind: "ReplicaSet".to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            ..OwnerReference::default()
        };
        self.known_replica_set_hash(&reference).await.is_some()
    }

    /// [`Self::replica_set_hash`], looked up once per ReplicaSet.
    async fn known_replica_set_hash(&mut self, controller: &OwnerReference) -> Option<String> {
        if let Some(hash) = self.replica_sets.get(&controller.uid) {
            return hash.clone();
        }
        let hash = self.replica_set_hash(controller).await;
        self.replica_sets
            .insert(controller.uid.clone(), hash.clone());
        hash
    }

    /// The template hash of the ReplicaSet `controller` names, if it is that one (same
    /// uid) and the workload controls it.
    async fn replica_set_hash(&mut self, controller: &OwnerReference) -> Option<String> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api.get_opt(&controller.name).await.ok().flatten()?;
        let same = found.metadata.uid.as_deref() == Some(controller.uid.as_str());
        let its_controller = controller_of(&found.metadata)?.clone();
        let owned = its_controller.kind == self.workload.kind.api_kind()
            && its_controller.name == self.workload.name
            && self.is_workload(&its_controller.uid).await;
        let hash = found.metadata.labels?.get(self.hash_label()).cloned();
        (same && owned).then_some(hash).flatten()
    }

    /// The label of the template hash its ReplicaSets give their pods.
    fn hash_label(&self) -> &'static str {
        self.workload.kind.template_hash_label().unwrap_or_default()
    }

    /// Whether `uid` is the workload's.
    async fn is_workload(&mut self, uid: &str) -> bool {
        if self.workload_uid.is_none() {
            let found = Workload::get(&self.client, &self.namespace, &self.workload).await;
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
