//! Waiting until a workload's pods are what a session wants: all replicas running with
//! the agent (or, after restore, without it) and ready. An agent image the node cannot
//! pull is reported at once instead of waited on.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams};

use super::creation::{RolloutTime, creation_failure};
use super::{PodOwners, Workload, WorkloadError};
use crate::inject::AGENT_CONTAINER;

/// How often pods are checked.
const POLL: Duration = Duration::from_millis(500);
/// How long after the endpoints change until every node's proxy follows.
pub(crate) const PROXY_SYNC: Duration = Duration::from_millis(1500);

/// Why pods did not get there.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The node cannot pull the agent's image.
    #[error("the agent image cannot be pulled in pod {pod}: {reason}{message}")]
    AgentImage {
        /// The pod.
        pod: String,
        /// The kubelet's reason (`ErrImagePull`, `ImagePullBackOff`, ...).
        reason: String,
        /// The kubelet's message, with ": " before it.
        message: String,
    },
    /// `detail` has the exit code and the agent's last log lines (the pod is rolled back,
    /// so they cannot be fetched later).
    #[error("the agent keeps crashing in pod {pod}{detail}")]
    AgentCrash {
        /// The pod.
        pod: String,
        /// Its exit and last log lines.
        detail: String,
    },
    /// The workload's controller cannot create its pods (a quota, an admission policy).
    #[error("pods of {workload} cannot be created: {reason}")]
    NotCreated {
        /// The workload.
        workload: String,
        /// The controller's reason and message.
        reason: String,
    },
    /// The pods did not get there in time.
    #[error(
        "the pods of {workload} were not all ready within {waited:?} (raise --timeout to wait longer): \
         {state}{stuck}"
    )]
    Timeout {
        /// The workload.
        workload: String,
        /// How long.
        waited: Duration,
        /// How far the pods got ([`Progress`]).
        state: String,
        /// Why, as far as the pods say: "; pod P: ...".
        stuck: String,
    },
    /// The pods could not be listed or deleted.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// The pods' state against what is wanted, in a line for the progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Pods of the wanted kind (with or without the agent) that are ready.
    pub ready: usize,
    /// The replicas the workload asks for.
    pub wanted: usize,
    /// Pods of the other kind still running.
    pub leftover: usize,
    /// Pods of the other kind told to stop and still running, where they must be gone (a
    /// replaced container must not go on taking work), and their grace period in seconds.
    pub stopping: (usize, Option<i64>),
    /// Why the workload holds its pods back by itself (an Argo Rollout at a pause step).
    pub paused: Option<String>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pods = |count: usize| if count == 1 { "pod" } else { "pods" };
        write!(f, "{}/{} pods ready", self.ready, self.wanted)?;
        if self.leftover > 0 {
            let old = self.leftover;
            write!(f, ", {old} old {} still running", pods(old))?;
        }
        let (stopping, grace) = self.stopping;
        if stopping > 0 {
            write!(f, ", {stopping} old {} stopping", pods(stopping))?;
            if let Some(grace) = grace {
                write!(f, " (grace period {grace} s)")?;
            }
        }
        if let Some(paused) = &self.paused {
            write!(f, "; the rollout is {paused}")?;
        }
        Ok(())
    }
}

/// Which old pods a rollout waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldPods {
    /// Until they are terminating: Services no longer send them traffic.
    Terminating,
    /// Until they are gone: a replaced container must not go on taking work (a queue's
    /// consumer, a cron loop) through its grace period.
    Gone,
}

/// Waits until every replica of `workload` runs with the agent (`with_agent`) or without
/// it, and is ready, and no pod of the other kind is left as `old` says. Only the
/// workload's own pods count ([`PodOwners`]), whatever else wears its labels. `progress`
/// hears about every change.
pub async fn wait_for_pods(
    client: &kube::Client,
    workload: &Workload,
    (with_agent, old_pods): (bool, OldPods),
    limit: Duration,
    mut progress: impl FnMut(&Progress),
) -> Result<(), RolloutError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &workload.namespace);
    let selector = workload.selector()?;
    let wanted = usize::try_from(workload.replicas()).unwrap_or(0);
    let started = tokio::time::Instant::now();
    let mut recreated = workload.rolls_out_by_itself();
    let mut owners = PodOwners::of(client, workload);
    let written_at = workload.written_at().cloned();
    let mut last = None;
    loop {
        let owned = owned_pods(&pods, &selector, &mut owners).await?;
        let (mut stopping, live): (Vec<&Pod>, Vec<&Pod>) = owned
            .iter()
            .partition(|pod| pod.metadata.deletion_timestamp.is_some());
        // Terminating pods count only where they must be gone.
        let gone = old_pods == OldPods::Gone;
        stopping.retain(|pod| gone && has_agent(pod) != with_agent);
        if with_agent && let Some(error) = live.iter().find_map(|pod| agent_failure(pod)) {
            return Err(error);
        }
        let (current, old): (Vec<&Pod>, Vec<&Pod>) =
            live.iter().partition(|pod| has_agent(pod) == with_agent);
        if !recreated {
            // This kind does not replace pods when its template changes: delete the
            // old ones and let it create new ones.
            delete_pods(&pods, &old, &workload.namespace).await?;
            recreated = true;
        }
        let mut state = progress_of(&current, &old, &stopping, wanted);
        if state.ready < wanted || !old.is_empty() {
            state.paused = super::argo::pause_of(client, workload).await;
        }
        if last.as_ref() != Some(&state) {
            progress(&state);
        }
        // Only while adding the agent: a restore waits for its pods whatever the events say
        // (an old ReplicaSet's, a quota met during the surge), and fails only at the limit.
        if with_agent
            && current.len() < wanted
            && let Some(time) = &rollout_time(&written_at, started)
            && let Some(reason) = creation_failure(client, workload, &mut owners, time).await
        {
            return Err(RolloutError::NotCreated {
                workload: workload.reference.to_string(),
                reason,
            });
        }
        let done = current.len() == wanted && old.is_empty() && stopping.is_empty();
        if state.ready == wanted
            && done
            && !still_serving(client, workload, &owned, with_agent).await?
        {
            // kube-proxy applies endpoint changes at most once per second by default
            // (minSyncPeriod): give it that, so the next connection takes the new path.
            tokio::time::sleep(PROXY_SYNC).await;
            return Ok(());
        }
        // The kubelet stops old pods within their grace period: a wait for them to go may
        // outlast the limit by that much rather than undo a session that is otherwise up.
        let grace_allowed = Duration::from_secs(state.stopping.1.map_or(0, i64::unsigned_abs));
        if started.elapsed() > limit + grace_allowed {
            return Err(timed_out(workload, limit, &state, stuck_on(&current, &old)));
        }
        last = Some(state);
        tokio::time::sleep(POLL).await;
    }
}

/// The error of a wait for `workload`'s pods that ran out after `limit` at `state`, the
/// pods `stuck` as they say, and what to do where its strategy holds them back.
fn timed_out(
    workload: &Workload,
    limit: Duration,
    state: &Progress,
    stuck: String,
) -> RolloutError {
    let promote = (state.paused.as_deref()).map(|pause| {
        super::argo::promote_hint(pause, &workload.reference.name, &workload.namespace)
    });
    RolloutError::Timeout {
        workload: workload.reference.to_string(),
        waited: limit,
        state: state.to_string(),
        stuck: stuck + &promote.unwrap_or_default(),
    }
}

/// How far the pods got: `current` ready of `wanted`, `old` still running, `stopping` with
/// their grace period.
fn progress_of(current: &[&Pod], old: &[&Pod], stopping: &[&Pod], wanted: usize) -> Progress {
    let grace = stopping
        .iter()
        .find_map(|pod| pod.metadata.deletion_grace_period_seconds);
    Progress {
        ready: current.iter().filter(|pod| is_ready(pod)).count(),
        wanted,
        leftover: old.len(),
        stopping: (stopping.len(), grace),
        paused: None,
    }
}

/// The rollout's time, since the write at `written_at` (the API server's time, if known),
/// waited on since `started`.
fn rollout_time(written_at: &Option<Time>, started: tokio::time::Instant) -> Option<RolloutTime> {
    let since = written_at.clone()?;
    let waited = started.elapsed();
    Some(RolloutTime { since, waited })
}

/// Whether a Service still sends traffic to one of `owned` of the kind being replaced.
async fn still_serving(
    client: &kube::Client,
    workload: &Workload,
    owned: &[Pod],
    with_agent: bool,
) -> Result<bool, WorkloadError> {
    let replaced: Vec<String> = owned
        .iter()
        .filter(|pod| has_agent(pod) != with_agent)
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    still_served(client, &workload.namespace, &replaced).await
}

/// The pods with the workload's labels that the workload controls.
async fn owned_pods(
    pods: &Api<Pod>,
    selector: &str,
    owners: &mut PodOwners,
) -> Result<Vec<Pod>, RolloutError> {
    let listed = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|err| {
            let namespace = pods.namespace().unwrap_or_default();
            WorkloadError::from_api(err, "list", "pods", namespace)
        })?;
    let mut owned = Vec::new();
    for pod in listed.items {
        if owners.owns(&pod).await {
            owned.push(pod);
        }
    }
    Ok(owned)
}

async fn delete_pods(
    pods: &Api<Pod>,
    doomed: &[&Pod],
    namespace: &str,
) -> Result<(), RolloutError> {
    for pod in doomed {
        if let Some(name) = &pod.metadata.name {
            pods.delete(name, &DeleteParams::default())
                .await
                .map_err(|err| WorkloadError::from_api(err, "delete", "pods", namespace))?;
        }
    }
    Ok(())
}

/// Why a rollout has not finished, for its timeout: a new pod and why it is not ready,
/// else an old pod that has not stopped.
fn stuck_on(current: &[&Pod], old: &[&Pod]) -> String {
    current
        .iter()
        .find_map(|pod| Some((pod, why_not_ready(pod)?)))
        .map(|(pod, why)| format!("; pod {}: {why}", name_of(pod)))
        .or_else(|| {
            let pod = old.first()?;
            Some(format!("; old pod {} has not stopped", name_of(pod)))
        })
        .unwrap_or_default()
}

/// Fails with the first failure of the agent (see `agent_failure`) in the pods that
/// `selector` picks: an agent can exit right after its pod was counted ready.
pub async fn check_agents(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
) -> Result<(), RolloutError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|err| WorkloadError::from_api(err, "list", "pods", namespace))?;
    match listed.items.iter().find_map(agent_failure) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Whether a Service still sends traffic to one of `pods` (the endpoints controller has
/// not caught up). Without permission to read EndpointSlices there is nothing to wait on.
async fn still_served(
    client: &kube::Client,
    namespace: &str,
    pods: &[String],
) -> Result<bool, WorkloadError> {
    if pods.is_empty() {
        return Ok(false);
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let listed = match slices.list(&ListParams::default()).await {
        Ok(listed) => listed,
        Err(err) => {
            return match WorkloadError::from_api(err, "list", "endpointslices", namespace) {
                WorkloadError::Forbidden { .. } => Ok(false),
                other => Err(other),
            };
        }
    };
    Ok(listed
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true)
        })
        .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.as_ref())
        .any(|name| pods.contains(name)))
}

fn has_agent(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|spec| spec.containers.iter().any(|c| c.name == AGENT_CONTAINER))
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// The agent's own failures, which waiting will not cure: an image the node cannot pull,
/// or a process that keeps exiting.
pub(crate) fn agent_failure(pod: &Pod) -> Option<RolloutError> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let agent = statuses.iter().find(|s| s.name == AGENT_CONTAINER)?;
    let waiting = agent.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    let pod = name_of(pod).to_owned();
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            Some(RolloutError::AgentImage {
                pod,
                reason: reason.to_owned(),
                message: waiting
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default(),
            })
        }
        "CrashLoopBackOff" => {
            let last = agent.last_state.as_ref()?.terminated.as_ref();
            let detail = last
                .map(|exit| {
                    let said = exit
                        .message
                        .as_deref()
                        .map(|m| format!(": {}", m.trim()))
                        .unwrap_or_default();
                    format!(" (exit code {}{said})", exit.exit_code)
                })
                .unwrap_or_default();
            Some(RolloutError::AgentCrash { pod, detail })
        }
        _ => None,
    }
}

/// What keeps `pod` from being ready, as its status tells: not scheduled, a container
/// waiting or exited, or one running whose readiness probe fails.
pub(crate) fn why_not_ready(pod: &Pod) -> Option<String> {
    if is_ready(pod) {
        return None;
    }
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(condition) = unscheduled {
        let message = condition.message.as_deref().unwrap_or("no reason given");
        return Some(format!("not scheduled: {message}"));
    }
    let containers: Vec<_> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| !c.ready)
        .collect();
    // A container that is not running says more than one whose probe fails.
    for container in &containers {
        let name = &container.name;
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("waiting");
            let message = waiting
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Some(format!("container {name} {reason}{message}"));
        }
        if let Some(exit) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = exit.reason.as_deref().unwrap_or("exited");
            return Some(format!(
                "container {name} {reason} with exit code {}",
                exit.exit_code
            ));
        }
    }
    if let Some(container) = containers.first() {
        return Some(format!(
            "container {} runs but is not ready",
            container.name
        ));
    }
    Some(status.phase.as_deref().unwrap_or("not ready").to_owned())
}

#[cfg(test)]
mod tests;
