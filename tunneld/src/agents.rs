//! The agents of every session: each running pod that matches a session's selector gets
//! [`LINKS_PER_POD`] links, each re-established with backoff whenever it drops, for as long
//! as the pod runs and the session lasts. Flows go to any live link, so traffic keeps moving
//! while a pod restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kubedev::control::{AgentOwner, Forward, SessionKey};
use kubedev::tunnel::link_through_port_forward;
use kubedev_protocol::KEEPALIVE_INTERVAL;
use kubedev_protocol::link::AgentLink;
use tokio::sync::{Notify, RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::incoming;
use crate::local_network::LocalNetwork;
use owners::Owners;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Port-forward connections kept to each agent. Each is one TCP connection through the API
/// server, whose send buffer (4 MiB by default on Linux) caps it at about 2 MiB in flight:
/// 40 MiB/s at 50 ms. Flows spread over several lift the aggregate over distance, and a
/// pod's traffic keeps a link while one of them reconnects.
const LINKS_PER_POD: usize = 3;

/// Where a session's agents run and how to authenticate to them.
#[derive(Debug, Clone)]
pub(crate) struct AgentSelector {
    pub(crate) namespace: String,
    /// A label selector (`app=web,kubedev.io/session=abc`).
    pub(crate) labels: String,
    pub(crate) token: String,
    /// What controls the agent pods: no other pod wearing their labels is linked.
    pub(crate) owner: Option<AgentOwner>,
    /// Where the connections the agents take over go on this machine.
    pub(crate) forwards: Arc<[Forward]>,
    /// The id the session's wiretap claims carry, the same on every link.
    pub(crate) wiretap: String,
    /// Where the connections the agents take over are delivered.
    pub(crate) local: Arc<LocalNetwork>,
}

/// A link's key: the session it serves, its pod, and which of the pod's links it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LinkKey {
    session: SessionKey,
    pod: String,
    index: usize,
}

#[derive(Debug, Default)]
pub(crate) struct AgentPool {
    links: RwLock<HashMap<LinkKey, AgentLink>>,
    next: AtomicUsize,
    link_added: Notify,
}

impl AgentPool {
    /// Starts following the pods of `session`; the pool fills as links come up. Cancelling
    /// `stop` ends the following; [`AgentPool::forget`] then drops the session's links.
    pub(crate) fn follow(
        self: &Arc<Self>,
        client: kube::Client,
        session: SessionKey,
        selector: AgentSelector,
        stop: CancellationToken,
    ) {
        // running_tx: the pod watcher -> each pod's supervisor (is my pod still running?).
        let (running_tx, running_rx) = watch::channel(Vec::<String>::new());
        let watching = watch_pods(client.clone(), selector.clone(), running_tx);
        tokio::spawn(stop.clone().run_until_cancelled_owned(watching));
        let supervising = supervise_new_pods(
            client,
            session,
            selector,
            self.clone(),
            running_rx,
            stop.clone(),
        );
        tokio::spawn(stop.run_until_cancelled_owned(supervising));
    }

    /// Closes and drops every link of `session`.
    pub(crate) async fn forget(&self, session: &SessionKey) {
        let mut links = self.links.write().await;
        links.retain(|key, link| {
            let keep = key.session != *session;
            if !keep {
                link.close();
            }
            keep
        });
    }

    /// A live link (of `session`'s pods only, if given), taking turns among them; waits up
    /// to `wait` for one to come up.
    pub(crate) async fn pick(
        &self,
        session: Option<&SessionKey>,
        wait: Duration,
    ) -> Option<AgentLink> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.link_added.notified();
            {
                let links = self.links.read().await;
                let live: Vec<&AgentLink> = links
                    .iter()
                    .filter(|(key, link)| {
                        session.is_none_or(|wanted| key.session == *wanted) && !link.is_closed()
                    })
                    .map(|(_, link)| link)
                    .collect();
                if !live.is_empty() {
                    let turn = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
                    return Some(live[turn].clone());
                }
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }

    /// The other live links to the agent `link` goes to.
    pub(crate) async fn links_beside(&self, link: &AgentLink) -> Vec<AgentLink> {
        let links = self.links.read().await;
        let Some(key) = (links.iter())
            .find(|(_, other)| other.same_session(link))
            .map(|(key, _)| key)
        else {
            return Vec::new();
        };
        (links.iter())
            .filter(|(other_key, other)| {
                other_key.session == key.session
                    && other_key.pod == key.pod
                    && !other.same_session(link)
                    && !other.is_closed()
            })
            .map(|(_, other)| other.clone())
            .collect()
    }

    /// A link came up: flows may take it from now on.
    async fn add(&self, key: LinkKey, link: AgentLink) {
        self.links.write().await.insert(key, link);
        self.link_added.notify_waiters();
    }

    /// Adds `link` as link `index` to `pod` of `session`, as if it had come up.
    #[cfg(test)]
    pub(crate) async fn add_link(
        &self,
        (session, pod, index): (&SessionKey, &str, usize),
        link: AgentLink,
    ) {
        let key = LinkKey {
            session: session.clone(),
            pod: pod.into(),
            index,
        };
        self.add(key, link).await;
    }

    /// One live link to each pod of `session`.
    pub(crate) async fn link_per_pod(&self, session: &SessionKey) -> Vec<AgentLink> {
        let links = self.links.read().await;
        let mut chosen: HashMap<&str, AgentLink> = HashMap::new();
        for (key, link) in links.iter() {
            if key.session == *session && !link.is_closed() {
                chosen.entry(&key.pod).or_insert_with(|| link.clone());
            }
        }
        chosen.into_values().collect()
    }

    /// A live link of any session, with its pod's name.
    pub(crate) async fn any_link(&self) -> Option<(String, AgentLink)> {
        let links = self.links.read().await;
        (links.iter())
            .find(|(_, link)| !link.is_closed())
            .map(|(key, link)| (key.pod.clone(), link.clone()))
    }

    /// The pods of `session` with a live link.
    pub(crate) async fn linked_pods(&self, session: &SessionKey) -> Vec<String> {
        let links = self.links.read().await;
        let mut pods: Vec<String> = links
            .iter()
            .filter(|(key, link)| key.session == *session && !link.is_closed())
            .map(|(key, _)| key.pod.clone())
            .collect();
        pods.sort();
        pods.dedup();
        pods
    }
}

fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Publishes the names of the running pods the selector matches, on every change.
async fn watch_pods(
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

/// Starts [`LINKS_PER_POD`] supervisors per pod that starts running.
async fn supervise_new_pods(
    client: kube::Client,
    session: SessionKey,
    selector: AgentSelector,
    pool: Arc<AgentPool>,
    mut running_rx: watch::Receiver<Vec<String>>,
    stop: CancellationToken,
) {
    let mut supervised: Vec<String> = Vec::new();
    loop {
        let running = running_rx.borrow_and_update().clone();
        supervised.retain(|pod| running.contains(pod));
        for pod in running {
            if !supervised.contains(&pod) {
                supervised.push(pod.clone());
                for index in 0..LINKS_PER_POD {
                    let key = LinkKey {
                        session: session.clone(),
                        pod: pod.clone(),
                        index,
                    };
                    let supervisor = supervise_link(
                        client.clone(),
                        key,
                        selector.clone(),
                        pool.clone(),
                        running_rx.clone(),
                    );
                    tokio::spawn(stop.clone().run_until_cancelled_owned(supervisor));
                }
            }
        }
        if running_rx.changed().await.is_err() {
            return;
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

/// Keeps one link to its pod while the pod runs: connects, waits for the link to drop,
/// reconnects. Every link claims the session's ports; the agent gives each connection to
/// the newest claimant, so another link of the session takes over while one reconnects.
async fn supervise_link(
    client: kube::Client,
    key: LinkKey,
    selector: AgentSelector,
    pool: Arc<AgentPool>,
    running_rx: watch::Receiver<Vec<String>>,
) {
    let pod = key.pod.clone();
    let still_running = || running_rx.borrow().contains(&pod);
    let mut retry = FIRST_RETRY;
    while still_running() {
        match link_through_port_forward(client.clone(), &selector.namespace, &pod, &selector.token)
            .await
        {
            Ok((link, incoming_rx)) => {
                // The agent sends this session only the connections it claimed.
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
                tracing::info!(
                    "linked to {} in pod {}/{pod}",
                    link.agent(),
                    selector.namespace
                );
                retry = FIRST_RETRY;
                pool.add(key.clone(), link.clone()).await;
                let delivering = tokio::spawn(incoming::deliver_all(
                    incoming_rx,
                    selector.forwards.clone(),
                    selector.local.clone(),
                ));
                keep_alive(&link).await;
                delivering.abort();
                pool.links.write().await.remove(&key);
                tracing::info!("link to pod {}/{pod} dropped", selector.namespace);
            }
            Err(err) if err.not_the_agent() => {
                tracing::warn!(
                    "pod {}/{pod} wears the session's labels but is not its agent (it does not \
                     know the session's secret): not linked, and sent nothing",
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

mod owners;
#[cfg(test)]
mod tests;
