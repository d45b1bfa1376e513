//! A workload as stored in the cluster: its pod template, selector and replica count, read
//! and written as the API server holds them (so a restored template is the original, byte
//! for byte), with optimistic concurrency on every write.

use std::future::Future;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::{WorkloadError, WorkloadKind, WorkloadRef};

/// How many times a read-change-write of a workload is redone after the workload changed
/// under it (its controller writes its status often, which bumps the resource version).
const CONFLICT_ATTEMPTS: usize = 5;

/// The field manager of kubedev's writes to workloads and Services, so that their
/// `managedFields` tell kubedev's changes from everyone else's.
pub const FIELD_MANAGER: &str = "kubedev";

/// The parameters of kubedev's writes: under [`FIELD_MANAGER`].
pub fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// An error that may be an object changing between its read and its write.
pub trait MayConflict {
    /// Whether redoing the read-change-write may succeed.
    fn is_conflict(&self) -> bool;
}

impl MayConflict for WorkloadError {
    fn is_conflict(&self) -> bool {
        WorkloadError::is_conflict(self)
    }
}

/// Runs `change` (which reads a workload, decides and writes it) again from the start while
/// its write fails because the workload changed since it was read, as kubectl's own
/// read-modify-write commands do.
pub async fn retry_on_conflict<T, E, F, Fut>(mut change: F) -> Result<T, E>
where
    E: MayConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match change().await {
            Err(err) if attempt < CONFLICT_ATTEMPTS && err.is_conflict() => attempt += 1,
            result => return result,
        }
    }
}

/// A workload fetched from the cluster.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its kind and name.
    pub reference: WorkloadRef,
    /// Its namespace.
    pub namespace: String,
    pub(super) object: DynamicObject,
}

impl WorkloadKind {
    /// The kind as the API names it (`Deployment`), in owner references too.
    pub fn api_kind(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::ReplicaSet => "ReplicaSet",
            Self::DaemonSet => "DaemonSet",
            Self::Rollout => "Rollout",
        }
    }

    fn api_resource(self) -> ApiResource {
        let version = match self {
            Self::Rollout => "v1alpha1",
            _ => "v1",
        };
        let kind = GroupVersionKind::gvk(self.group(), version, self.api_kind());
        ApiResource::from_gvk(&kind)
    }
}

pub(super) fn api(
    client: &kube::Client,
    namespace: &str,
    kind: WorkloadKind,
) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &kind.api_resource())
}

impl Workload {
    /// Fetches `reference`; a missing workload is an error that names it.
    pub async fn get(
        client: &kube::Client,
        namespace: &str,
        reference: &WorkloadRef,
    ) -> Result<Self, WorkloadError> {
        let object = api(client, namespace, reference.kind)
            .get_opt(&reference.name)
            .await
            .map_err(|err| WorkloadError::from_api(err, "get", reference.kind.plural(), namespace))?
            .ok_or_else(|| WorkloadError::NotFound {
                what: reference.to_string(),
                namespace: namespace.to_owned(),
            })?;
        Ok(Self {
            reference: reference.clone(),
            namespace: namespace.to_owned(),
            object,
        })
    }

    /// The object's uid, which its pods' (or ReplicaSets') owner references name.
    pub fn uid(&self) -> Option<&str> {
        self.object.metadata.uid.as_deref()
    }

    /// Who wrote which fields of the workload, and when.
    pub fn managed_fields(&self) -> Option<&[ManagedFieldsEntry]> {
        self.object.metadata.managed_fields.as_deref()
    }

    /// The API server's time of the last write to the workload, as its managed fields
    /// record it.
    pub fn written_at(&self) -> Option<&Time> {
        let fields = self.object.metadata.managed_fields.as_ref()?;
        fields
            .iter()
            .filter_map(|entry| entry.time.as_ref())
            .max_by_key(|time| time.0)
    }

    /// Every workload of `kind` in `namespace`.
    pub async fn list(
        client: &kube::Client,
        namespace: &str,
        kind: WorkloadKind,
    ) -> Result<Vec<Self>, WorkloadError> {
        Self::list_in(client, Some(namespace), kind).await
    }

    /// Every workload of every kind in `namespace`, or everywhere: the kinds the user may
    /// not list are left out, unless that is all of them.
    pub async fn list_every_kind(
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> Result<Vec<Self>, WorkloadError> {
        let mut found = Vec::new();
        let mut forbidden = Vec::new();
        for kind in WorkloadKind::ALL {
            match Self::list_in(client, namespace, kind).await {
                Ok(workloads) => found.extend(workloads),
                Err(err @ WorkloadError::Forbidden { .. }) => forbidden.push(err),
                // A kind of a CRD the cluster does not have (Argo Rollouts).
                Err(err) if err.is_not_served() && kind.group() != "apps" => {}
                Err(err) => return Err(err),
            }
        }
        if forbidden.len() == WorkloadKind::ALL.len() {
            return Err(forbidden.swap_remove(0));
        }
        for err in forbidden {
            tracing::debug!("left out: {err}");
        }
        Ok(found)
    }

    async fn list_in(
        client: &kube::Client,
        namespace: Option<&str>,
        kind: WorkloadKind,
    ) -> Result<Vec<Self>, WorkloadError> {
        let api = match namespace {
            Some(namespace) => api(client, namespace, kind),
            None => Api::all_with(client.clone(), &kind.api_resource()),
        };
        let objects = api.list(&Default::default()).await.map_err(|err| {
            WorkloadError::from_api(err, "list", kind.plural(), namespace.unwrap_or("(all)"))
        })?;
        Ok(objects
            .items
            .into_iter()
            .filter_map(|object| {
                let name = object.metadata.name.clone()?;
                let namespace = object
                    .metadata
                    .namespace
                    .as_deref()
                    .or(namespace)?
                    .to_owned();
                Some(Self {
                    reference: WorkloadRef { kind, name },
                    namespace,
                    object,
                })
            })
            .collect())
    }

    /// Whether another object controls this one (a Deployment's ReplicaSet): sessions are
    /// started and recorded on the controller, and the record it copies down is not one.
    pub fn is_controlled(&self) -> bool {
        self.object
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true))
    }

    /// The pod template exactly as stored.
    pub fn template_value(&self) -> Option<&Value> {
        self.object.data.get("spec")?.get("template")
    }

    /// The pod template, typed.
    pub fn template(&self) -> Result<PodTemplateSpec, WorkloadError> {
        let value = self.stored_template()?;
        serde_json::from_value(value.clone()).map_err(|source| WorkloadError::Template {
            workload: self.reference.to_string(),
            source,
        })
    }

    /// The pod template exactly as stored; a workload without one is an error.
    pub fn stored_template(&self) -> Result<&Value, WorkloadError> {
        if self.object.data.pointer("/spec/workloadRef").is_some() {
            return Err(self.malformed(
                "has no pod template of its own (it takes a Deployment's, spec.workloadRef)",
            ));
        }
        self.template_value()
            .ok_or_else(|| self.malformed("has no pod template"))
    }

    fn malformed(&self, lacks: &'static str) -> WorkloadError {
        WorkloadError::Malformed {
            workload: self.reference.to_string(),
            lacks,
        }
    }

    /// The label selector of the pods that session `session` put its agent into: the
    /// workload's own selector and the session label the agent's pods carry.
    pub fn agent_selector(&self, session: &str) -> Result<String, WorkloadError> {
        Ok(format!(
            "{},{}={session}",
            self.selector()?,
            crate::inject::SESSION_LABEL
        ))
    }

    /// The label selector of its pods, as `key=value,...`.
    pub fn selector(&self) -> Result<String, WorkloadError> {
        let labels = self
            .object
            .data
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .filter(|labels| !labels.is_empty())
            .ok_or_else(|| self.malformed("has no matchLabels selector"))?;
        Ok(labels
            .iter()
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","))
    }

    /// How many pods it asks for (1 when unset, as the API server defaults it); for a
    /// DaemonSet, one per node it is to run on.
    pub fn replicas(&self) -> i32 {
        let count = match self.reference.kind {
            WorkloadKind::DaemonSet => "/status/desiredNumberScheduled",
            _ => "/spec/replicas",
        };
        self.object
            .data
            .pointer(count)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(1)
    }

    /// Whether changing the template replaces the pods by itself (a ReplicaSet, or a
    /// StatefulSet or DaemonSet with the OnDelete strategy, needs its pods deleted).
    pub fn rolls_out_by_itself(&self) -> bool {
        match self.reference.kind {
            WorkloadKind::Deployment | WorkloadKind::Rollout => true,
            WorkloadKind::ReplicaSet => false,
            WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => {
                self.object
                    .data
                    .pointer("/spec/updateStrategy/type")
                    .and_then(Value::as_str)
                    != Some("OnDelete")
            }
        }
    }

    /// Sets (or, with `None`, removes) its annotation `key` for the next [`Self::write`].
    pub fn stage_annotation(&mut self, key: &str, value: Option<&str>) {
        let annotations = self
            .object
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match value {
            Some(value) => annotations.insert(key.to_owned(), value.to_owned()),
            None => annotations.remove(key),
        };
    }

    /// The value of its label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.object
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The value of its annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// Sets the annotation `key`, leaving the template as it is (so no pod restarts).
    pub async fn annotate(
        &mut self,
        client: &kube::Client,
        key: &str,
        value: String,
    ) -> Result<(), WorkloadError> {
        let template = self.stored_template()?.clone();
        self.write(client, template, key, Some(value)).await
    }

    /// Writes `template` and sets (or, with `None`, removes) the annotation `key`, failing
    /// if the workload changed since it was read.
    pub async fn write(
        &mut self,
        client: &kube::Client,
        template: Value,
        key: &str,
        annotation: Option<String>,
    ) -> Result<(), WorkloadError> {
        let mut object = self.object.clone();
        let spec = object
            .data
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| self.malformed("has no spec"))?;
        spec.insert("template".into(), template);
        let annotations = object
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match annotation {
            Some(value) => {
                annotations.insert(key.to_owned(), value);
            }
            None => {
                annotations.remove(key);
            }
        }
        let kind = self.reference.kind;
        self.object = api(client, &self.namespace, kind)
            .replace(&self.reference.name, &write_params(), &object)
            .await
            .map_err(|err| {
                WorkloadError::from_api(err, "update", kind.plural(), &self.namespace)
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_agents_are_the_workloads_pods_with_the_session_label() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web", "tier": "front"}}}
        }))
        .expect("object");
        let workload = Workload {
            reference: "web".parse().expect("reference"),
            namespace: "shop".into(),
            object,
        };
        assert_eq!(
            workload.agent_selector("alice").expect("selector"),
            format!("app=web,tier=front,{}=alice", crate::inject::SESSION_LABEL)
        );
    }

    fn conflict() -> WorkloadError {
        let mut status = kube::core::Status::failure("the object has been modified", "Conflict");
        status.code = 409;
        WorkloadError::from_api(
            kube::Error::Api(status.boxed()),
            "update",
            "deployments",
            "shop",
        )
    }

    #[tokio::test]
    async fn a_conflict_is_retried_until_the_write_goes_through() {
        let calls = Cell::new(0);
        let result = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(conflict())
            } else {
                Ok("written")
            }
        })
        .await;
        assert_eq!(result.expect("written"), "written");
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn other_errors_and_endless_conflicts_are_returned() {
        let calls = Cell::new(0);
        let result: Result<(), WorkloadError> = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            Err(WorkloadError::NotFound {
                what: "deployment/x".into(),
                namespace: "shop".into(),
            })
        })
        .await;
        assert!(matches!(
            result.expect_err("fails"),
            WorkloadError::NotFound { .. }
        ));
        assert_eq!(calls.get(), 1);

        let calls = Cell::new(0);
        let result: Result<(), WorkloadError> = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            Err(conflict())
        })
        .await;
        assert!(result.expect_err("fails").is_conflict());
        assert_eq!(calls.get(), CONFLICT_ATTEMPTS);
    }
}
