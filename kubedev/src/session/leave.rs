//! Ending a session: taking it off its workload's record and, for the last one, putting
//! back the original template and Service ports, then waiting for the pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

use super::SessionError;
use super::error::corrupt;
use super::lease::end_lease;
use super::record::{RECORD_ANNOTATION, Removal, record_of};
use crate::workload::{
    OldPods, Progress, Workload, WorkloadError, WorkloadRef, retry_on_conflict, wait_for_pods,
};

/// What leaving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// The workload is as it was before the first session.
    Restored,
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
    pub fn describe(self, name: &str, workload: &WorkloadRef) -> String {
        match self {
            Self::Restored => format!("{workload} restored"),
            Self::OthersRemain(count) => format!(
                "session {name:?} ended; {count} other intercept{} of {workload} remain{}",
                if count == 1 { "" } else { "s" },
                if count == 1 { "s" } else { "" }
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
        retry_on_conflict(|| remove_session(client, namespace, reference, name, owner)).await?;
    if let Some(owner) = &removed.owner {
        // Nothing is left to reclaim once the record no longer has the session; a lease
        // left behind is deleted by the next reclaim.
        if let Err(err) = end_lease(client, namespace, owner).await {
            tracing::warn!("ending the lease of session {name}: {err}");
        }
    }
    match removed.outcome {
        Outcome::Settled(left) => Ok(left),
        Outcome::Restored(workload) => {
            let wanted = (false, OldPods::Terminating);
            wait_for_pods(client, &workload, wanted, timeout, progress).await?;
            Ok(Left::Restored)
        }
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
    /// The original template and Service are back; the pods are rolling out.
    Restored(Box<Workload>),
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
    // Putting the Service's ports back is idempotent, so a retry after a conflict on the
    // workload does it again harmlessly.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for original in &record.services {
        let mut service = services
            .get_opt(&original.name)
            .await
            .map_err(|err| WorkloadError::from_api(err, "get", "services", namespace))?
            .ok_or_else(|| WorkloadError::NotFound {
                what: format!("service {} to restore", original.name),
                namespace: namespace.to_owned(),
            })?;
        let ports = serde_json::from_value(original.ports.clone()).map_err(|err| {
            corrupt(
                reference,
                format!("the recorded ports of service {}: {err}", original.name),
            )
        })?;
        let Some(spec) = service.spec.as_mut() else {
            continue;
        };
        if spec.ports == ports {
            // Never changed (the session failed before it got that far), or put back
            // already: no write, so no permission, is needed.
            continue;
        }
        spec.ports = ports;
        services
            .replace(&original.name, &PostParams::default(), &service)
            .await
            .map_err(|err| WorkloadError::from_api(err, "update", "services", namespace))?;
    }
    workload
        .write(client, record.template, RECORD_ANNOTATION, None)
        .await?;
    Ok(Removed {
        outcome: Outcome::Restored(Box::new(workload)),
        owner: removed_owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_as_what_happened() {
        let workload: WorkloadRef = "web".parse().expect("reference");
        assert_eq!(
            Left::Restored.describe("web", &workload),
            "deployment/web restored"
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
