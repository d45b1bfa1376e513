//! The agents of every session: each running pod that matches a session's selector gets
//! [`demand::BASE_LINKS`] links, and more while its traffic's bandwidth-delay product needs
//! them ([`demand`]), each re-established with backoff whenever it drops, for as long as the
//! pod runs and the session lasts ([`supervise`]). Flows start on any base link, so traffic
//! keeps moving while a pod restarts; a flow that carries bulk spreads over every link to
//! its pod ([`striped`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kubedev::control::{AgentOwner, Forward, SessionKey};
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::OPENED_STREAMS_CAP;
use tokio::sync::{Notify, RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::local_network::LocalNetwork;

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

impl LinkKey {
    /// One of the links a pod always has, which new flows start on; the others only carry
    /// striped flows' streams, so that they can be let go once none is open.
    fn is_base(&self) -> bool {
        self.index < demand::BASE_LINKS
    }
}

/// What a pod's links carried so far, and the shortest round trip timed on any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Traffic {
    moved: u64,
    fastest_round_trip: Option<Duration>,
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
        let watching = supervise::watch_pods(client.clone(), selector.clone(), running_tx);
        tokio::spawn(stop.clone().run_until_cancelled_owned(watching));
        let supervisor = supervise::Supervisor {
            client,
            session,
            selector,
            pool: self.clone(),
            running_rx,
            stop: stop.clone(),
        };
        tokio::spawn(stop.run_until_cancelled_owned(supervisor.supervise_new_pods()));
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

    /// A live base link (of `session`'s pods only, if given), taking turns among those with
    /// room for another flow (among all, if none has); waits up to `wait` for one to come up.
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
                        session.is_none_or(|wanted| key.session == *wanted)
                            && key.is_base()
                            && !link.is_closed()
                    })
                    .map(|(_, link)| link)
                    .collect();
                // A link whose streams are all taken (by the flows the agent hands over,
                // say) would refuse the flow: another pod's or another base link has room.
                let with_room: Vec<&AgentLink> = (live.iter().copied())
                    .filter(|link| link.flows_open() < OPENED_STREAMS_CAP)
                    .collect();
                let choice = if with_room.is_empty() {
                    live
                } else {
                    with_room
                };
                if !choice.is_empty() {
                    let turn = self.next.fetch_add(1, Ordering::Relaxed) % choice.len();
                    return Some(choice[turn].clone());
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
                    && !other.is_retiring()
            })
            .map(|(_, other)| other.clone())
            .collect()
    }

    /// Completes when a link comes up after the call.
    pub(crate) fn link_added(&self) -> tokio::sync::futures::Notified<'_> {
        self.link_added.notified()
    }

    /// A link came up: flows may take it from now on.
    async fn add(&self, key: LinkKey, link: AgentLink) {
        self.links.write().await.insert(key, link);
        self.link_added.notify_waiters();
    }

    async fn remove(&self, key: &LinkKey) {
        self.links.write().await.remove(key);
    }

    /// What the live links to `pod` of `session` carried, and their fastest round trip.
    async fn traffic(&self, session: &SessionKey, pod: &str) -> Traffic {
        let links = self.links.read().await;
        let mut traffic = Traffic {
            moved: 0,
            fastest_round_trip: None,
        };
        for (key, link) in links.iter() {
            if key.session != *session || key.pod != pod || link.is_closed() {
                continue;
            }
            traffic.moved += link.meter().moved();
            let fastest = link.meter().fastest_round_trip();
            traffic.fastest_round_trip = match (traffic.fastest_round_trip, fastest) {
                (Some(known), Some(timed)) => Some(known.min(timed)),
                (known, timed) => known.or(timed),
            };
        }
        traffic
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

    /// One live base link to each pod of `session`.
    pub(crate) async fn link_per_pod(&self, session: &SessionKey) -> Vec<AgentLink> {
        let links = self.links.read().await;
        let mut chosen: HashMap<&str, AgentLink> = HashMap::new();
        for (key, link) in links.iter() {
            if key.session == *session && key.is_base() && !link.is_closed() {
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

mod demand;
mod owners;
pub(crate) mod striped;
mod supervise;
#[cfg(test)]
pub(crate) mod tests;
