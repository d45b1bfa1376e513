//! Writing a pod of its own: labels and annotations in place; a spec change by deleting the
//! pod and creating it again under the same name, losing it under no exit. Both pods are
//! first tried as dry runs, so that nothing is deleted that admission would not take back,
//! and the pod without a session is kept in a gap ([`super::pod_gap`]) while the name is
//! free.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams, Preconditions, PropagationPolicy};
use serde_json::Value;

use super::object::api;
use super::pod::{OBJECT_ANNOTATIONS, has_record, manifest, template_of};
use super::pod_gap::{self, not_restored};
use super::{Workload, WorkloadError, WorkloadKind, write_params};

/// How long a gap may last past the pod's grace period before another run fills it.
const GAP_MARGIN: Duration = Duration::from_secs(30);
/// How often a deleted pod is looked for until it is gone.
const POLL: Duration = Duration::from_millis(250);
/// How many times a create that may pass later (the API server busy, a quota not yet
/// counting the pod deleted) is tried, a second apart.
const CREATE_ATTEMPTS: u32 = 10;

impl Workload {
    /// A pod's write: its labels and annotations in place where its spec stays, else the
    /// pod deleted and created again.
    pub(super) async fn write_pod(
        &mut self,
        client: &kube::Client,
        template: Value,
        (key, annotation): (&str, Option<String>),
    ) -> Result<(), WorkloadError> {
        let wanted = manifest(&self.object, &template, (key, annotation.as_deref()));
        let current = self.pod_template.as_ref().map(|t| &t["spec"]);
        self.object = if current == Some(&template["spec"]) {
            let mut object = self.object.clone();
            let field = |name: &str| serde_json::from_value(wanted["metadata"][name].clone());
            object.metadata.labels = field("labels").unwrap_or_default();
            object.metadata.annotations = field("annotations").unwrap_or_default();
            let kind = WorkloadKind::Pod;
            api(client, &self.namespace, kind)
                .replace(&self.reference.name, &write_params(), &object)
                .await
                .map_err(|err| pod_error(err, "update", &self.namespace))?
        } else {
            recreate(client, &self.object, wanted).await?
        };
        self.pod_template = Some(template_of(&self.object));
        Ok(())
    }
}

fn pod_error(err: kube::Error, verb: &'static str, namespace: &str) -> WorkloadError {
    WorkloadError::from_api(err, verb, "pods", namespace)
}

/// Deletes pod `live` (only as read: same uid and resource version) and creates `wanted`
/// in its place, returning the new pod. Where `wanted` cannot be created, `live` is created
/// again as it was, and the error says why.
async fn recreate(
    client: &kube::Client,
    live: &DynamicObject,
    wanted: Value,
) -> Result<DynamicObject, WorkloadError> {
    let namespace = live.metadata.namespace.clone().unwrap_or_default();
    let name = live.metadata.name.clone().unwrap_or_default();
    let key = (OBJECT_ANNOTATIONS[0], record_of(live));
    let before = manifest(live, &template_of(live), key);
    let api = api(client, &namespace, WorkloadKind::Pod);
    for (pod, which) in [(&wanted, "with the change"), (&before, "as it is")] {
        dry_run(&api, pod, &name, which).await?;
    }
    // The pod without a session: the one deleted (a start), whose managers it keeps, or
    // the restored one (a leave).
    let (kept, managers) = if has_record(&wanted) {
        (&before, live.metadata.managed_fields.clone())
    } else {
        (&wanted, None)
    };
    let grace = live.data.pointer("/spec/terminationGracePeriodSeconds");
    let grace = Duration::from_secs(grace.and_then(Value::as_u64).unwrap_or(30));
    let uid = live.metadata.uid.clone().unwrap_or_default();
    let gap = pod_gap::gap(kept, (&uid, managers), grace + GAP_MARGIN);
    pod_gap::open(client, &namespace, &name, &gap).await?;
    if let Err(err) = delete_as_read(&api, live).await {
        pod_gap::close(client, &namespace, &name, &uid).await;
        return Err(pod_error(err, "delete", &namespace));
    }
    wait_until_gone(&api, &name, grace + GAP_MARGIN).await?;
    let created = match create(&api, &wanted).await {
        Ok(created) => created,
        Err(err) => {
            let refused = not_created(&name, "with the change", &err);
            create(&api, &before)
                .await
                .map_err(|again| not_restored(&name, &namespace, &again))?;
            pod_gap::close(client, &namespace, &name, &uid).await;
            return Err(refused);
        }
    };
    pod_gap::close(client, &namespace, &name, &uid).await;
    Ok(created)
}

/// Deletes pod `live` only as read (its uid and resource version), leaving what it owns
/// to live on rather than be collected with it. An error whose answer may have been lost
/// after the pod was deleted is checked against the pod itself.
async fn delete_as_read(api: &Api<DynamicObject>, live: &DynamicObject) -> Result<(), kube::Error> {
    let name = live.metadata.name.as_deref().unwrap_or_default();
    let deleting = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        preconditions: Some(Preconditions {
            uid: live.metadata.uid.clone(),
            resource_version: live.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    let Err(err) = api.delete(name, &deleting).await else {
        return Ok(());
    };
    match api.get_opt(name).await {
        Ok(None) => Ok(()),
        Ok(Some(there))
            if there.metadata.uid == live.metadata.uid
                && there.metadata.deletion_timestamp.is_some() =>
        {
            Ok(())
        }
        _ => Err(err),
    }
}

/// The session record on pod `object`, if any.
fn record_of(object: &DynamicObject) -> Option<&str> {
    let annotations = object.metadata.annotations.as_ref()?;
    annotations.get(OBJECT_ANNOTATIONS[0]).map(String::as_str)
}

fn from_json(manifest: &Value) -> Result<DynamicObject, WorkloadError> {
    serde_json::from_value(manifest.clone()).map_err(|source| WorkloadError::Template {
        workload: format!(
            "pod/{}",
            manifest["metadata"]["name"].as_str().unwrap_or("?")
        ),
        source,
    })
}

/// Creates `manifest`, trying again a while where it may pass later: the API server
/// unavailable, or a quota that does not count the pod just deleted yet. A pod of that
/// name there already is taken as the one created (a create whose answer was lost).
async fn create(api: &Api<DynamicObject>, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject =
        serde_json::from_value(manifest.clone()).map_err(kube::Error::SerdeError)?;
    let name = object.metadata.name.clone().unwrap_or_default();
    let mut attempt = 1;
    loop {
        let err = match api.create(&write_params(), &object).await {
            Ok(created) => return Ok(created),
            Err(err) => err,
        };
        let passes_later = match &err {
            kube::Error::Api(status) if status.code == 409 => {
                match api.get_opt(&name).await? {
                    // This create's, its answer lost: it carries the same session, or none.
                    Some(there)
                        if record_of(&there)
                            == manifest["metadata"]["annotations"][OBJECT_ANNOTATIONS[0]]
                                .as_str() =>
                    {
                        return Ok(there);
                    }
                    Some(_) => false,
                    None => true,
                }
            }
            kube::Error::Api(status) => {
                status.code >= 500
                    || status.code == 429
                    || status.message.contains("exceeded quota")
            }
            _ => true,
        };
        if !passes_later || attempt == CREATE_ATTEMPTS {
            return Err(err);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Fails where admission would not create `manifest` (under another name, as this one is
/// taken).
async fn dry_run(
    api: &Api<DynamicObject>,
    manifest: &Value,
    name: &str,
    which: &str,
) -> Result<(), WorkloadError> {
    let mut trial = from_json(manifest)?;
    trial.metadata.name = None;
    trial.metadata.generate_name = Some(format!("{name}-"));
    let params = PostParams {
        dry_run: true,
        ..write_params()
    };
    match api.create(&params, &trial).await {
        Ok(_) => Ok(()),
        // The dry run counts the pod that is still there: the real create will not.
        Err(kube::Error::Api(status)) if status.message.contains("exceeded quota") => {
            tracing::debug!("pod/{name} {which}, tried: {}", status.message);
            Ok(())
        }
        Err(err @ kube::Error::Api(_)) if !is_forbidden_to_create(&err) => {
            Err(not_created(name, which, &err))
        }
        Err(err) => Err(pod_error(
            err,
            "create",
            api.namespace().unwrap_or_default(),
        )),
    }
}

fn is_forbidden_to_create(err: &kube::Error) -> bool {
    // A 403 is the user's Role, unless admission (PodSecurity) said it.
    matches!(err, kube::Error::Api(status) if status.code == 403
        && !status.message.contains("violates PodSecurity"))
}

fn not_created(name: &str, which: &str, err: &kube::Error) -> WorkloadError {
    let reason = match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    WorkloadError::PodRefused {
        pod: format!("pod/{name}"),
        why: format!(
            "could not be created again {which} ({reason}): kubedev deletes a pod only where \
             it can put it back"
        ),
    }
}

/// Waits until pod `name` no longer exists.
async fn wait_until_gone(
    api: &Api<DynamicObject>,
    name: &str,
    limit: Duration,
) -> Result<(), WorkloadError> {
    let namespace = api.namespace().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + limit;
    while api
        .get_opt(name)
        .await
        .map_err(|err| pod_error(err, "get", &namespace))?
        .is_some()
    {
        if tokio::time::Instant::now() > deadline {
            return Err(WorkloadError::PodRefused {
                pod: format!("pod/{name}"),
                why: format!(
                    "did not stop within {}s; once it has, the next kubedev command in \
                     namespace {namespace} creates it again",
                    limit.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}
