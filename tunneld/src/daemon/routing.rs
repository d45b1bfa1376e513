//! Watching that a held session's changes stay in place. A GitOps controller re-applying the
//! workload from git (or a teammate's `kubectl apply`) takes back the agent's ports or the
//! Service's target without a word, and the session would go on taking nothing. tunneld
//! checks every few seconds; once something was undone, it ends the session, restores what
//! is left of it, and tells the plugin what changed and who changed it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kubedev::control::Held;
use kubedev::session::lease::lease_holder;
use kubedev::session::{Record, Routing, restore_unrecorded, routing_of};

use super::leases::LeaseKeeping;
use super::{Daemon, HoldCount};

/// How often a live session's changes are checked: a reconciler's undoing is noticed
/// within this, at one read of the workload (and Service) each time.
const ROUTING_CHECK_PERIOD: Duration = Duration::from_secs(3);
/// How often a held session is looked for until it is live.
const LIVE_POLL: Duration = Duration::from_millis(100);

/// Checks `held`'s session on its workload every [`ROUTING_CHECK_PERIOD`], from the moment
/// it is live here until it ends (or is no longer kept).
pub(super) async fn watch_routing(daemon: Arc<Daemon>, keeping: Weak<LeaseKeeping>, held: Held) {
    let Some(workload) = held.workload.clone() else {
        return;
    };
    let mut was_live = false;
    // The record as last seen: what to restore from if the workload loses it.
    let mut last_record = None;
    loop {
        // Until the session is live, look often: the first check, as soon as it is, keeps
        // the record to restore from should the workload be replaced whole.
        let pause = if was_live {
            ROUTING_CHECK_PERIOD
        } else {
            LIVE_POLL
        };
        tokio::time::sleep(pause).await;
        let Some(kept) = keeping.upgrade() else {
            return;
        };
        if kept.is_ending() {
            return;
        }
        // The hold comes before the session is live: nothing is in place until then.
        let live = daemon.sessions.lock().await.contains_key(&held.session());
        match (live, was_live) {
            (false, true) => return,
            (false, false) => continue,
            (true, _) => was_live = true,
        }
        let routing = routing_of(&daemon.client, &held.namespace, &workload, &held.name).await;
        let (undone, record_gone) = match routing {
            Ok(Routing::InPlace(record)) => {
                last_record = Some(record);
                continue;
            }
            Ok(undone @ Routing::Undone { record_gone, .. }) => {
                (undone.describe().unwrap_or_default(), record_gone)
            }
            Err(err) => {
                tracing::debug!("checking session {} on {workload}: {err}", held.name);
                continue;
            }
        };
        // A run that ends the session (a teammate's `leave`, a reclaim) takes its lease
        // too: where the lease is no longer this run's, its keeper tells who.
        if kept.lifetime.is_some() {
            match lease_holder(&daemon.client, &held.namespace, &held.owner).await {
                Ok(Some(holder)) if holder.owner == held.owner => {}
                Ok(_) => return,
                Err(err) => {
                    tracing::debug!("reading the lease of session {}: {err}", held.name);
                    continue;
                }
            }
        }
        let last_record = if record_gone { last_record } else { None };
        return end_undone(&daemon, &kept, &held, &undone, last_record).await;
    }
}

/// Ends `held`'s session, whose change was undone (as `undone` says), telling its plugin,
/// and restores what is left: from `last_record` where the workload lost its own.
async fn end_undone(
    daemon: &Arc<Daemon>,
    kept: &LeaseKeeping,
    held: &Held,
    undone: &str,
    last_record: Option<Box<Record>>,
) {
    let Some(workload) = &held.workload else {
        return;
    };
    let reason = format!(
        "{undone}: the session no longer takes its traffic, so kubedev ends it and restores \
         what is left of its changes (a GitOps tool syncing {workload}? see docs/gitops.md)"
    );
    tracing::warn!("session {}: {reason}", held.name);
    kept.mark_ending();
    // Counted as a hold: tunneld stays up until the restore is done.
    let _counted = HoldCount::new(daemon);
    // The plugin hears why before the links go, not that the cluster is out of reach.
    kept.lost_tx.send_replace(Some(reason));
    daemon.remove_session(&held.session()).await;
    match last_record {
        Some(record) => {
            let (client, namespace) = (&daemon.client, &held.namespace);
            let restored = restore_unrecorded(client, namespace, workload, &record, held.timeout);
            match restored.await {
                Ok(left) => tracing::info!("{}", left.describe(&held.name, workload)),
                Err(err) => tracing::error!("restoring what was left of {workload}: {err}"),
            }
        }
        None => daemon.restore(held).await,
    }
    daemon.forget_lease(&held.owner).await;
}
