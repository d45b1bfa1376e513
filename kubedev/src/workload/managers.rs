//! kubedev's name among an object's field managers. Every write kubedev makes, the restore
//! included, records it as the manager of the fields it set; left there after a session,
//! it would share those fields with a GitOps tool's server-side apply, which then could not
//! remove them when git drops them. Once a session is over, its entry goes.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::object::api;
use super::{FIELD_MANAGER, Workload, WorkloadError, write_params};

/// How many times a write that conflicts with another is tried again from a fresh read.
const ATTEMPTS: usize = 3;

/// Removes kubedev's entry from the managed fields of object `name`, changing nothing
/// else (so no entry of kubedev's comes back with the write). Gone already, or never
/// there, is fine.
pub async fn forget_kubedev_fields<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    for _ in 0..ATTEMPTS {
        let Some(mut object) = api.get_opt(name).await? else {
            return Ok(());
        };
        let Some(others) = without_kubedev(object.meta().managed_fields.as_deref()) else {
            return Ok(());
        };
        object.meta_mut().managed_fields = Some(others);
        match api.replace(name, &write_params(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

impl Workload {
    /// Drops kubedev's entry from the workload's managed fields ([`forget_kubedev_fields`]).
    pub async fn forget_kubedev_fields(&self, client: &kube::Client) -> Result<(), WorkloadError> {
        let kind = self.reference.kind;
        let api = api(client, &self.namespace, kind);
        forget_kubedev_fields(&api, &self.reference.name)
            .await
            .map_err(|err| WorkloadError::from_api(err, "update", kind.plural(), &self.namespace))
    }
}

/// `entries` without kubedev's, if it has one. An empty list would leave the entries as
/// they are (the API server ignores it), so where kubedev's was the only one, the list is
/// one empty entry, which clears them.
fn without_kubedev(entries: Option<&[ManagedFieldsEntry]>) -> Option<Vec<ManagedFieldsEntry>> {
    let entries = entries?;
    let others: Vec<ManagedFieldsEntry> = entries
        .iter()
        .filter(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
        .cloned()
        .collect();
    if others.len() == entries.len() {
        return None;
    }
    Some(match others.is_empty() {
        true => vec![ManagedFieldsEntry::default()],
        false => others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(manager: &str) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn only_kubedevs_entry_goes() {
        let entries = [entry("kubectl"), entry(FIELD_MANAGER), entry("flux")];
        assert_eq!(
            without_kubedev(Some(&entries)),
            Some(vec![entry("kubectl"), entry("flux")])
        );
        assert_eq!(without_kubedev(Some(&entries[..1])), None, "not there");
        assert_eq!(without_kubedev(None), None);
        assert_eq!(
            without_kubedev(Some(&entries[1..2])),
            Some(vec![ManagedFieldsEntry::default()]),
            "the only one: cleared"
        );
    }
}
