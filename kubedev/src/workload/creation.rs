//! Why a workload's controller cannot create its pods (a ResourceQuota, an admission
//! policy, Pod Security): its `FailedCreate` events say, where no pod's status can.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};

use super::{PodOwners, Workload, WorkloadKind};
use crate::printable::printable;

/// The newest reason the workload's controller gave, at or after `since` (the API
/// server's time of the write that started the rollout, so no clocks are compared), for
/// failing to create a pod. Without permission to read events, or with none, `None`.
pub(super) async fn creation_failure(
    client: &kube::Client,
    workload: &Workload,
    owners: &mut PodOwners,
    since: &Time,
) -> Option<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), &workload.namespace);
    let listed = events
        .list(&ListParams::default().fields("reason=FailedCreate"))
        .await
        .inspect_err(|err| tracing::debug!("listing FailedCreate events: {err}"))
        .ok()?;
    let mut recent: Vec<&Event> = listed
        .items
        .iter()
        .filter(|event| happened(event).is_some_and(|at| at.0 >= since.0))
        .collect();
    recent.sort_by_key(|event| happened(event).map(|at| at.0));
    for event in recent.into_iter().rev() {
        if about_workload(event, workload, owners).await {
            let message = event.message.as_deref().unwrap_or("no message");
            let said = format!("{}: {}", reason_of(event), message.trim());
            return Some(printable(&said));
        }
    }
    None
}

/// When the event last happened, in whichever field its reporter filled.
fn happened(event: &Event) -> Option<Time> {
    event
        .series
        .as_ref()
        .and_then(|series| series.last_observed_time.as_ref())
        .or(event.event_time.as_ref())
        .map(|micro| Time(micro.0))
        .or_else(|| event.last_timestamp.clone())
}

fn reason_of(event: &Event) -> &str {
    event.reason.as_deref().unwrap_or("FailedCreate")
}

/// Whether `event` is about the workload, or (for a Deployment) a ReplicaSet it controls.
async fn about_workload(event: &Event, workload: &Workload, owners: &mut PodOwners) -> bool {
    let object = &event.involved_object;
    let (Some(kind), Some(name), Some(uid)) = (&object.kind, &object.name, &object.uid) else {
        return false;
    };
    match workload.reference.kind {
        WorkloadKind::Deployment => {
            kind == "ReplicaSet" && owners.controls_replica_set(name, uid).await
        }
        other => kind == other.api_kind() && Some(uid.as_str()) == workload.uid(),
    }
}
