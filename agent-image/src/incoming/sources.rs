//! How many connections and UDP flows each client address has open to the ports the agent
//! took over, all ports and both transports counted together. Each may become a stream on
//! a workstation's link, and a link opens a capped number
//! ([`kubedev_protocol::mux::OPENED_STREAMS_CAP`]): one client (a load test, a retry
//! storm, a hostile pod sending from thousands of ports) must not take them all from the
//! others, nor, with UDP, fill a port's table of flows.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kubedev_protocol::refusals::Refusals;

/// Connections and UDP flows one client address may have open at once to all the ports
/// the agent took over: a third of the streams a link opens, so at least three clients at
/// their cap still fit on any one link, half a UDP port's flows
/// ([`kubedev_protocol::udp_flows::MAX_FLOWS`]), and far more than a browser (six) or a
/// service's connection pool (tens to a hundred) keeps. More connections are closed as
/// they are accepted; datagrams that would start more flows are dropped.
pub(super) const CONNECTIONS_PER_SOURCE: usize = 512;
const _: () = assert!(CONNECTIONS_PER_SOURCE * 3 <= kubedev_protocol::mux::OPENED_STREAMS_CAP);

/// UDP flows one client address may have open at once on one taken-over UDP port, within
/// its [`CONNECTIONS_PER_SOURCE`]: a sixteenth of the port's flows
/// ([`kubedev_protocol::udp_flows::MAX_FLOWS`]), so that a few busy clients (flows cost a
/// sender one datagram each) cannot fill the port for everyone else, and far more than a
/// client keeps with one service.
pub(super) const UDP_FLOWS_PER_SOURCE: usize = 64;
const _: () = assert!(UDP_FLOWS_PER_SOURCE * 16 <= kubedev_protocol::udp_flows::MAX_FLOWS);

/// The connections and flows open to the agent's ports, by client address.
#[derive(Debug)]
pub(super) struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
    refused: Refusals,
}

/// One admitted connection's or flow's place; given back when dropped.
#[derive(Debug)]
pub(super) struct Admitted {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    /// No more than `cap` connections and flows at once from one address.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            cap,
            refused: Refusals::new("a client's connection or UDP flow"),
        }
    }

    /// A place for one more connection or flow from `ip`, if it has fewer than the cap open.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.lock();
        let count = open.entry(ip).or_default();
        if *count >= self.cap {
            drop(open);
            let cap = self.cap;
            self.refused.refuse(&format_args!(
                "{ip} has {cap} connections and flows open to the app's ports"
            ));
            return None;
        }
        *count += 1;
        Some(Admitted {
            sources: self.clone(),
            ip,
        })
    }

    /// The connections and flows open from `ip`.
    #[cfg(test)]
    pub(super) fn open_from(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // An address with nothing open is forgotten: the table holds only live clients.
        if let Entry::Occupied(mut count) = self.sources.lock().entry(self.ip) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_cap_and_places_come_back() {
        let sources = Arc::new(Sources::new(CONNECTIONS_PER_SOURCE));
        let busy: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let mut admitted: Vec<Admitted> = (0..CONNECTIONS_PER_SOURCE)
            .map(|_| sources.admit(busy).expect("under the cap"))
            .collect();
        assert!(sources.admit(busy).is_none(), "beyond the cap");
        assert_eq!(sources.refused.total(), 1);
        let _other = sources.admit(other).expect("another address");

        admitted.pop();
        let again = sources.admit(busy).expect("a place came back");
        drop(admitted);
        assert_eq!(sources.open_from(busy), 1);
        drop(again);
        assert!(sources.lock().get(&busy).is_none(), "forgotten at none");
    }
}
