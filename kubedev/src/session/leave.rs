//! Ending a session: taking it off its workload's record and, for the last one, putting
//! back the original template and Service ports, then waiting for the pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

use super::SessionError;
use super::error::corrupt;
use super::lease::end_lease;
use super::record::{
    FLUX_PAUSED, FLUX_RECONCILE, RECORD_ANNOTATION, Record, Removal, ServiceRecord, record_of,
};
use super::three_way::{OthersChanges, restore};
use super::tokens::{forget_token, token_key};
use crate::workload::{
    Filled, OldPods, Progress, Workload, WorkloadError, WorkloadKind, WorkloadRef,
    hand_back_fields, restore_gap_of, retry_on_conflict, wait_for_pods, write_params,
};

/// What leaving did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// What the sessions changed is undone; what others changed meanwhile stays, as named.
    Restored(OthersChanges),
    /// Other intercepts remain on the workload.
    OthersRemain(usize),
    /// The session of that name is another run's (see [`super::Record::owner`]): nothing
    /// changed.
    NotOwned,
    /// No session of that name is on the workload: nothing changed.
    NotThere,
}

impl Left {
    /// What happened to session `name` on `workload`, in words, for the plugins and tunneld.
    pub fn describe(&self, name: &str, workload: &WorkloadRef) -> String {
        match self {
            Self::Restored(changes) if changes.kept.is_empty() && changes.overridden.is_empty() => {
                format!("{workload} restored")
            }
            Self::Restored(changes) => format!("{workload} restored; {}", changes.describe()),
            Self::OthersRemain(count) => format!(
                "session {name:?} ended; {count} other intercept{} of {workload} remain{}",
                if *count == 1 { "" } else { "s" },
                if *count == 1 { "s" } else { "" }
            ),
            Self::NotOwned => {
                format!("session {name:?} on {workload} is another run's: left as it is")
            }
            Self::NotThere => format!("no session {name:?} on {workload}: nothing to end"),
        }
    }
}

/// Ends session `name` on `reference`, if it is `owner`'s run's (any run's without one).
/// The last session to leave puts back what was changed, and waits for the pods; one that
/// joined an intercept only removes itself. A workload without that session is left alone.
/// The session's lease ends with it.
pub async fn leave(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    name: &str,
    owner: Option<&str>,
    timeout: Duration,
    progress: impl FnMut(&Progress),
) -> Result<Left, SessionError> {
    let removed =
        match retry_on_conflict(|| remove_session(client, namespace, reference, name, owner)).await
        {
            Err(err @ SessionError::Workload(WorkloadError::NotFound { .. }))
                if reference.kind == WorkloadKind::Pod =>
            {
                return fill_the_gap(client, namespace, (reference, owner), timeout, Err(err))
                    .await;
            }
            removed => removed?,
        };
    if let Some(owner) = &removed.owner {
        // Nothing is left to reclaim once the record no longer has the session; a lease
        // left behind is deleted by the next reclaim.
        if let Err(err) = end_lease(client, namespace, owner).await {
            tracing::warn!("ending the lease of session {name}: {err}");
        }
    }
    match removed.outcome {
        // A start stopped (Ctrl-C) after deleting the pod: it is stopping, without a record.
        Outcome::Settled(Left::NotThere) if reference.kind == WorkloadKind::Pod => {
            fill_the_gap(
                client,
                namespace,
                (reference, owner),
                timeout,
                Ok(Left::NotThere),
            )
            .await
        }
        Outcome::Settled(left) => Ok(left),
        Outcome::Restored(workload, changes) => {
            let wanted = (false, OldPods::Terminating);
            wait_for_pods(client, &workload, wanted, timeout, progress).await?;
            Ok(Left::Restored(changes))
        }
    }
}

/// Leaves a session on a pod without it: deleted to be created again by a run that ended
/// before it was, whose gap holds the pod to create once the one deleted has stopped
/// (waited for up to `timeout`); else `otherwise`. Run `owner`'s lease and token, of no more
/// use once the pod is created from the gap, go with it.
async fn fill_the_gap(
    client: &kube::Client,
    namespace: &str,
    (pod, owner): (&WorkloadRef, Option<&str>),
    timeout: Duration,
    otherwise: Result<Left, SessionError>,
) -> Result<Left, SessionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match restore_gap_of(client, namespace, &pod.name).await? {
            Some(filled @ (Filled::Created | Filled::AlreadyThere)) => {
                // Created from the gap, the pod has no session whose agent reads the token.
                if let (Filled::Created, Some(owner)) = (filled, owner) {
                    forget_run(client, namespace, pod, owner).await;
                }
                return Ok(Left::Restored(OthersChanges::default()));
            }
            Some(Filled::StillStopping) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Filled::StillStopping) => {
                return Err(SessionError::Refused(format!(
                    "{pod} has not stopped in {}s: the next kubedev command in namespace \
                     {namespace} creates it again once it has",
                    timeout.as_secs()
                )));
            }
            None => return otherwise,
        }
    }
}

/// Ends run `owner`'s lease and drops its token for `workload`.
async fn forget_run(client: &kube::Client, namespace: &str, workload: &WorkloadRef, owner: &str) {
    if let Err(err) = end_lease(client, namespace, owner).await {
        tracing::warn!("ending the lease of run {owner}: {err}");
    }
    if let Err(err) = forget_token(client, namespace, &token_key(workload, owner)).await {
        tracing::warn!("dropping the token of run {owner}: {err}");
    }
}

/// What removing a session from its workload's record did.
pub(super) struct Removed {
    pub(super) outcome: Outcome,
    /// The run whose session was taken off the record, if one was and it said.
    pub(super) owner: Option<String>,
}

/// Whether removing a session left anything to wait for.
pub(super) enum Outcome {
    /// Nothing is left to wait for (the session was not there, is another run's, or others
    /// remain on the agent).
    Settled(Left),
    /// What the sessions changed in the template and Service is undone (keeping what
    /// others changed, as named); the pods are rolling out.
    Restored(Box<Workload>, OthersChanges),
}

/// Reads the workload and takes session `name` off it; one attempt, which fails if the
/// workload changed since it was read.
pub(super) async fn remove_session(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    name: &str,
    owner: Option<&str>,
) -> Result<Removed, SessionError> {
    let mut workload = Workload::get(client, namespace, reference).await?;
    let settled = |left| Removed {
        outcome: Outcome::Settled(left),
        owner: None,
    };
    let Some(mut record) = record_of(&workload)? else {
        return Ok(settled(Left::NotThere));
    };
    let removed_owner = record.owner_of(name).map(str::to_owned);
    match record.remove(name, owner) {
        Removal::NotThere => return Ok(settled(Left::NotThere)),
        Removal::NotOwned => return Ok(settled(Left::NotOwned)),
        Removal::OthersRemain(count) => {
            workload
                .annotate(client, RECORD_ANNOTATION, record.to_annotation())
                .await?;
            return Ok(Removed {
                outcome: Outcome::Settled(Left::OthersRemain(count)),
                owner: removed_owner,
            });
        }
        Removal::Last => {}
    }
    let changes = undo(client, namespace, &record, &mut workload).await?;
    Ok(Removed {
        outcome: Outcome::Restored(Box::new(workload), changes),
        owner: removed_owner,
    })
}

/// Takes what `record` says its sessions changed back out of `workload` and its Service,
/// keeping what others changed; one attempt at the workload's write.
async fn undo(
    client: &kube::Client,
    namespace: &str,
    record: &Record,
    workload: &mut Workload,
) -> Result<OthersChanges, SessionError> {
    let reference = &workload.reference.clone();
    // Putting the Service's ports back is idempotent, so a retry after a conflict on the
    // workload does it again harmlessly.
    let mut changes = OthersChanges::default();
    for service in &record.services {
        changes.extend(restore_service(client, namespace, reference, service).await?);
    }
    let live = workload.stored_template()?;
    let applied = record.applied.as_ref().unwrap_or(live);
    let root = match workload.reference.kind {
        WorkloadKind::Pod => "pod",
        _ => "spec.template",
    };
    let restored = restore(root, &record.template, applied, live);
    changes.extend(restored.changes);
    // kubedev never writes the replicas: a change to them is someone else's, and stays.
    if let Some(was) = record.replicas.filter(|was| *was != workload.replicas()) {
        let now = workload.replicas();
        changes.kept.push(format!("spec.replicas ({was} -> {now})"));
    }
    if record.paused_flux && workload.annotation(FLUX_RECONCILE) == Some(FLUX_PAUSED) {
        workload.stage_annotation(FLUX_RECONCILE, None);
    }
    workload
        .write(client, restored.value, RECORD_ANNOTATION, None)
        .await?;
    // The agent is gone from the template: its token is of no more use.
    if let Some(key) = &record.token_key
        && let Err(err) = forget_token(client, namespace, key).await
    {
        tracing::warn!("dropping the token of {reference}'s agent: {err}");
    }
    forget_kubedev(client, namespace, workload, record).await;
    Ok(changes)
}

/// Takes kubedev's name off the fields it wrote, the restore's included, on the workload
/// and the Services the session changed, and gives them back to the managers the session
/// found: nothing of kubedev stays on them.
async fn forget_kubedev(
    client: &kube::Client,
    namespace: &str,
    workload: &Workload,
    record: &Record,
) {
    if let Err(err) = workload
        .hand_back_fields(client, record.managers.as_deref())
        .await
    {
        tracing::warn!("{}: {err}", workload.reference);
    }
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for service in &record.services {
        let found = service.managers.as_deref();
        if let Err(err) = hand_back_fields(&services, &service.name, found).await {
            tracing::warn!("service {}: {err}", service.name);
        }
    }
}

/// Restores what `record` (as last seen on `reference`) says its sessions changed, where
/// the workload no longer holds the record: someone replaced the object whole (`kubectl
/// replace`, a GitOps tool's replace) and the Service's original ports, the token and the
/// pause of Flux would otherwise stay as the session left them. Where another session has
/// started on the workload since, nothing is touched.
pub async fn restore_unrecorded(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    record: &Record,
    timeout: Duration,
) -> Result<Left, SessionError> {
    let restored = retry_on_conflict(|| async {
        let mut workload = Workload::get(client, namespace, reference).await?;
        // A session started on it since holds it now: its record and agent are its own.
        if let Some(newer) = record_of(&workload)? {
            return Ok(Err(Left::OthersRemain(newer.sessions().count())));
        }
        let changes = undo(client, namespace, record, &mut workload).await?;
        Ok::<_, SessionError>(Ok((workload, changes)))
    })
    .await?;
    let (workload, changes) = match restored {
        Ok(restored) => restored,
        Err(left) => return Ok(left),
    };
    wait_for_pods(
        client,
        &workload,
        (false, OldPods::Terminating),
        timeout,
        |_| {},
    )
    .await?;
    Ok(Left::Restored(changes))
}

/// Takes the session's change back out of the ports of Service `recorded.name`, keeping
/// what others changed.
async fn restore_service(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    recorded: &ServiceRecord,
) -> Result<OthersChanges, SessionError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let name = &recorded.name;
    let mut service = services
        .get_opt(name)
        .await
        .map_err(|err| WorkloadError::from_api(err, "get", "services", namespace))?
        .ok_or_else(|| WorkloadError::NotFound {
            what: format!("service {name} to restore"),
            namespace: namespace.to_owned(),
        })?;
    let unreadable = |err: serde_json::Error| {
        corrupt(
            reference,
            format!("the recorded ports of service {name}: {err}"),
        )
    };
    let live =
        serde_json::to_value(service.spec.as_ref().map(|spec| &spec.ports)).map_err(unreadable)?;
    let applied = recorded.applied_ports.as_ref().unwrap_or(&live);
    let restored = restore(
        &format!("service/{name} spec.ports"),
        &recorded.ports,
        applied,
        &live,
    );
    let resumed = recorded.paused_flux && resume_flux(&mut service.metadata.annotations);
    if restored.value == live && !resumed {
        // Never changed (the session failed before it got that far), or put back
        // already: no write, so no permission, is needed.
        return Ok(restored.changes);
    }
    if let Some(spec) = service.spec.as_mut() {
        spec.ports = serde_json::from_value(restored.value).map_err(unreadable)?;
    }
    services
        .replace(name, &write_params(), &service)
        .await
        .map_err(|err| WorkloadError::from_api(err, "update", "services", namespace))?;
    Ok(restored.changes)
}

/// Takes the session's pause of Flux off `annotations`, if it is still there; whether it was.
fn resume_flux(annotations: &mut Option<std::collections::BTreeMap<String, String>>) -> bool {
    let Some(annotations) = annotations else {
        return false;
    };
    let paused = annotations.get(FLUX_RECONCILE).map(String::as_str) == Some(FLUX_PAUSED);
    paused && annotations.remove(FLUX_RECONCILE).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_as_what_happened() {
        let workload: WorkloadRef = "web".parse().expect("reference");
        assert_eq!(
            Left::Restored(OthersChanges::default()).describe("web", &workload),
            "deployment/web restored"
        );
        let kept = OthersChanges {
            kept: vec!["spec.template.spec.containers[web].env[FLAG]".into()],
            overridden: Vec::new(),
        };
        assert_eq!(
            Left::Restored(kept).describe("web", &workload),
            "deployment/web restored; kept changes made during the session to \
             spec.template.spec.containers[web].env[FLAG]"
        );
        assert_eq!(
            Left::OthersRemain(1).describe("bob", &workload),
            "session \"bob\" ended; 1 other intercept of deployment/web remains"
        );
        assert_eq!(
            Left::OthersRemain(2).describe("bob", &workload),
            "session \"bob\" ended; 2 other intercepts of deployment/web remain"
        );
        assert_eq!(
            Left::NotThere.describe("gone", &workload),
            "no session \"gone\" on deployment/web: nothing to end"
        );
        assert!(
            Left::NotOwned
                .describe("web", &workload)
                .ends_with("is another run's: left as it is")
        );
    }
}
