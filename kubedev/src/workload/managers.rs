//! Field managers. Every write kubedev makes, the restore included, records kubedev as the
//! manager of the fields it set, and takes them from their managers. Left so after a
//! session, a GitOps tool's server-side apply would share those fields with kubedev, or
//! own them no more, and could not remove them when git drops them (Flux applies only
//! objects that drifted, so it would not win them back). Once a session is over, kubedev's
//! entry goes, and the managers the session found get back the fields it took.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// The entries to write: `live` without kubedev's, where each manager that has not written
/// since `found` was taken (same entry, same time) has its entry as found, fields kubedev
/// took included, and a manager kubedev took every field from has its entry back. None
/// when that is `live` as it is. An empty list would leave the entries as they are (the
/// API server ignores it), so where none is left the list is one empty entry, which clears
/// them.
fn handed_back(
    live: &[ManagedFieldsEntry],
    found: &[ManagedFieldsEntry],
) -> Option<Vec<ManagedFieldsEntry>> {
    let same_manager = |a: &ManagedFieldsEntry, b: &ManagedFieldsEntry| {
        (&a.manager, &a.operation, &a.subresource, &a.api_version)
            == (&b.manager, &b.operation, &b.subresource, &b.api_version)
    };
    let kubedevs = |entry: &ManagedFieldsEntry| entry.manager.as_deref() == Some(FIELD_MANAGER);
    let mut entries: Vec<ManagedFieldsEntry> = live
        .iter()
        .filter(|entry| !kubedevs(entry))
        .map(
            |entry| match found.iter().find(|f| same_manager(f, entry)) {
                Some(was) if was.time == entry.time => was.clone(),
                _ => entry.clone(),
            },
        )
        .collect();
    let emptied = found
        .iter()
        .filter(|was| !kubedevs(was) && !live.iter().any(|entry| same_manager(entry, was)));
    entries.extend(emptied.cloned());
    if entries.as_slice() == live {
        return None;
    }
    if entries.is_empty() {
        entries.push(ManagedFieldsEntry::default());
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, at: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
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
        let t0 = "2026-12-05T10:00:00Z";
        let t1 = "2026-12-05T10:05:00Z";
        let env = json!({"f:spec": {"f:env": {}, "f:ports": {}}});
        let found = [
            entry("flux", t0, env.clone()),
            entry("helm", t0, json!({"f:a": {}})),
        ];
        let live = [
            entry("flux", t0, json!({"f:spec": {"f:env": {}}})),
            entry("teammate", t1, json!({"f:spec": {"f:replicas": {}}})),
            entry(FIELD_MANAGER, t1, json!({"f:spec": {"f:ports": {}}})),
        ];
        assert_eq!(
            handed_back(&live, &found),
            Some(vec![
                entry("flux", t0, env),
                entry("teammate", t1, json!({"f:spec": {"f:replicas": {}}})),
                entry("helm", t0, json!({"f:a": {}})),
            ])
        );
    }

    #[test]
    fn a_manager_that_wrote_since_keeps_its_entry_as_it_is_now() {
        let found = [entry("flux", "2026-12-05T10:00:00Z", json!({"f:x": {}}))];
        let live = [entry("flux", "2026-12-05T10:09:00Z", json!({"f:y": {}}))];
        assert_eq!(handed_back(&live, &found), None, "nothing to do");
        let only_kubedev = [entry(FIELD_MANAGER, "2026-12-05T10:09:00Z", json!({}))];
        assert_eq!(
            handed_back(&only_kubedev, &[]),
            Some(vec![ManagedFieldsEntry::default()]),
            "the only one: cleared"
        );
    }
}
