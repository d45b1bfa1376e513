//! The workstations connected to this agent, newest first, the app ports each one
//! claimed (intercepted connections go to the workstations that claimed their port, and
//! wiretaps get copies of them), and the striped flows under way on their links.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kubedev_protocol::mux::MuxHandle;
use kubedev_protocol::{HttpFilter, WiretapCounts};

use crate::stripes::Stripes;

/// Identifies one workstation's connection while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkstationId(u64);

#[derive(Debug, Default)]
pub(crate) struct Workstations {
    next_id: AtomicU64,
    connected: Mutex<Vec<Workstation>>,
    /// Each wiretap's counts, by its id; kept while the agent runs, across reconnects.
    tallies: Mutex<HashMap<String, Arc<Tally>>>,
    /// The striped flows of every workstation's links, either way.
    stripes: Stripes,
}

#[derive(Debug, Clone)]
struct Workstation {
    id: WorkstationId,
    /// Where streams toward this workstation are opened.
    handle: MuxHandle,
    claims: Vec<Claim>,
}

/// An app port a workstation takes, wholly or (with a filter) only some HTTP requests; or,
/// for a wiretap (its id), gets copies of.
#[derive(Debug, Clone)]
struct Claim {
    app_port: u16,
    filter: Option<HttpFilter>,
    wiretap: Option<String>,
}

/// A wiretap on a port: the links of its session, newest first, any of which may take a
/// copy, the requests it copies, and its counts.
#[derive(Debug, Clone)]
pub(crate) struct Wiretapper {
    pub(crate) links: Vec<Claimant>,
    pub(crate) filter: Option<HttpFilter>,
    pub(crate) tally: Arc<Tally>,
}

/// What became of one wiretap's copies.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    copied: AtomicU64,
    dropped: AtomicU64,
}

impl Tally {
    pub(crate) fn count(&self, delivered: bool) {
        let counter = if delivered {
            &self.copied
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> WiretapCounts {
        WiretapCounts {
            copied: self.copied.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A workstation that claimed a port, and which of its HTTP requests it takes.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) handle: MuxHandle,
    pub(crate) filter: Option<HttpFilter>,
}

impl Workstations {
    /// The striped flows of every workstation's links, either way.
    pub(crate) fn stripes(&self) -> &Stripes {
        &self.stripes
    }

    /// A workstation connected; it claims nothing yet.
    pub(crate) fn add(&self, handle: MuxHandle) -> WorkstationId {
        let id = WorkstationId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let workstation = Workstation {
            id,
            handle,
            claims: Vec::new(),
        };
        self.lock().insert(0, workstation);
        id
    }

    /// The workstation's connection ended: its claims go with it.
    pub(crate) fn remove(&self, id: WorkstationId) {
        self.lock().retain(|workstation| workstation.id != id);
    }

    /// Workstation `id` takes `app_port` (only the HTTP requests `filter` matches, if
    /// given; copies of them, for wiretap `wiretap`), in place of what it claimed on that
    /// port before.
    pub(crate) fn claim(
        &self,
        id: WorkstationId,
        app_port: u16,
        filter: Option<HttpFilter>,
        wiretap: Option<String>,
    ) {
        if let Some(workstation) = self.lock().iter_mut().find(|w| w.id == id) {
            workstation
                .claims
                .retain(|claim| claim.app_port != app_port);
            workstation.claims.push(Claim {
                app_port,
                filter,
                wiretap,
            });
        }
    }

    /// The workstations that take `app_port` (not wiretaps), newest first.
    pub(crate) fn claimants(&self, app_port: u16) -> Vec<Claimant> {
        self.claims(app_port).0
    }

    /// Who claimed `app_port`, newest first: the workstations that take it, and the
    /// wiretaps on it, each with its links.
    pub(crate) fn claims(&self, app_port: u16) -> (Vec<Claimant>, Vec<Wiretapper>) {
        let mut takers = Vec::new();
        let mut wiretappers: Vec<(String, Wiretapper)> = Vec::new();
        for (claimant, wiretap) in self.claims_on(app_port) {
            let Some(id) = wiretap else {
                takers.push(claimant);
                continue;
            };
            match wiretappers.iter_mut().find(|(known, _)| *known == id) {
                Some((_, wiretapper)) => wiretapper.links.push(claimant),
                None => {
                    let tally = self.tally(&id);
                    let filter = claimant.filter.clone();
                    let links = vec![claimant];
                    wiretappers.push((
                        id,
                        Wiretapper {
                            links,
                            filter,
                            tally,
                        },
                    ));
                }
            }
        }
        (takers, wiretappers.into_iter().map(|(_, w)| w).collect())
    }

    /// What became of wiretap `id`'s copies so far.
    pub(crate) fn counts(&self, id: &str) -> WiretapCounts {
        self.tally(id).counts()
    }

    fn tally(&self, id: &str) -> Arc<Tally> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        tallies.entry(id.to_owned()).or_default().clone()
    }

    /// Every claim on `app_port` with the claimant, newest workstation first.
    fn claims_on(&self, app_port: u16) -> Vec<(Claimant, Option<String>)> {
        self.lock()
            .iter()
            .flat_map(|workstation| {
                workstation
                    .claims
                    .iter()
                    .filter(|claim| claim.app_port == app_port)
                    .map(|claim| {
                        let claimant = Claimant {
                            handle: workstation.handle.clone(),
                            filter: claim.filter.clone(),
                        };
                        (claimant, claim.wiretap.clone())
                    })
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Workstation>> {
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
