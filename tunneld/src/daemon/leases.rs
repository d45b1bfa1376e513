//! Renewing the lease of every session tunneld holds: from the plugin's hold until the session
//! has ended (or, detached, until it is removed). A lease found lost — another run restored
//! the session after it ran out, while this machine slept or was cut off — ends the session
//! here, and the plugin holding it hears why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kubedev::control::SessionKey;
use kubedev::session::lease::{Renewal, renew_lease, renew_period};
use tokio::sync::watch;

use super::Daemon;

/// A session whose lease tunneld renews.
#[derive(Debug)]
pub(super) struct LeaseKeeping {
    pub(super) session: SessionKey,
    pub(super) owner: String,
    /// None: the session has no lease (the user's role has no leases).
    pub(super) lifetime: Option<Duration>,
    /// Set once the session is being ended on purpose: a lease gone then is expected.
    ending: AtomicBool,
    /// Set once the plugin has released its hold and the session lives on here alone
    /// (detached): removing the session then ends the renewals.
    detached: AtomicBool,
    /// Why the lease was lost, for the plugin holding the session: keeper to hold.
    pub(super) lost_tx: watch::Sender<Option<String>>,
}

impl LeaseKeeping {
    pub(super) fn new(session: SessionKey, owner: String, lifetime: Option<Duration>) -> Self {
        Self {
            session,
            owner,
            lifetime,
            ending: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            lost_tx: watch::Sender::new(None),
        }
    }

    /// The session is being ended on purpose.
    pub(super) fn mark_ending(&self) {
        self.ending.store(true, Ordering::SeqCst);
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
    }

    /// The plugin left the session to tunneld.
    pub(super) fn mark_detached(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    pub(super) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }
}

impl Daemon {
    /// Stops renewing the lease of run `owner`'s session.
    pub(super) async fn forget_lease(&self, owner: &str) {
        self.leases.lock().await.remove(owner);
    }
}

/// Renews `keeping`'s lease every [`renew_period`] for as long as anyone (the hold, or the
/// daemon's list of leases) still has it.
pub(super) async fn keep_lease(daemon: Arc<Daemon>, keeping: Weak<LeaseKeeping>) {
    let Some(lifetime) = keeping.upgrade().and_then(|k| k.lifetime) else {
        return;
    };
    let period = renew_period(lifetime);
    loop {
        tokio::time::sleep(period).await;
        let Some(lease) = keeping.upgrade() else {
            return;
        };
        match renew_lease(&daemon.client, &lease.session.namespace, &lease.owner).await {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::Lost { by }) => {
                if !lease.is_ending() {
                    let reason = format!(
                        "the lease of session {} ran out (this machine was away from the \
                         cluster for longer than {:?}) and {} restored its workload",
                        lease.session,
                        lifetime,
                        by.as_deref().unwrap_or("another run of kubedev")
                    );
                    tracing::warn!("{reason}: ending the session here");
                    daemon.remove_session(&lease.session).await;
                    lease.lost_tx.send_replace(Some(reason));
                }
                daemon.forget_lease(&lease.owner).await;
                return;
            }
            // The lease lasts a lifetime past the last renewal: try again next period, and
            // if the cluster stays out of reach for longer, the lease is another run's to
            // reclaim.
            Err(err) => tracing::warn!(
                "renewing the lease of session {}: {:#}",
                lease.session,
                anyhow::Error::from(err)
            ),
        }
    }
}
