//! A pod of its own (no controller) as a workload. Its template is the pod itself as it
//! would be created again: its labels, its annotations, and its spec without what the
//! API server and the scheduler fill in. A pod's spec cannot change in place, so a write
//! that changes it deletes the pod and creates it again under the same name
//! ([`super::pod_gap`]); a write of labels and annotations only updates it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use super::WorkloadRef;

/// The annotations of the pod itself, not of its template, as a workload's are: the
/// session's record (`kubedev.io/session`) and Flux's reconcile switch.
pub(super) const OBJECT_ANNOTATIONS: [&str; 2] = [
    "kubedev.io/session",
    "kustomize.toolkit.fluxcd.io/reconcile",
];

/// The start of the key of a pod's gap (see `restore_expired_gaps`) in the sessions' Secret, the
/// pod's name after it.
pub const GAP_PREFIX: &str = "pod-gap.";

/// The longest pod name whose gap key (`pod-gap.NAME`) is a valid key.
pub(super) const LONGEST_POD_NAME: usize = 253 - GAP_PREFIX.len();

/// The pod `object` as a pod template.
pub(super) fn template_of(object: &DynamicObject) -> Value {
    let meta = &object.metadata;
    let mut metadata = Map::new();
    if let Some(labels) = meta.labels.as_ref().filter(|labels| !labels.is_empty()) {
        metadata.insert("labels".into(), json!(labels));
    }
    let annotations: BTreeMap<&String, &String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| !OBJECT_ANNOTATIONS.contains(&key.as_str()))
        .collect();
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), json!(annotations));
    }
    let mut spec = object
        .data
        .get("spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        strip_filled_in(spec, meta.managed_fields.as_deref());
    }
    json!({"metadata": metadata, "spec": spec})
}

/// Takes out of a pod's spec what a create may not carry or what admission and the
/// scheduler fill in again: ephemeral containers (never on a create), the node the
/// scheduler chose (kept where a user's write set it), and the priority and overhead
/// admission computes from the classes named.
fn strip_filled_in(spec: &mut Map<String, Value>, managers: Option<&[ManagedFieldsEntry]>) {
    spec.remove("ephemeralContainers");
    if !node_set_by_a_user(managers.unwrap_or_default()) {
        spec.remove("nodeName");
    }
    spec.remove("priority");
    if spec.contains_key("priorityClassName") {
        spec.remove("preemptionPolicy");
    }
    if spec.contains_key("runtimeClassName") {
        spec.remove("overhead");
    }
}

/// Whether a write to the pod itself (not to a subresource such as the scheduler's
/// binding) set `spec.nodeName`.
fn node_set_by_a_user(managers: &[ManagedFieldsEntry]) -> bool {
    managers
        .iter()
        .filter(|entry| entry.subresource.as_deref().unwrap_or_default().is_empty())
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0.pointer("/f:spec/f:nodeName").is_some())
}

/// The label selector of pod `object`'s labels, the session label left out.
pub(super) fn selector_of(object: &DynamicObject) -> String {
    object
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| key.as_str() != crate::inject::SESSION_LABEL)
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pod to create from `template`, named and owned as `object` is, with `object`'s own
/// annotations (as staged) and its annotation `key` set to `value` (or removed).
pub(super) fn manifest(
    object: &DynamicObject,
    template: &Value,
    (key, value): (&str, Option<&str>),
) -> Value {
    let mut metadata = template["metadata"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut annotations = metadata
        .remove("annotations")
        .and_then(|value| value.as_object().cloned())
        .unwrap_or_default();
    let own = object.metadata.annotations.iter().flatten();
    for (name, value) in own.filter(|(name, _)| OBJECT_ANNOTATIONS.contains(&name.as_str())) {
        annotations.insert(name.clone(), json!(value));
    }
    match value {
        Some(value) => annotations.insert(key.to_owned(), json!(value)),
        None => annotations.remove(key),
    };
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    metadata.insert("name".into(), json!(object.metadata.name));
    metadata.insert("namespace".into(), json!(object.metadata.namespace));
    let owners = object.metadata.owner_references.iter().flatten();
    let owners: Vec<_> = owners
        .filter(|owner| owner.controller != Some(true))
        .collect();
    if !owners.is_empty() {
        metadata.insert("ownerReferences".into(), json!(owners));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// Whether `manifest` carries a session record.
pub(super) fn has_record(manifest: &Value) -> bool {
    manifest["metadata"]["annotations"][OBJECT_ANNOTATIONS[0]].is_string()
}

/// Why kubedev leaves pod `object` (`pod`) as it is, if it does: creating it again would
/// not give it back as it was.
pub(super) fn refusal_of(pod: &WorkloadRef, object: &DynamicObject) -> Option<String> {
    let phase = object.data.pointer("/status/phase").and_then(Value::as_str);
    if let Some(phase @ ("Succeeded" | "Failed")) = phase {
        return Some(format!(
            "{pod} has finished ({phase}): creating it again would run it again; kubedev \
             leaves it as it is"
        ));
    }
    if object.metadata.deletion_timestamp.is_some() {
        return Some(format!("{pod} is being deleted"));
    }
    let volumes = object
        .data
        .pointer("/spec/volumes")
        .and_then(Value::as_array);
    if volumes
        .into_iter()
        .flatten()
        .any(|volume| volume.get("ephemeral").is_some())
    {
        return Some(format!(
            "{pod} has an ephemeral volume: its claim belongs to the pod, and a pod created \
             again under the same name could not use it; kubedev leaves it as it is"
        ));
    }
    let finalizers = object.metadata.finalizers.as_deref().unwrap_or_default();
    if !finalizers.is_empty() {
        return Some(format!(
            "{pod} has finalizers ({}): its deletion would wait on them; kubedev leaves \
             it as it is",
            finalizers.join(", ")
        ));
    }
    (pod.name.len() > LONGEST_POD_NAME).then(|| {
        format!("{pod}: kubedev takes pods whose names have at most {LONGEST_POD_NAME} characters")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> DynamicObject {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "u1",
                "resourceVersion": "7",
                "labels": {"app": "web", crate::inject::SESSION_LABEL: "s"},
                "annotations": {"team": "a", "kubedev.io/session": "{}"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"}
                ]
            },
            "spec": {
                "containers": [{"name": "app", "image": "web:1"}],
                "nodeName": "node-1",
                "priority": 0,
                "ephemeralContainers": [{"name": "debug", "image": "busybox"}]
            },
            "status": {"phase": "Running"}
        });
        json_merge(&mut pod, extra);
        serde_json::from_value(pod).expect("pod")
    }

    fn json_merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(into), Value::Object(from)) => {
                for (key, value) in from {
                    json_merge(into.entry(key).or_insert(Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }

    #[test]
    fn the_template_is_the_pod_as_it_would_be_created_again() {
        let template = template_of(&pod(json!({})));
        assert_eq!(
            template,
            json!({
                "metadata": {
                    "labels": {"app": "web", crate::inject::SESSION_LABEL: "s"},
                    "annotations": {"team": "a"}
                },
                "spec": {"containers": [{"name": "app", "image": "web:1"}]}
            })
        );
    }

    #[test]
    fn a_node_a_user_named_stays_and_the_schedulers_choice_goes() {
        let pinned = json!({"metadata": {"managedFields": [{
            "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:nodeName": {}}}
        }]}});
        assert_eq!(template_of(&pod(pinned))["spec"]["nodeName"], "node-1");
        let bound = json!({"metadata": {"managedFields": [{
            "manager": "kube-scheduler", "operation": "Update", "apiVersion": "v1",
            "subresource": "binding", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:nodeName": {}}}
        }]}});
        assert!(template_of(&pod(bound))["spec"].get("nodeName").is_none());
    }

    #[test]
    fn admission_computes_what_a_class_names() {
        let classes = json!({"spec": {
            "priorityClassName": "high", "preemptionPolicy": "Never",
            "runtimeClassName": "gvisor", "overhead": {"cpu": "10m"}
        }});
        let spec = &template_of(&pod(classes))["spec"];
        for field in ["priority", "preemptionPolicy", "overhead"] {
            assert!(spec.get(field).is_none(), "{field}");
        }
        assert_eq!(spec["priorityClassName"], "high");
    }

    #[test]
    fn the_manifest_names_the_pod_keeps_its_owners_and_sets_the_record() {
        let object = pod(json!({}));
        let mut template = template_of(&object);
        template["spec"]["containers"][0]["image"] = json!("web:2");
        let wanted = manifest(&object, &template, ("kubedev.io/session", Some("new")));
        assert_eq!(wanted["metadata"]["name"], "web");
        assert_eq!(wanted["metadata"]["namespace"], "shop");
        assert_eq!(
            wanted["metadata"]["annotations"]["kubedev.io/session"],
            "new"
        );
        assert_eq!(wanted["metadata"]["annotations"]["team"], "a");
        assert_eq!(wanted["metadata"]["ownerReferences"][0]["name"], "c");
        assert!(wanted["metadata"].get("uid").is_none());
        assert_eq!(wanted["spec"]["containers"][0]["image"], "web:2");
        assert!(has_record(&wanted));
        let restored = manifest(&object, &template, ("kubedev.io/session", None));
        assert!(!has_record(&restored));
    }

    #[test]
    fn the_selector_is_the_pods_labels_without_the_session() {
        assert_eq!(selector_of(&pod(json!({}))), "app=web");
    }

    #[test]
    fn finished_and_finalized_pods_are_refused() {
        let pod_ref: WorkloadRef = "pod/web".parse().expect("ref");
        let refusal = |extra| refusal_of(&pod_ref, &pod(extra));
        assert!(refusal(json!({})).is_none());
        let done = refusal(json!({"status": {"phase": "Succeeded"}}));
        assert!(done.expect("refused").contains("has finished"));
        let held = refusal(json!({"metadata": {"finalizers": ["example.com/keep"]}}));
        assert!(held.expect("refused").contains("example.com/keep"));
    }

    #[test]
    fn the_object_annotations_are_the_sessions() {
        assert_eq!(OBJECT_ANNOTATIONS[0], crate::session::RECORD_ANNOTATION);
        assert_eq!(OBJECT_ANNOTATIONS[1], crate::session::FLUX_RECONCILE);
    }

    #[test]
    fn the_longest_pod_name_makes_a_valid_lease_name() {
        let name = format!("{GAP_PREFIX}{}", "a".repeat(LONGEST_POD_NAME));
        assert!(super::super::is_dns_subdomain(&name));
        let name = format!("{GAP_PREFIX}{}", "a".repeat(LONGEST_POD_NAME + 1));
        assert!(!super::super::is_dns_subdomain(&name));
    }
}
