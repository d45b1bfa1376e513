//! The agents of one session: every running pod that matches the session's selector gets
//! a link, re-established with backoff whenever it drops, for as long as the pod runs.
//! Flows go to any live link, so traffic keeps moving while one pod restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kubedev::tunnel::{AgentLink, link_through_port_forward};
use tokio::sync::{Notify, RwLock, watch};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Where a session's agents run and how to authenticate to them.
#[derive(Debug, Clone)]
pub(crate) struct AgentSelector {
    pub(crate) namespace: String,
    /// A label selector (`app=web,kubedev/session=abc`).
    pub(crate) labels: String,
    pub(crate) token: String,
}

#[derive(Debug, Default)]
pub(crate) struct AgentPool {
    links: RwLock<HashMap<String, AgentLink>>,
    next: AtomicUsize,
    link_added: Notify,
}

impl AgentPool {
    /// Starts following the selected pods; the pool fills as links come up.
    pub(crate) fn follow(client: kube::Client, selector: AgentSelector) -> Arc<Self> {
        let pool = Arc::new(Self::default());
        // running_tx: the pod watcher -> each pod's supervisor (is my pod still running?).
        let (running_tx, running_rx) = watch::channel(Vec::<String>::new());
        tokio::spawn(watch_pods(client.clone(), selector.clone(), running_tx));
        tokio::spawn(supervise_new_pods(
            client,
            selector,
            pool.clone(),
            running_rx,
        ));
        pool
    }

    /// A live link, taking turns among the pods; waits up to `wait` for one to come up.
    pub(crate) async fn pick(&self, wait: Duration) -> Option<AgentLink> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.link_added.notified();
            {
                let links = self.links.read().await;
                let live: Vec<&AgentLink> = links.values().filter(|l| !l.is_closed()).collect();
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

    /// Pod names with a live link.
    pub(crate) async fn linked_pods(&self) -> Vec<String> {
        let links = self.links.read().await;
        let mut pods: Vec<String> = links
            .iter()
            .filter(|(_, link)| !link.is_closed())
            .map(|(pod, _)| pod.clone())
            .collect();
        pods.sort();
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
    let pods: Api<Pod> = Api::namespaced(client, &selector.namespace);
    let config = watcher::Config::default().labels(&selector.labels);
    let mut known: HashMap<String, bool> = HashMap::new();
    let events = watcher(pods, config).default_backoff();
    futures::pin_mut!(events);
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                known.insert(
                    pod.metadata.name.clone().unwrap_or_default(),
                    is_running(&pod),
                );
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

/// Starts one supervisor per pod that starts running.
async fn supervise_new_pods(
    client: kube::Client,
    selector: AgentSelector,
    pool: Arc<AgentPool>,
    mut running_rx: watch::Receiver<Vec<String>>,
) {
    let mut supervised: Vec<String> = Vec::new();
    loop {
        let running = running_rx.borrow_and_update().clone();
        supervised.retain(|pod| running.contains(pod));
        for pod in running {
            if !supervised.contains(&pod) {
                supervised.push(pod.clone());
                let supervisor = supervise_pod(
                    client.clone(),
                    selector.clone(),
                    pod,
                    pool.clone(),
                    running_rx.clone(),
                );
                tokio::spawn(supervisor);
            }
        }
        if running_rx.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps a link to `pod` while it runs: connects, waits for the link to drop, reconnects.
async fn supervise_pod(
    client: kube::Client,
    selector: AgentSelector,
    pod: String,
    pool: Arc<AgentPool>,
    running_rx: watch::Receiver<Vec<String>>,
) {
    let still_running = || running_rx.borrow().contains(&pod);
    let mut retry = FIRST_RETRY;
    while still_running() {
        match link_through_port_forward(client.clone(), &selector.namespace, &pod, &selector.token)
            .await
        {
            Ok((link, _inbound)) => {
                tracing::info!(
                    "linked to {} in pod {}/{pod}",
                    link.agent(),
                    selector.namespace
                );
                retry = FIRST_RETRY;
                pool.links.write().await.insert(pod.clone(), link.clone());
                pool.link_added.notify_waiters();
                link.closed().await;
                pool.links.write().await.remove(&pod);
                tracing::info!("link to pod {}/{pod} dropped", selector.namespace);
            }
            Err(err) => {
                tracing::debug!("no link to pod {}/{pod} yet: {err:#}", selector.namespace);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
