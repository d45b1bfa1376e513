//! Following a session's pods and keeping their links: a watcher publishes which pods
//! run, and a supervisor per link connects, keeps the link alive and reconnects while its
//! pod runs. A pod's base links are kept for as long as it runs; the links its traffic
//! needs beyond them ([`super::demand`]) are kept while it does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kubedev::control::SessionKey;
use kubedev::tunnel::link_through_port_forward;
use kubedev_protocol::KEEPALIVE_INTERVAL;
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::demand::{self, BASE_LINKS, Demand, MOST_LINKS};
use super::owners::Owners;
use super::{AgentPool, AgentSelector, LinkKey};
use crate::incoming;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How often a link beyond the need checks whether a flow still uses it.
const UNUSED_CHECK: Duration = Duration::from_secs(1);

fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Publishes the names of the running pods the selector matches, on every change.
pub(super) async fn watch_pods(
    client: kube::Client,
    selector: AgentSelector,
    running_tx: watch::Sender<Vec<String>>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &selector.namespace);
    let config = watcher::Config::default().labels(&selector.labels);
    let mut known: HashMap<String, bool> = HashMap::new();
    let mut owners = Owners::new(client.clone(), &selector.namespace, selector.owner.clone());
    let events = watcher(pods, config).default_backoff();
    futures::pin_mut!(events);
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let running = is_running(&pod);
                if running
                    && !known.get(&name).copied().unwrap_or_default()
                    && !owners.own(&pod).await
                {
                    tracing::warn!(
                        "pod {}/{name} wears the session's labels but is not the workload's: \
                         not linked",
                        selector.namespace
                    );
                    known.remove(&name);
                    continue;
                }
                known.insert(name, running);
            }
            Ok(Some(watcher::Event::Delete(pod))) => {
                known.remove(pod.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(Some(watcher::Event::Init)) => known.clear(),
            Ok(Some(watcher::Event::InitDone)) => {}
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("watching agent pods in {}: {err}", selector.namespace);
                continue;
            }
        }
        let mut running: Vec<String> = known
            .iter()
            .filter(|(_, r)| **r)
            .map(|(n, _)| n.clone())
            .collect();
        running.sort();
        running_tx.send_if_modified(|current| {
            let changed = *current != running;
            *current = running;
            changed
        });
    }
}

/// What supervising a session's links takes; cloned into each task.
#[derive(Clone)]
pub(super) struct Supervisor {
    pub(super) client: kube::Client,
    pub(super) session: SessionKey,
    pub(super) selector: AgentSelector,
    pub(super) pool: Arc<AgentPool>,
    /// The pods that run, from the watcher.
    pub(super) running_rx: watch::Receiver<Vec<String>>,
    pub(super) stop: CancellationToken,
}

impl Supervisor {
    /// Starts the base links of each pod that starts running, and what adds more.
    pub(super) async fn supervise_new_pods(mut self) {
        let mut supervised: Vec<String> = Vec::new();
        loop {
            let running = self.running_rx.borrow_and_update().clone();
            supervised.retain(|pod| running.contains(pod));
            for pod in running {
                if supervised.contains(&pod) {
                    continue;
                }
                supervised.push(pod.clone());
                for index in 0..BASE_LINKS {
                    self.spawn(self.clone().supervise_link(self.key(&pod, index), None));
                }
                self.spawn(self.clone().adjust_links(pod));
            }
            if self.running_rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs `task` until the session's following stops.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            stop.run_until_cancelled(task).await;
        })
    }

    fn key(&self, pod: &str, index: usize) -> LinkKey {
        LinkKey {
            session: self.session.clone(),
            pod: pod.to_owned(),
            index,
        }
    }

    fn still_running(&self, pod: &str) -> bool {
        self.running_rx
            .borrow()
            .iter()
            .any(|running| running == pod)
    }

    /// Measures what `pod`'s links carry while it runs, and starts or lets go of the links
    /// beyond its base ones as [`demand`] decides.
    async fn adjust_links(self, pod: String) {
        // wanted_tx: this task -> the supervisors of links beyond the base ones.
        let (wanted_tx, wanted_rx) = watch::channel(BASE_LINKS);
        let mut extra: Vec<Option<JoinHandle<()>>> = (0..MOST_LINKS).map(|_| None).collect();
        let mut demand = Demand::default();
        let mut before: Option<u64> = None;
        let mut ticks = tokio::time::interval(demand::TICK);
        while self.still_running(&pod) {
            ticks.tick().await;
            let traffic = self.pool.traffic(&self.session, &pod).await;
            let moved = traffic
                .moved
                .saturating_sub(before.unwrap_or(traffic.moved));
            before = Some(traffic.moved);
            let Some(round_trip) = traffic.fastest_round_trip else {
                continue;
            };
            let rate = (moved as f64 / demand::TICK.as_secs_f64()) as u64;
            let wanted = demand.next(demand::links_needed(rate, round_trip), Instant::now());
            if wanted_tx.send_if_modified(|known| std::mem::replace(known, wanted) != wanted) {
                tracing::info!(
                    "pod {}/{pod}: {wanted} links for {:.0} MiB/s at a {round_trip:.0?} round trip",
                    self.selector.namespace,
                    rate as f64 / f64::from(1 << 20)
                );
            }
            for (index, task) in extra.iter_mut().enumerate().take(wanted).skip(BASE_LINKS) {
                if task.as_ref().is_none_or(JoinHandle::is_finished) {
                    let supervising = self
                        .clone()
                        .supervise_link(self.key(&pod, index), Some(wanted_rx.clone()));
                    *task = Some(self.spawn(supervising));
                }
            }
        }
    }

    /// Keeps one link to its pod while the pod runs (and, for a link beyond the base ones,
    /// while `wanted_rx` wants it): connects, waits for the link to drop, reconnects.
    async fn supervise_link(self, key: LinkKey, wanted_rx: Option<watch::Receiver<usize>>) {
        let pod = key.pod.clone();
        let wanted = || {
            wanted_rx
                .as_ref()
                .is_none_or(|wanted| *wanted.borrow() > key.index)
        };
        let mut retry = FIRST_RETRY;
        let selector = &self.selector;
        while self.still_running(&pod) && wanted() {
            let linking = link_through_port_forward(
                self.client.clone(),
                &selector.namespace,
                &pod,
                &selector.token,
            );
            match linking.await {
                Ok((link, incoming_rx)) => {
                    retry = FIRST_RETRY;
                    self.serve_link(&key, link, incoming_rx, wanted_rx.clone())
                        .await;
                }
                Err(err) if err.not_the_agent() => {
                    tracing::warn!(
                        "pod {}/{pod} wears the session's labels but is not its agent (it does \
                         not know the session's secret): not linked, and sent nothing",
                        selector.namespace
                    );
                    tokio::time::sleep(MAX_RETRY).await;
                }
                Err(err) => {
                    let err = anyhow::Error::from(err);
                    tracing::debug!("no link to pod {}/{pod} yet: {err:#}", selector.namespace);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Adds `link` to the pool until it drops (or, beyond the base links, is no longer
    /// wanted nor used). A base link claims the session's ports: the agent gives each
    /// connection to the newest claimant, so another base link takes over while one
    /// reconnects.
    async fn serve_link(
        &self,
        key: &LinkKey,
        link: AgentLink,
        incoming_rx: mpsc::Receiver<MuxStream>,
        wanted_rx: Option<watch::Receiver<usize>>,
    ) {
        let (selector, pod) = (&self.selector, &key.pod);
        if key.is_base() {
            claim_ports(&link, selector, pod).await;
        }
        // A first round trip for the pod's measure of distance.
        if let Err(err) = link.ping(KEEPALIVE_INTERVAL).await {
            tracing::debug!("agent in pod {pod} did not answer a first ping: {err}");
        }
        tracing::info!(
            "linked to {} in pod {}/{pod}",
            link.agent(),
            selector.namespace
        );
        self.pool.add(key.clone(), link.clone()).await;
        // Only base links claim ports: the agent opens streams on no other.
        let delivering = key.is_base().then(|| {
            let (forwards, local) = (selector.forwards.clone(), selector.local.clone());
            let delivery =
                incoming::Delivery::new(forwards, local, self.pool.clone(), link.clone());
            tokio::spawn(incoming::deliver_all(incoming_rx, delivery))
        });
        match wanted_rx {
            None => keep_alive(&link).await,
            Some(wanted_rx) => {
                tokio::select! {
                    () = keep_alive(&link) => {}
                    () = unused(&link, key.index, wanted_rx) => link.close(),
                }
            }
        }
        if let Some(delivering) = delivering {
            delivering.abort();
        }
        self.pool.remove(key).await;
        tracing::info!("link to pod {}/{pod} dropped", selector.namespace);
    }
}

/// The agent sends this session only the connections it claimed.
async fn claim_ports(link: &AgentLink, selector: &AgentSelector, pod: &str) {
    for forward in selector.forwards.iter() {
        let wiretap = forward.wiretap.then(|| selector.wiretap.clone());
        let filter = forward.filter.clone();
        if let Err(err) = link.claim(forward.app_port, filter, wiretap).await {
            tracing::warn!(
                "agent in pod {pod} did not take port {}: {err}",
                forward.app_port
            );
        }
    }
}

/// Completes once link `index` is no longer wanted and no flow has a stream open on it (or
/// once the pod's links are no longer adjusted): retired while it is not wanted, so that
/// the striped flows on it leave it, and back in service if wanted again before they all
/// have (a flow whose peer is slow to leave must not keep the link out of use).
async fn unused(link: &AgentLink, index: usize, mut wanted_rx: watch::Receiver<usize>) {
    loop {
        let wanted = *wanted_rx.borrow_and_update() > index;
        if wanted {
            link.unretire();
        } else {
            link.retire();
            if link.flows_open() == 0 {
                return;
            }
        }
        tokio::select! {
            changed = wanted_rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(UNUSED_CHECK), if !wanted => {}
        }
    }
}

/// Returns when the link has ended: closed by either side, or silent to a ping (then
/// closed here, so that the supervisor reconnects).
async fn keep_alive(link: &AgentLink) {
    loop {
        tokio::select! {
            () = link.closed() => return,
            () = tokio::time::sleep(KEEPALIVE_INTERVAL) => {}
        }
        if let Err(err) = link.ping(KEEPALIVE_INTERVAL).await {
            tracing::warn!("agent {} did not answer a keepalive: {err}", link.agent());
            link.close();
            return;
        }
    }
}

#[cfg(test)]
mod tests;
