//! A workload as stored in the cluster: its pod template, selector and replica count, read
//! and written as the API server holds them (so a restored template is the original, byte
//! for byte), with optimistic concurrency on every write.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::{WorkloadError, WorkloadKind, WorkloadRef, write_params};

/// A workload fetched from the cluster.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its kind and name.
    pub reference: WorkloadRef,
    /// Its namespace.
    pub namespace: String,
    pub(super) object: DynamicObject,
    /// A pod's own template: the pod as it would be created again ([`super::pod`]).
    pub(super) pod_template: Option<Value>,
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
            Self::Pod => "Pod",
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
    /// The workload `object` is.
    pub(super) fn new(reference: WorkloadRef, namespace: String, object: DynamicObject) -> Self {
        let pod_template =
            (reference.kind == WorkloadKind::Pod).then(|| super::pod::template_of(&object));
        Self {
            reference,
            namespace,
            object,
            pod_template,
        }
    }

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
        Ok(Self::new(reference.clone(), namespace.to_owned(), object))
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
        Self::list_in(client, Some(namespace), kind, &ListParams::default()).await
    }

    /// Every workload of every kind in `namespace`, or everywhere: the kinds the user may
    /// not list are left out, unless that is all of them.
    pub async fn list_every_kind(
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> Result<Vec<Self>, WorkloadError> {
        let mut found = Vec::new();
        let mut forbidden = Vec::new();
        for kind in WorkloadKind::ALL.into_iter().chain([WorkloadKind::Pod]) {
            // Pods only where a session is on them.
            let params = match kind {
                WorkloadKind::Pod => ListParams::default().labels(crate::inject::SESSION_LABEL),
                _ => ListParams::default(),
            };
            match Self::list_in(client, namespace, kind, &params).await {
                Ok(workloads) => found.extend(workloads),
                Err(err @ WorkloadError::Forbidden { .. }) => forbidden.push(err),
                // A kind of a CRD the cluster does not have (Argo Rollouts).
                Err(err) if err.is_not_served() && kind.group() != "apps" => {}
                Err(err) => return Err(err),
            }
        }
        if forbidden.len() > WorkloadKind::ALL.len() {
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
        params: &ListParams,
    ) -> Result<Vec<Self>, WorkloadError> {
        let api = match namespace {
            Some(namespace) => api(client, namespace, kind),
            None => Api::all_with(client.clone(), &kind.api_resource()),
        };
        let objects = api.list(params).await.map_err(|err| {
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
                Some(Self::new(WorkloadRef { kind, name }, namespace, object))
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

    /// Why kubedev leaves this workload as it is, if it does: a pod that creating again
    /// would not give back as it was.
    pub fn refusal(&self) -> Option<String> {
        let pod = self.reference.kind == WorkloadKind::Pod;
        pod.then(|| super::pod::refusal_of(&self.reference, &self.object))
            .flatten()
    }

    /// The object that controls this one, as `kind/name` (`replicaset/web-7d4b9c`).
    pub fn controller(&self) -> Option<String> {
        let owners = self.object.metadata.owner_references.iter().flatten();
        let owner = owners
            .into_iter()
            .find(|owner| owner.controller == Some(true))?;
        Some(format!(
            "{}/{}",
            owner.kind.to_ascii_lowercase(),
            owner.name
        ))
    }

    /// The pod template exactly as stored.
    pub fn template_value(&self) -> Option<&Value> {
        match &self.pod_template {
            Some(template) => Some(template),
            None => self.object.data.get("spec")?.get("template"),
        }
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
        let session = format!("{}={session}", crate::inject::SESSION_LABEL);
        Ok(match self.selector()? {
            own if own.is_empty() => session,
            own => format!("{own},{session}"),
        })
    }

    /// The label selector of its pods, as `key=value,...`.
    pub fn selector(&self) -> Result<String, WorkloadError> {
        if self.reference.kind == WorkloadKind::Pod {
            return Ok(super::pod::selector_of(&self.object));
        }
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
            WorkloadKind::Pod => return 1,
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
            // A pod's write deletes it and creates it again.
            WorkloadKind::Deployment | WorkloadKind::Rollout | WorkloadKind::Pod => true,
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
        if self.reference.kind == WorkloadKind::Pod {
            return self.write_pod(client, template, (key, annotation)).await;
        }
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

    #[test]
    fn the_agents_are_the_workloads_pods_with_the_session_label() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web", "tier": "front"}}}
        }))
        .expect("object");
        let workload = Workload::new("web".parse().expect("reference"), "shop".into(), object);
        assert_eq!(
            workload.agent_selector("alice").expect("selector"),
            format!("app=web,tier=front,{}=alice", crate::inject::SESSION_LABEL)
        );
    }
}
