//! UDP has no connections: datagrams between the same two addresses form a flow, and each
//! flow gets its own stream (through an agent, or to the workstation), with the datagrams
//! framed by [`crate::codec::write_datagram`]. [`UdpFlows`] is the table the one task that reads a socket
//! (or the TUN device) uses to hand every datagram to its flow's task; [`relay_channel`]
//! and [`relay_socket`] carry a flow over its stream.
//!
//! Every source is a new flow, and a source costs a sender nothing (one datagram from each
//! of thousands of ports), so a table keeps at most [`MAX_FLOWS`]: datagrams from new
//! sources beyond it are dropped, as a full socket buffer would drop them, while the flows
//! already there go on; flows end after [`IDLE_TIMEOUT`] of silence and make room. What
//! waits for a flow's stream is bounded in bytes too, per flow ([`FLOW_QUEUED_BYTES`]) and
//! per table ([`TABLE_QUEUED_BYTES`]), so that large datagrams cannot take the memory.

mod queued;
mod relay;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::mux::OPENED_STREAMS_CAP;
use super::refusals::Refusals;
pub use queued::Queued;
use queued::{Full, QueuedBytes};
pub use relay::{Peers, connected_socket, relay_channel, relay_socket, serve_peers};

/// How long a flow may stay silent, either way, before its stream is closed (each end
/// closes after the same time).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Datagrams waiting for one flow's stream; beyond that they are dropped, as a full
/// socket buffer would.
pub const FLOW_BACKLOG: usize = 256;

/// Bytes waiting for one flow's stream, beyond which its datagrams are dropped: four of
/// the largest, or a socket's default receive buffer (Linux: 208 KiB).
pub const FLOW_QUEUED_BYTES: usize = 256 * 1024;

/// Bytes waiting for the streams of all the flows of one table, beyond which datagrams
/// are dropped: 64 flows at their [`FLOW_QUEUED_BYTES`], a small share of the agent's
/// memory limit (512 MiB) even with several UDP ports taken over.
pub const TABLE_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Flows one table (one UDP port taken over, one `--to-pod` port, the TUN device) keeps
/// at once. Each is a stream on a link and a task: this stays under a link's cap on the
/// streams it opens ([`OPENED_STREAMS_CAP`]) with room for TCP, and is far more peers than
/// a dev session's UDP service (DNS, metrics, a game's players) hears from in a minute.
pub const MAX_FLOWS: usize = 1024;
const _: () = assert!(MAX_FLOWS < OPENED_STREAMS_CAP);

/// The least time between two prunes a full table makes on its own: a flood of new
/// sources at a full table then costs one sweep a second, not one a datagram.
const PRUNE_WHEN_FULL: Duration = Duration::from_secs(1);

/// The live flows by `K` (what tells flows apart: an address pair, or a peer's address).
#[derive(Debug)]
pub struct UdpFlows<K> {
    flows: HashMap<K, Flow>,
    cap: usize,
    queued: QueuedBytes,
    counts: FlowCounts,
    refused: Refusals,
    last_pruned: Option<Instant>,
}

/// One flow's queue.
#[derive(Debug)]
struct Flow {
    datagrams_tx: mpsc::Sender<Queued>,
    queued: QueuedBytes,
}

/// How many flows a [`UdpFlows`] keeps, and the datagrams it dropped for want of room;
/// shared, for whoever watches the table from outside.
#[derive(Debug, Clone, Default)]
pub struct FlowCounts(Arc<Counted>);

#[derive(Debug, Default)]
struct Counted {
    flows: AtomicUsize,
    dropped: AtomicUsize,
}

impl FlowCounts {
    /// The flows kept now.
    pub fn flows(&self) -> usize {
        self.0.flows.load(Ordering::Relaxed)
    }

    /// The datagrams from new sources dropped because the table was full.
    pub fn dropped(&self) -> usize {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl<K> Default for UdpFlows<K> {
    fn default() -> Self {
        Self::with_cap(MAX_FLOWS)
    }
}

impl<K> UdpFlows<K> {
    /// A table that keeps at most `cap` flows.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            flows: HashMap::new(),
            cap,
            queued: QueuedBytes::with_cap(TABLE_QUEUED_BYTES),
            counts: FlowCounts::default(),
            refused: Refusals::new("a UDP flow"),
            last_pruned: None,
        }
    }

    /// The table's counts, kept up to date as it changes.
    pub fn counts(&self) -> FlowCounts {
        self.counts.clone()
    }

    /// Forgets flows whose task has ended.
    pub fn prune(&mut self) {
        self.flows.retain(|_, flow| !flow.datagrams_tx.is_closed());
        self.last_pruned = Some(Instant::now());
        self.counted();
    }

    /// How many flows are kept.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// The bytes waiting for the streams of all the flows.
    pub fn queued_bytes(&self) -> usize {
        self.queued.queued()
    }

    /// Whether no flow is kept.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn counted(&self) {
        self.counts
            .0
            .flows
            .store(self.flows.len(), Ordering::Relaxed);
    }
}

impl<K: Hash + Eq + Debug> UdpFlows<K> {
    /// Hands `payload` to its flow. Gives it back when the flow has to be started first
    /// (none yet, or the last one ended); drops it when the flow is too far behind or the
    /// table holds all the bytes it may.
    pub fn deliver(&mut self, key: &K, payload: Vec<u8>) -> Option<Vec<u8>> {
        let Some(flow) = self.flows.get(key) else {
            return Some(payload);
        };
        let queued = match Queued::within(payload, &flow.queued, &self.queued) {
            Ok(queued) => queued,
            Err((_, full)) => {
                self.behind(key, &full);
                return None;
            }
        };
        match flow.datagrams_tx.try_send(queued) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                self.behind(key, &Full::Flow);
                None
            }
            Err(TrySendError::Closed(queued)) => {
                self.flows.remove(key);
                self.counted();
                Some(queued.into_payload())
            }
        }
    }

    /// Tells of a datagram for `key` dropped because `full`.
    fn behind(&self, key: &K, full: &Full) {
        match full {
            Full::Flow => tracing::debug!("udp flow {key:?}: backlog full, datagram dropped"),
            Full::Table => self.refused.refuse(&format_args!(
                "{TABLE_QUEUED_BYTES} bytes are queued for the flows, a datagram for {key:?} \
                 is dropped"
            )),
        }
    }

    /// Starts a flow for `key` with `first` as its first datagram; returns what the flow's
    /// task reads. None, and `first` is dropped, when the table is full.
    pub fn start(&mut self, key: K, first: Vec<u8>) -> Option<mpsc::Receiver<Queued>> {
        if self.flows.len() >= self.cap && !self.flows.contains_key(&key) {
            let pruned_lately = self
                .last_pruned
                .is_some_and(|at| at.elapsed() < PRUNE_WHEN_FULL);
            if !pruned_lately {
                self.prune();
            }
            if self.flows.len() >= self.cap {
                self.counts.0.dropped.fetch_add(1, Ordering::Relaxed);
                let cap = self.cap;
                self.refused.refuse(&format_args!(
                    "{cap} flows are open, a datagram from {key:?} is dropped"
                ));
                return None;
            }
        }
        let (datagrams_tx, datagrams_rx) = mpsc::channel(FLOW_BACKLOG);
        let queued = QueuedBytes::with_cap(FLOW_QUEUED_BYTES);
        match Queued::within(first, &queued, &self.queued) {
            // A fresh channel has room for one.
            Ok(first) => drop(datagrams_tx.try_send(first)),
            Err((_, full)) => self.behind(&key, &full),
        }
        self.flows.insert(
            key,
            Flow {
                datagrams_tx,
                queued,
            },
        );
        self.counted();
        Some(datagrams_rx)
    }
}

#[cfg(test)]
mod tests;
