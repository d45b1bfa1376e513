//! What every run of a plugin does first: restore the sessions in the namespace whose lease
//! has run out (their machine died, or has been away for longer than the lease), and say so.

use std::time::Duration;

use kubedev::cluster::Connection;
use kubedev::private_files::private_dir;
use kubedev::session::{self, LeaseObservations, lease::Holder};
use kubedev::tunneld::runtime_dir;

/// Where this machine keeps what it has seen of the sessions' leases, between runs.
const OBSERVATIONS_FILE: &str = "lease-observations.json";

/// Restores, as `leave` does, every session in the connection's namespace whose lease has
/// run out, on behalf of run `owner`. Failing to look is only a warning: the command the
/// user asked for goes on.
pub(super) async fn reclaim_expired(connection: &Connection, owner: &str, timeout: Duration) {
    let namespace = &connection.namespace;
    let dir = runtime_dir();
    let mut observations = LeaseObservations::load(dir.join(OBSERVATIONS_FILE));
    let reclaimed = session::reclaim_expired(
        &connection.client,
        namespace,
        (&Holder::here(owner), &mut observations),
        timeout,
        |expired| eprintln!("{}: restoring it", expired.describe()),
    )
    .await;
    if let Err(err) = private_dir(&dir).and_then(|()| observations.save()) {
        eprintln!("warning: cannot keep what this machine saw of the leases: {err}");
    }
    match reclaimed {
        Ok(reclaimed) => {
            for (expired, left) in reclaimed {
                match left {
                    Ok(left) => eprintln!("{left}"),
                    Err(err) => eprintln!(
                        "warning: could not restore {}: {:#}",
                        expired.target,
                        anyhow::Error::from(err)
                    ),
                }
            }
        }
        Err(err) => eprintln!(
            "warning: could not look for sessions in namespace {namespace} whose lease ran out: \
             {:#}",
            anyhow::Error::from(err)
        ),
    }
}
