//! A plugin's hold on its session: tunneld keeps the connection, and the session's lease
//! renewed, until the plugin releases it. A plugin that dies first leaves its workload to
//! tunneld to restore, as `leave` would.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kubedev::control::{ControlReply, ControlRequest, Held, SessionKey};
use kubedev::session::connect::{self, end_connect};
use kubedev::session::lease::DEFAULT_LEASE;
use kubedev::session::{self, SessionError};
use kubedev::tunneld::ControlStream;
use kubedev_protocol::codec::{read_message, write_message};

use super::leases::{self, LeaseKeeping};
use super::routing;
use super::{Daemon, HoldCount};

/// The longest pause between two attempts to restore a workload.
const RESTORE_RETRY_PAUSE: Duration = Duration::from_secs(15);

/// A session held by one run, until dropped.
struct HeldSession<'a> {
    daemon: &'a Daemon,
    session: SessionKey,
}

impl<'a> HeldSession<'a> {
    /// Holds `session`, unless another run holds it or tunneld already keeps it.
    async fn take(daemon: &'a Daemon, session: &SessionKey) -> Option<Self> {
        if !lock(&daemon.held).insert(session.clone()) {
            return None;
        }
        let held = Self {
            daemon,
            session: session.clone(),
        };
        // Dropped (let go) if a detached run's session of this name is already here.
        (!daemon.sessions.lock().await.contains_key(session)).then_some(held)
    }
}

impl Drop for HeldSession<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.held).remove(&self.session);
    }
}

/// The set of held sessions, even after a panic elsewhere poisoned its lock.
fn lock(
    held: &std::sync::Mutex<HashSet<SessionKey>>,
) -> std::sync::MutexGuard<'_, HashSet<SessionKey>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Daemon {
    /// Keeps `holder`'s connection, renewing the session's lease, until the plugin releases
    /// the session. If the connection closes first, its plugin died with the session live:
    /// end it, and restore the workload as `leave` does. If the lease is lost, end the
    /// session here and tell the plugin.
    pub(super) async fn hold(
        self: &Arc<Self>,
        held: Held,
        mut holder: ControlStream,
    ) -> anyhow::Result<()> {
        let _counted = HoldCount::new(self);
        let session = held.session();
        // Another run's session of this name lives here: this run cannot start one (the
        // cluster refuses it too), and its lease and its end must not touch that one.
        let Some(_held) = HeldSession::take(self, &session).await else {
            let reason = format!(
                "a session named {:?} already runs in namespace {} on this machine: choose \
                 another --name",
                session.name, session.namespace
            );
            return Ok(write_message(&mut holder, &ControlReply::Failed { reason }).await?);
        };
        let keeping = Arc::new(LeaseKeeping::new(
            session.clone(),
            held.owner.clone(),
            held.lease,
        ));
        if held.lease.is_some() {
            self.leases
                .lock()
                .await
                .insert(held.owner.clone(), keeping.clone());
            tokio::spawn(leases::keep_lease(self.clone(), Arc::downgrade(&keeping)));
        }
        let watched = Arc::downgrade(&keeping);
        tokio::spawn(routing::watch_routing(self.clone(), watched, held.clone()));
        write_message(&mut holder, &ControlReply::Done).await?;
        let mut lost_rx = keeping.lost_tx.subscribe();
        let lost = tokio::select! {
            request = read_message::<_, ControlRequest>(&mut holder) => match request {
                Ok(ControlRequest::Release) => None,
                _ => Some(None),
            },
            reason = lost_rx.wait_for(Option::is_some) => {
                Some(Some(reason.map(|r| r.clone().unwrap_or_default()).unwrap_or_default()))
            }
        };
        match lost {
            None => {
                if self.sessions.lock().await.contains_key(&session) {
                    // Detached: the lease lives as long as the session does here.
                    keeping.mark_detached();
                } else {
                    keeping.mark_ending();
                    self.forget_lease(&held.owner).await;
                }
                return Ok(write_message(&mut holder, &ControlReply::Done).await?);
            }
            Some(Some(reason)) => {
                return Ok(write_message(&mut holder, &ControlReply::Ended { reason }).await?);
            }
            Some(None) => {}
        }
        keeping.mark_ending();
        tracing::warn!(
            "the plugin running session {} is gone: ending it and restoring {}",
            held.name,
            restored(&held)
        );
        self.remove_session(&session).await;
        self.restore(&held).await;
        self.forget_lease(&held.owner).await;
        Ok(())
    }

    /// Restores `held`'s workload as `leave` does (or deletes a connect session's pod),
    /// retrying while the cluster fails for as long as the session's lease lasts: a
    /// cluster out of reach for that long cannot renew it either, and the session is left
    /// to the next run in the namespace to reclaim.
    pub(super) async fn restore(&self, held: &Held) {
        let Held {
            name,
            owner,
            namespace,
            workload,
            timeout,
            lease,
        } = held;
        let what = restored(held);
        let deadline = tokio::time::Instant::now() + lease.unwrap_or(DEFAULT_LEASE);
        let mut pause = Duration::from_secs(1);
        loop {
            let attempt = match workload {
                Some(workload) => {
                    let left = session::leave(
                        &self.client,
                        namespace,
                        workload,
                        name,
                        Some(owner),
                        *timeout,
                        |_| {},
                    );
                    left.await.map(|left| left.describe(name, workload))
                }
                None => end_connect(&self.client, namespace, name, Some(owner))
                    .await
                    .map(|_| format!("connect session {name} ended")),
            };
            let err = match attempt {
                Ok(done) => return tracing::info!("{done}"),
                // The original is back; only its pods are late.
                Err(err @ SessionError::Rollout(_)) => {
                    return tracing::warn!("{what} restored; {:#}", anyhow::Error::from(err));
                }
                Err(err) => anyhow::Error::from(err),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return match lease {
                    Some(lease) => tracing::error!(
                        "could not restore {what}: {err:#}; its lease runs out {lease:?} \
                         after the last renewal, and then the next kubedev command in \
                         namespace {namespace} restores it (or run `leave {name}` with the \
                         plugin)"
                    ),
                    None => tracing::error!(
                        "could not restore {what}: {err:#}; run `leave {name}` with the \
                         plugin"
                    ),
                };
            }
            tracing::warn!("restoring {what}: {err:#}; trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESTORE_RETRY_PAUSE);
        }
    }
}

/// What restoring `held` puts back, in words: its workload, or a connect session's pod.
fn restored(held: &Held) -> String {
    match &held.workload {
        Some(workload) => workload.to_string(),
        None => format!("pod/{}", connect::pod_name(&held.name)),
    }
}
