//! Field managers. Every write kubedev makes, the restore included, records kubedev as the
//! manager of the fields it set, and takes them from their managers. Left so after a
//! session, a GitOps tool's server-side apply would share those fields with kubedev, or
//! own them no more, and could not remove them when git drops them (Flux applies only
//! objects that drifted, so it would not win them back). Once a session is over, kubedev's
//! entry goes, and the managers the session found get back the fields it took.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::object::api;
use super::{FIELD_MANAGER, Workload, WorkloadError, write_params};

/// How many times a write that conflicts with another is tried again from a fresh read.
const ATTEMPTS: usize = 3;

/// Hands the fields of object `name` back to the managers `found` (its managed fields
/// when the session started) and drops kubedev's entry, changing nothing else (so no
/// entry of kubedev's comes back with the write). Gone already is fine.
pub async fn hand_back_fields<K>(
    api: &Api<K>,
    name: &str,
    found: Option<&[ManagedFieldsEntry]>,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    for _ in 0..ATTEMPTS {
        let Some(mut object) = api.get_opt(name).await? else {
            return Ok(());
        };
        let live = object.meta().managed_fields.clone().unwrap_or_default();
        let Some(managers) = handed_back(&live, found.unwrap_or_default()) else {
            return Ok(());
        };
        object.meta_mut().managed_fields = Some(managers);
        match api.replace(name, &write_params(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => {}
            Err(err) => return Err(err),
        }
    }
    tracing::warn!("{name} kept changing: kubedev's field manager entry stays on it");
    Ok(())
}

impl Workload {
    /// [`hand_back_fields`] on the workload.
    pub async fn hand_back_fields(
        &self,
        client: &kube::Client,
        found: Option<&[ManagedFieldsEntry]>,
    ) -> Result<(), WorkloadError> {
        let kind = self.reference.kind;
        let api = api(client, &self.namespace, kind);
        hand_back_fields(&api, &self.reference.name, found)
            .await
            .map_err(|err| WorkloadError::from_api(err, "update", kind.plural(), &self.namespace))
    }
}

/// The entries to write: `live` without kubedev's, where each manager `found` that has not
/// written since (same entry, same time; or none left) gets back the fields it had that
/// kubedev holds now: the ones kubedev's writes took from it. Nothing else changes: fields
/// others took or removed meanwhile stay theirs, and a manager that wrote since keeps its
/// set as it is. None when that is `live` as it is. An empty list would leave the entries
/// as they are (the API server ignores it), so where none is left the list is one empty
/// entry, which clears them.
fn handed_back(
    live: &[ManagedFieldsEntry],
    found: &[ManagedFieldsEntry],
) -> Option<Vec<ManagedFieldsEntry>> {
    let same_manager = |a: &ManagedFieldsEntry, b: &ManagedFieldsEntry| {
        (&a.manager, &a.operation, &a.subresource, &a.api_version)
            == (&b.manager, &b.operation, &b.subresource, &b.api_version)
    };
    let kubedevs = |entry: &ManagedFieldsEntry| entry.manager.as_deref() == Some(FIELD_MANAGER);
    let mut held = Value::Object(Map::new());
    for entry in live.iter().filter(|entry| kubedevs(entry)) {
        merge(&mut held, fields_of(entry));
    }
    let mut entries: Vec<ManagedFieldsEntry> = live
        .iter()
        .filter(|entry| !kubedevs(entry))
        .cloned()
        .collect();
    for was in found.iter().filter(|was| !kubedevs(was)) {
        let Some(back) = common(fields_of(was), &held) else {
            continue;
        };
        match entries.iter_mut().find(|entry| same_manager(entry, was)) {
            Some(entry) if entry.time == was.time => {
                let mut fields = fields_of(entry).clone();
                merge(&mut fields, &back);
                entry.fields_v1 = Some(FieldsV1(fields));
            }
            Some(_) => {}
            None => entries.push(ManagedFieldsEntry {
                fields_v1: Some(FieldsV1(back)),
                ..was.clone()
            }),
        }
    }
    if entries.as_slice() == live {
        return None;
    }
    if entries.is_empty() {
        entries.push(ManagedFieldsEntry::default());
    }
    Some(entries)
}

/// The set of fields `entry` manages (a tree of `f:`, `k:`, `v:` and `i:` keys, `{}` at
/// each field managed), empty if none.
fn fields_of(entry: &ManagedFieldsEntry) -> &Value {
    static NONE: Value = Value::Null;
    entry.fields_v1.as_ref().map_or(&NONE, |fields| &fields.0)
}

/// The fields both sets hold, if any.
fn common(a: &Value, b: &Value) -> Option<Value> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return None;
    };
    if a.is_empty() && b.is_empty() {
        return Some(Value::Object(Map::new()));
    }
    let both: Map<String, Value> = a
        .iter()
        .filter_map(|(key, in_a)| Some((key.clone(), common(in_a, b.get(key)?)?)))
        .collect();
    (!both.is_empty()).then_some(Value::Object(both))
}

/// Adds the fields of `more` to `fields`.
fn merge(fields: &mut Value, more: &Value) {
    let Some(more) = more.as_object() else {
        return;
    };
    if !fields.is_object() {
        *fields = Value::Object(Map::new());
    }
    let Some(fields) = fields.as_object_mut() else {
        return;
    };
    for (key, value) in more {
        match fields.get_mut(key) {
            Some(held) => merge(held, value),
            None => {
                fields.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    const BEFORE: &str = "2026-12-05T10:00:00Z";
    const DURING: &str = "2026-12-05T10:05:00Z";

    fn entry(manager: &str, at: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Apply".to_owned()),
            time: Some(Time(at.parse().expect("time"))),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn the_fields_kubedev_took_go_back_to_managers_that_did_not_write_since() {
        let found = [
            entry(
                "flux",
                BEFORE,
                json!({"f:env": {}, "f:port": {}, "f:gone": {}}),
            ),
            entry("helm", BEFORE, json!({"f:a": {}})),
        ];
        let live = [
            // A teammate took f:gone; kubedev took f:port, and helm's f:a.
            entry("flux", BEFORE, json!({"f:env": {}})),
            entry("teammate", DURING, json!({"f:gone": {}, "f:replicas": {}})),
            entry(FIELD_MANAGER, DURING, json!({"f:port": {}, "f:a": {}})),
        ];
        assert_eq!(
            handed_back(&live, &found),
            Some(vec![
                entry("flux", BEFORE, json!({"f:env": {}, "f:port": {}})),
                entry("teammate", DURING, json!({"f:gone": {}, "f:replicas": {}})),
                entry("helm", BEFORE, json!({"f:a": {}})),
            ])
        );
    }

    #[test]
    fn a_manager_that_wrote_since_keeps_its_set_and_nothing_else_is_added() {
        let found = [entry("flux", BEFORE, json!({"f:x": {}, "f:y": {}}))];
        let live = [
            entry("flux", DURING, json!({"f:y": {}})),
            entry(FIELD_MANAGER, DURING, json!({"f:x": {}})),
        ];
        assert_eq!(
            handed_back(&live, &found),
            Some(vec![entry("flux", DURING, json!({"f:y": {}}))])
        );
        // A recorded entry for fields kubedev does not hold gives nothing.
        let forged = [entry("anyone", BEFORE, json!({"f:z": {}}))];
        assert_eq!(handed_back(&live[..1], &forged), None);
        let only_kubedev = [entry(FIELD_MANAGER, DURING, json!({}))];
        assert_eq!(
            handed_back(&only_kubedev, &[]),
            Some(vec![ManagedFieldsEntry::default()]),
            "the only one: cleared"
        );
    }

    #[test]
    fn only_fields_both_sets_hold_are_common() {
        let a =
            json!({"f:spec": {"f:ports": {"k:{\"port\":80}": {"f:targetPort": {}}}, "f:x": {}}});
        let b =
            json!({"f:spec": {"f:ports": {"k:{\"port\":80}": {"f:targetPort": {}, "f:name": {}}}}});
        assert_eq!(
            common(&a, &b),
            Some(json!({"f:spec": {"f:ports": {"k:{\"port\":80}": {"f:targetPort": {}}}}}))
        );
        assert_eq!(common(&json!({"f:x": {}}), &json!({"f:y": {}})), None);
    }
}
