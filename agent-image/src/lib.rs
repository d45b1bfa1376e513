//! The kubedev agent: it runs as a container in the workload's pods, takes sessions from
//! workstations through the Kubernetes API's port-forward (`accept`), opens flows and
//! name lookups from inside the pod for them (`outgoing`), hands them the connections for
//! the ports it took over from the app (`incoming`), and serves the app's volumes
//! (`files`).

#![warn(missing_docs)]

mod accept;
mod env;
mod files;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod incoming;
mod outgoing;
mod reply;
mod stripes;
mod workstations;

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev_protocol::Listener;

pub use accept::Settings;

/// Serves workstations on `listen` and the app's ports in `listeners` until an error.
pub async fn run(
    listen: SocketAddr,
    settings: Settings,
    listeners: Vec<Listener>,
) -> anyhow::Result<()> {
    let (udp_idle, tls_dir) = (settings.udp_idle, settings.tls_dir.clone());
    let workstations = Arc::new(workstations::Workstations::default());
    tokio::try_join!(
        accept::run(listen, settings, workstations.clone()),
        incoming::serve(listeners, workstations, udp_idle, &tls_dir),
    )?;
    Ok(())
}
