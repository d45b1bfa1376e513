//! How many connections each client address has open on one port the agent took over.
//! Each may become a stream on a workstation's link, and a link opens a capped number
//! ([`kubedev_protocol::mux::OPENED_STREAMS_CAP`]): one client (a load test, a retry
//! storm, a hostile pod) must not take them all from the others.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kubedev_protocol::refusals::Refusals;

/// Connections one client address may have open at once on one taken-over port: a third
/// of the streams a link opens, so at least three clients at their cap still fit, and far
/// more than a browser (six) or a service's connection pool (tens to a hundred) keeps.
/// More are closed as they are accepted.
pub(super) const CONNECTIONS_PER_SOURCE: usize = 512;

/// The connections open on one port, by client address.
#[derive(Debug)]
pub(super) struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
    app_port: u16,
    refused: Refusals,
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub(super) struct Admitted {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    /// No more than `cap` connections at once from one address, to the app's `app_port`.
    pub(super) fn new(cap: usize, app_port: u16) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            cap,
            app_port,
            refused: Refusals::new("a client's connection"),
        }
    }

    /// A place for one more connection from `ip`, if it has fewer than the cap open.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.lock();
        let count = open.entry(ip).or_default();
        if *count >= self.cap {
            drop(open);
            let (cap, port) = (self.cap, self.app_port);
            self.refused.refuse(&format_args!(
                "{ip} has {cap} connections open to the app's port {port}"
            ));
            return None;
        }
        *count += 1;
        Some(Admitted {
            sources: self.clone(),
            ip,
        })
    }

    /// The connections open from `ip`.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
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
        let sources = Arc::new(Sources::new(CONNECTIONS_PER_SOURCE, 8080));
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
