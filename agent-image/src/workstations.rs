//! The workstations connected to this agent, newest first, and the app ports each one
//! claimed: intercepted connections go to the workstations that claimed their port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use kubedev_protocol::HttpFilter;
use kubedev_protocol::mux::MuxHandle;

/// Identifies one workstation's connection while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkstationId(u64);

#[derive(Debug, Default)]
pub(crate) struct Workstations {
    next_id: AtomicU64,
    connected: Mutex<Vec<Workstation>>,
}

#[derive(Debug, Clone)]
struct Workstation {
    id: WorkstationId,
    /// Where streams toward this workstation are opened.
    handle: MuxHandle,
    claims: Vec<Claim>,
}

/// An app port a workstation takes, wholly or (with a filter) only some HTTP requests.
#[derive(Debug, Clone)]
struct Claim {
    app_port: u16,
    filter: Option<HttpFilter>,
}

/// A workstation that claimed a port, and which of its HTTP requests it takes.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) handle: MuxHandle,
    pub(crate) filter: Option<HttpFilter>,
}

impl Workstations {
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
    /// given), in place of what it claimed on that port before.
    pub(crate) fn claim(&self, id: WorkstationId, app_port: u16, filter: Option<HttpFilter>) {
        if let Some(workstation) = self.lock().iter_mut().find(|w| w.id == id) {
            workstation
                .claims
                .retain(|claim| claim.app_port != app_port);
            workstation.claims.push(Claim { app_port, filter });
        }
    }

    /// The workstations that claimed `app_port`, newest first.
    pub(crate) fn claimants(&self, app_port: u16) -> Vec<Claimant> {
        self.lock()
            .iter()
            .flat_map(|workstation| {
                workstation
                    .claims
                    .iter()
                    .filter(|claim| claim.app_port == app_port)
                    .map(|claim| Claimant {
                        handle: workstation.handle.clone(),
                        filter: claim.filter.clone(),
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
