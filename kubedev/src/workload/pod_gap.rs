//! A pod's gap: while kubedev has deleted a pod of its own and not yet created it again,
//! the pod to create is kept under `pod-gap.NAME` in the namespace's sessions' Secret
//! ([`crate::inject::TOKENS_SECRET`]), which kubedev's Role lets change by name and reads
//! nowhere else: no one without that Role can put a pod there for another developer's
//! kubedev to create, and no literal value of the pod's spec is shown to readers of other
//! objects. A gap keeps the pod without a session (the original on a start, the restored
//! one on a leave), the uid of the pod deleted, and when its run gives it up. Whoever finds
//! the gap open with no pod of that name creates it: the session's `leave` (tunneld's too,
//! when a plugin dies), or the next run in the namespace once the gap's time is up
//! ([`restore_expired_gaps`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DynamicObject};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hand_back_fields;
use super::object::api;
use super::pod::{GAP_PREFIX, has_record};
use super::{WorkloadError, WorkloadKind, retry_on_conflict, write_params};
use crate::inject::TOKENS_SECRET;

/// A pod's gap, as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Gap {
    /// The pod to create.
    pub(super) pod: Value,
    /// The uid of the pod deleted: while a pod of that uid is still there (stopping), the
    /// gap stays open.
    pub(super) deleted_uid: String,
    /// When the run that opened it gives it up to others.
    pub(super) ends: Timestamp,
    /// Who managed which fields of the pod kept, where that is the pod deleted (a start's
    /// gap): given back once it is created again.
    #[serde(default)]
    pub(super) managers: Option<Vec<ManagedFieldsEntry>>,
}

impl Gap {
    /// Whether its run has given it up, by this machine's clock with room for another's.
    fn given_up(&self) -> bool {
        let end = self.ends.checked_add(CLOCK_MARGIN);
        end.is_ok_and(|end| end < Timestamp::now())
    }
}

/// What filling a gap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// The pod was created again as kept.
    Created,
    /// A pod of that name was there already, a new one: the gap is closed.
    AlreadyThere,
    /// The pod deleted is still stopping: the gap stays open.
    StillStopping,
}

fn secrets(client: &kube::Client, namespace: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), namespace)
}

fn secret_error(err: kube::Error, verb: &'static str, namespace: &str) -> WorkloadError {
    WorkloadError::from_api(err, verb, "secrets", namespace)
}

fn key_of(pod: &str) -> String {
    format!("{GAP_PREFIX}{pod}")
}

/// Changes the gaps kept in the namespace's Secret with `change` (given the Secret's data),
/// redone from a fresh read while the Secret changes under it.
async fn change_gaps(
    client: &kube::Client,
    namespace: &str,
    change: impl Fn(&mut BTreeMap<String, ByteString>),
) -> Result<(), WorkloadError> {
    let api = secrets(client, namespace);
    retry_on_conflict(|| async {
        let Some(mut secret) = api
            .get_opt(TOKENS_SECRET)
            .await
            .map_err(|err| secret_error(err, "get", namespace))?
        else {
            return Err(WorkloadError::PodRefused {
                pod: "a pod of its own".to_owned(),
                why: format!(
                    "is deleted and created again only where Secret {TOKENS_SECRET} keeps it \
                     meanwhile, and namespace {namespace} has none: it comes with kubedev's \
                     Role (`kubectl intercept role`)"
                ),
            });
        };
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        let before = data.clone();
        change(data);
        if *data == before {
            return Ok(());
        }
        api.replace(TOKENS_SECRET, &write_params(), &secret)
            .await
            .map(drop)
            .map_err(|err| secret_error(err, "update", namespace))
    })
    .await
}

/// Opens pod `pod`'s gap, keeping `gap`; another run's open gap on it refuses this one.
pub(super) async fn open(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    gap: &Gap,
) -> Result<(), WorkloadError> {
    let key = key_of(pod);
    let kept = serde_json::to_vec(gap).unwrap_or_default();
    let taken = std::sync::atomic::AtomicBool::new(false);
    change_gaps(client, namespace, |data| {
        taken.store(
            data.contains_key(&key),
            std::sync::atomic::Ordering::Relaxed,
        );
        data.entry(key.clone())
            .or_insert_with(|| ByteString(kept.clone()));
    })
    .await?;
    if taken.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(WorkloadError::PodRefused {
            pod: format!("pod/{pod}"),
            why: "is being deleted and created again by another kubedev run".to_owned(),
        });
    }
    Ok(())
}

/// Closes pod `pod`'s gap opened on deleting the pod of uid `deleted_uid`: the pod exists
/// again. A gap opened since, on deleting another pod of that name, stays.
pub(super) async fn close(client: &kube::Client, namespace: &str, pod: &str, deleted_uid: &str) {
    let key = key_of(pod);
    if let Err(err) = change_gaps(client, namespace, |data| {
        let kept = data
            .get(&key)
            .and_then(|value| serde_json::from_slice::<Gap>(&value.0).ok());
        if kept.is_none_or(|gap| gap.deleted_uid == deleted_uid) {
            data.remove(&key);
        }
    })
    .await
    {
        tracing::warn!("closing the gap of pod/{pod}: {err}");
    }
}

/// The gaps kept in `namespace`, by pod name.
async fn gaps_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<BTreeMap<String, Gap>, WorkloadError> {
    let secret = secrets(client, namespace)
        .get_opt(TOKENS_SECRET)
        .await
        .map_err(|err| secret_error(err, "get", namespace))?;
    let data = secret.and_then(|secret| secret.data).unwrap_or_default();
    Ok(data
        .into_iter()
        .filter_map(|(key, value)| {
            let pod = key.strip_prefix(GAP_PREFIX)?.to_owned();
            Some((pod, serde_json::from_slice(&value.0).ok()?))
        })
        .collect())
}

/// Fills pod `pod`'s gap: creates the pod kept unless one of that name is there, and closes
/// the gap unless the pod deleted is still stopping. A pod of the deleted uid that is not
/// being deleted was never deleted (its run stopped before): once the gap is given up, it
/// is closed.
async fn fill(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    gap: &Gap,
) -> Result<Filled, WorkloadError> {
    let pods: Api<DynamicObject> = api(client, namespace, WorkloadKind::Pod);
    let there = pods
        .get_opt(pod)
        .await
        .map_err(|err| WorkloadError::from_api(err, "get", "pods", namespace))?;
    let filled = match there {
        Some(there) if there.metadata.uid.as_deref() == Some(gap.deleted_uid.as_str()) => {
            let stopping = there.metadata.deletion_timestamp.is_some();
            if stopping || !gap.given_up() {
                return Ok(Filled::StillStopping);
            }
            Filled::AlreadyThere
        }
        Some(_) => Filled::AlreadyThere,
        None => {
            let kept = kept_pod(pod, &gap.pod)?;
            match pods.create(&write_params(), &kept).await {
                Ok(_) => {
                    let managers = gap.managers.as_deref();
                    if let Err(err) = hand_back_fields(&pods, pod, managers).await {
                        tracing::warn!("pod/{pod}: giving its fields back: {err}");
                    }
                    Filled::Created
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Filled::AlreadyThere,
                Err(err) => return Err(not_restored(pod, namespace, &err)),
            }
        }
    };
    close(client, namespace, pod, &gap.deleted_uid).await;
    Ok(filled)
}

/// The pod a gap keeps, as it may be created: named as the gap is, without a session and
/// without a controller.
fn kept_pod(pod: &str, kept: &Value) -> Result<DynamicObject, WorkloadError> {
    let malformed = |why: &str| WorkloadError::PodRefused {
        pod: format!("pod/{pod}"),
        why: format!("is kept in its gap in a form kubedev does not create ({why})"),
    };
    if kept["metadata"]["name"].as_str() != Some(pod) || has_record(kept) {
        return Err(malformed("another name, or a session"));
    }
    let mut object: DynamicObject =
        serde_json::from_value(kept.clone()).map_err(|err| malformed(&err.to_string()))?;
    if let Some(owners) = object.metadata.owner_references.as_mut() {
        owners.retain(|owner| owner.controller != Some(true));
    }
    Ok(object)
}

/// The error of a pod that is gone and could not be created again, and how to create it.
pub(super) fn not_restored(pod: &str, namespace: &str, err: &kube::Error) -> WorkloadError {
    WorkloadError::PodRefused {
        pod: format!("pod/{pod}"),
        why: format!(
            "is gone and could not be created again ({err}); the next kubedev command in \
             namespace {namespace} tries again, or create it from where it is kept: kubectl get \
             secret -n {namespace} {TOKENS_SECRET} -o jsonpath='{{.data.{GAP_PREFIX}{pod}}}' | \
             base64 -d | jq .pod | kubectl create -f -"
        ),
    }
}

/// Fills pod `pod`'s gap, if it has one, whoever opened it: what a leave does that finds
/// the pod missing. What filling did, if there was a gap.
pub async fn restore_gap_of(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
) -> Result<Option<Filled>, WorkloadError> {
    let Some(gap) = gaps_in(client, namespace).await?.remove(pod) else {
        return Ok(None);
    };
    fill(client, namespace, pod, &gap).await.map(Some)
}

/// How long after its end another run fills a gap: room for clocks that disagree.
const CLOCK_MARGIN: SignedDuration = SignedDuration::from_secs(30);

/// Fills every gap in `namespace` whose run gave it up (it died between deleting a pod and
/// creating it again); the pods created again. One that cannot be filled is logged, and
/// the others still are.
pub async fn restore_expired_gaps(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<String>, WorkloadError> {
    let mut created = Vec::new();
    for (pod, gap) in gaps_in(client, namespace).await? {
        if !gap.given_up() {
            continue;
        }
        match fill(client, namespace, &pod, &gap).await {
            Ok(Filled::Created) => created.push(format!("pod/{pod}")),
            Ok(_) => {}
            Err(err) => tracing::warn!("{err}"),
        }
    }
    Ok(created)
}

/// The gap of `pod` deleted (uid `deleted_uid`), keeping `kept` until `lifetime` from now.
pub(super) fn gap(
    kept: &Value,
    (deleted_uid, managers): (&str, Option<Vec<ManagedFieldsEntry>>),
    lifetime: Duration,
) -> Gap {
    let lifetime = SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::MAX);
    Gap {
        pod: kept.clone(),
        deleted_uid: deleted_uid.to_owned(),
        managers,
        ends: Timestamp::now()
            .checked_add(lifetime)
            .unwrap_or(Timestamp::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_gap_creates_only_its_own_pod_without_a_session_or_a_controller() {
        let kept = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u",
                 "controller": true},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"}
            ]},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]}
        });
        let object = kept_pod("web", &kept).expect("its own");
        let owners = object.metadata.owner_references.expect("owners");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].name, "c");
        assert!(kept_pod("other", &kept).is_err(), "another pod's name");
        let mut with_session = kept.clone();
        with_session["metadata"]["annotations"] = json!({"kubedev.io/session": "{}"});
        assert!(kept_pod("web", &with_session).is_err(), "a session");
    }

    #[test]
    fn a_gap_reads_back_as_kept() {
        let kept = gap(
            &json!({"metadata": {"name": "web"}}),
            ("u1", None),
            Duration::from_secs(31),
        );
        let read: Gap =
            serde_json::from_slice(&serde_json::to_vec(&kept).expect("JSON")).expect("a gap");
        assert_eq!(read.deleted_uid, "u1");
        assert_eq!(read.ends, kept.ends);
        assert_eq!(read.pod, kept.pod);
    }
}
