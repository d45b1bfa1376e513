//! Why a workload's controller cannot create its pods (a ResourceQuota, an admission
//! policy, Pod Security): its `FailedCreate` events say, where no pod's status can.
//! Anyone allowed to create events could write one, so only an event that reads like the
//! controller's counts: reported by it, about the pods this rollout makes (the ReplicaSet
//! whose template has the agent), in the rollout's time.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};

use super::{PodOwners, Workload, WorkloadKind};
use crate::inject::AGENT_CONTAINER;
use crate::printable::printable;

/// How far the cluster's clocks (the API server's, the controller manager's) may be apart.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The longest controller message shown; a real one is a line or two.
const LONGEST_MESSAGE: usize = 1000;

/// The rollout's time, by the cluster's clocks: from the API server's time of the write
/// that started it to as long after that as this machine has waited (plus
/// [`CLOCK_SKEW`]), so no clock of this machine is compared with the cluster's.
#[derive(Debug)]
pub(super) struct RolloutTime {
    /// The API server's time of the write.
    pub(super) since: Time,
    /// How long the rollout has been waited on.
    pub(super) waited: Duration,
}

impl RolloutTime {
    fn contains(&self, at: &Time) -> bool {
        let late = self.waited + CLOCK_SKEW;
        let until = self.since.0.checked_add(late).unwrap_or(self.since.0);
        at.0 >= self.since.0 && at.0 <= until
    }
}

/// The newest reason the workload's controller gave, in the rollout's `time`, for failing
/// to create a pod with the agent. Without permission to read events, or with none, `None`.
pub(super) async fn creation_failure(
    client: &kube::Client,
    workload: &Workload,
    owners: &mut PodOwners,
    time: &RolloutTime,
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
        .filter(|event| happened(event).is_some_and(|at| time.contains(&at)))
        .filter(|event| reported_by(event, controller_of(workload)))
        .collect();
    recent.sort_by_key(|event| happened(event).map(|at| at.0));
    for event in recent.into_iter().rev() {
        if about_new_pods(client, event, workload, owners).await {
            let message = event.message.as_deref().unwrap_or("no message").trim();
            let message: String = message.chars().take(LONGEST_MESSAGE).collect();
            return Some(printable(&format!("{}: {message}", reason_of(event))));
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

/// Whether `event` says `controller` reported it (in the field of either events API).
fn reported_by(event: &Event, controller: &str) -> bool {
    let source = event.source.as_ref().and_then(|s| s.component.as_deref());
    [source, event.reporting_component.as_deref()].contains(&Some(controller))
}

/// The controller that creates the pods of `workload`'s kind, as its events name it.
fn controller_of(workload: &Workload) -> &'static str {
    match workload.reference.kind {
        WorkloadKind::StatefulSet => "statefulset-controller",
        WorkloadKind::DaemonSet => "daemonset-controller",
        WorkloadKind::Deployment | WorkloadKind::ReplicaSet | WorkloadKind::Rollout => {
            "replicaset-controller"
        }
        // kubedev creates a pod of its own itself, and hears of a refusal at once.
        WorkloadKind::Pod => "kubedev",
    }
}

/// Whether `event` is about the pods with the agent: those of the workload itself, or (for
/// a Deployment) of the ReplicaSet it controls whose template has the agent.
async fn about_new_pods(
    client: &kube::Client,
    event: &Event,
    workload: &Workload,
    owners: &mut PodOwners,
) -> bool {
    let object = &event.involved_object;
    let (Some(kind), Some(name), Some(uid)) = (&object.kind, &object.name, &object.uid) else {
        return false;
    };
    if workload.reference.kind.template_hash_label().is_none() {
        return kind == workload.reference.kind.api_kind() && Some(uid.as_str()) == workload.uid();
    }
    if kind != "ReplicaSet" || !owners.controls_replica_set(name, uid).await {
        return false;
    }
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &workload.namespace);
    let Ok(Some(found)) = replica_sets.get_opt(name).await else {
        return false;
    };
    let template = found.spec.and_then(|spec| spec.template?.spec);
    found.metadata.uid.as_deref() == Some(uid.as_str())
        && template.is_some_and(|spec| spec.containers.iter().any(|c| c.name == AGENT_CONTAINER))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn only_times_from_the_write_to_as_long_after_as_waited_count() {
        let since: Timestamp = "2026-12-05T10:00:00Z".parse().expect("time");
        let time = RolloutTime {
            since: Time(since),
            waited: Duration::from_secs(30),
        };
        let at = |text: &str| Time(text.parse().expect("time"));
        assert!(time.contains(&at("2026-12-05T10:00:00Z")));
        assert!(
            time.contains(&at("2026-12-05T10:01:29Z")),
            "within the skew"
        );
        assert!(
            !time.contains(&at("2026-12-05T09:59:59Z")),
            "before the write"
        );
        assert!(
            !time.contains(&at("2030-01-01T00:00:00Z")),
            "from the future"
        );
    }
}
