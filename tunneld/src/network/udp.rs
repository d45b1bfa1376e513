//! UDP on the TUN device: the userspace stack hands over every datagram with its addresses;
//! datagrams between the same two addresses form a flow, and each flow gets its own stream
//! through an agent. A flow ends after [`IDLE_TIMEOUT`] without a datagram either way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev::protocol::codec::{read_datagram, write_datagram};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::agents::AgentPool;

/// How long a flow may stay silent before its stream through the agent is closed.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams waiting for one flow's stream; beyond that they are dropped, as a full
/// socket buffer would.
const FLOW_BACKLOG: usize = 256;
const LINK_WAIT: Duration = Duration::from_secs(10);

/// A datagram on the TUN side: payload, source, destination.
pub(super) type Datagram = (Vec<u8>, SocketAddr, SocketAddr);

/// The workstation's address and the cluster address it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
}

/// The live flows, each fed through a channel by the one task that reads the stack.
#[derive(Debug, Default)]
pub(super) struct UdpFlows {
    flows: HashMap<FlowKey, mpsc::Sender<Vec<u8>>>,
}

impl UdpFlows {
    /// Hands `payload` to its flow. Gives it back when the flow has to be started first
    /// (none yet, or the last one ended); drops it when the flow is too far behind.
    pub(super) fn deliver(&mut self, key: FlowKey, payload: Vec<u8>) -> Option<Vec<u8>> {
        let Some(flow) = self.flows.get(&key) else {
            return Some(payload);
        };
        match flow.try_send(payload) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                tracing::debug!(
                    "udp {} -> {}: backlog full, datagram dropped",
                    key.local,
                    key.remote
                );
                None
            }
            Err(TrySendError::Closed(payload)) => {
                self.flows.remove(&key);
                Some(payload)
            }
        }
    }

    /// Starts a flow for `key` with `first` as its first datagram; returns what the flow's
    /// task reads.
    pub(super) fn start(&mut self, key: FlowKey, first: Vec<u8>) -> mpsc::Receiver<Vec<u8>> {
        let (datagrams_tx, datagrams_rx) = mpsc::channel(FLOW_BACKLOG);
        // A fresh channel has room for one.
        let _ = datagrams_tx.try_send(first);
        self.flows.insert(key, datagrams_tx);
        datagrams_rx
    }

    /// Forgets flows whose task has ended.
    pub(super) fn prune(&mut self) {
        self.flows.retain(|_, flow| !flow.is_closed());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.flows.len()
    }
}

/// Carries one flow through an agent: `datagrams_rx` brings what the workstation sends;
/// `replies_tx` takes what comes back, addressed to the workstation.
pub(super) async fn relay_flow(
    pool: Arc<AgentPool>,
    key: FlowKey,
    mut datagrams_rx: mpsc::Receiver<Vec<u8>>,
    replies_tx: mpsc::Sender<Datagram>,
) {
    let FlowKey { local, remote } = key;
    let Some(link) = pool.pick(LINK_WAIT).await else {
        return tracing::warn!("no agent to carry datagrams to {remote}");
    };
    let stream = match link.open_udp(&remote.ip().to_string(), remote.port()).await {
        Ok(stream) => stream,
        Err(err) => return tracing::debug!("udp {local} -> {remote}: {err}"),
    };
    tracing::debug!("udp {local} -> {remote}: open in the pod");
    let (mut stream_rx, mut stream_tx) = tokio::io::split(stream);
    let mut reply = Box::new([0u8; 65535]);
    loop {
        tokio::select! {
            datagram = datagrams_rx.recv() => {
                let Some(datagram) = datagram else { return };
                if let Err(err) = write_datagram(&mut stream_tx, &datagram).await {
                    return tracing::debug!("udp {local} -> {remote}: {err}");
                }
            }
            len = read_datagram(&mut stream_rx, &mut reply) => match len {
                Ok(Some(len)) => {
                    if replies_tx.send((reply[..len].to_vec(), remote, local)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(err) => return tracing::debug!("udp {local} -> {remote}: {err}"),
            },
            () = tokio::time::sleep(IDLE_TIMEOUT) => {
                return tracing::debug!("udp {local} -> {remote}: idle, closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(local_port: u16) -> FlowKey {
        FlowKey {
            local: SocketAddr::from(([198, 18, 0, 1], local_port)),
            remote: SocketAddr::from(([10, 96, 0, 20], 9000)),
        }
    }

    #[test]
    fn first_datagram_asks_for_a_flow_then_later_ones_follow_it() {
        let mut flows = UdpFlows::default();
        let returned = flows.deliver(key(1), b"one".to_vec());
        assert_eq!(returned.as_deref(), Some(&b"one"[..]));

        let mut datagrams_rx = flows.start(key(1), b"one".to_vec());
        assert_eq!(flows.deliver(key(1), b"two".to_vec()), None);
        assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"one"[..]));
        assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn flows_are_told_apart_by_both_addresses() {
        let mut flows = UdpFlows::default();
        let _first_rx = flows.start(key(1), Vec::new());
        assert!(flows.deliver(key(2), b"x".to_vec()).is_some());
    }

    #[test]
    fn an_ended_flow_is_replaced_and_pruned() {
        let mut flows = UdpFlows::default();
        let ended_rx = flows.start(key(1), Vec::new());
        let _live_rx = flows.start(key(2), Vec::new());
        drop(ended_rx);
        flows.prune();
        assert_eq!(flows.len(), 1);

        let ended_rx = flows.start(key(1), Vec::new());
        drop(ended_rx);
        assert_eq!(
            flows.deliver(key(1), b"again".to_vec()).as_deref(),
            Some(&b"again"[..])
        );
    }

    #[test]
    fn a_flow_that_falls_behind_loses_datagrams_not_others() {
        let mut flows = UdpFlows::default();
        let mut slow_rx = flows.start(key(1), Vec::new());
        for _ in 0..FLOW_BACKLOG * 2 {
            assert_eq!(flows.deliver(key(1), vec![0]), None);
        }
        let mut received = 0;
        while slow_rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, FLOW_BACKLOG);
    }
}
