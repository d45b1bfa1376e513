//! The checks on this machine: the plugin's and tunneld's versions, tunneld's cluster
//! network (ranges left to other routes), cluster names through the machine's resolver,
//! the round trip through its tunnel, and sshfs.

use std::path::Path;
use std::time::Duration;

use super::{Check, Outcome};
use crate::version::tunneld_version;
use kubedev::cluster::Connection;
use kubedev::control::{NetworkStatus, RangeState, ResolverStatus};
use kubedev::tunneld::{self, TunneldError};

/// The name looked up through the machine's resolver: every cluster has it.
const CLUSTER_NAME: &str = "kubernetes.default.svc.cluster.local";

/// How long the lookup may take.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);

/// The machine's checks.
pub(super) async fn checks(connection: &Connection) -> Vec<Check> {
    let mut checks = vec![versions()];
    checks.extend(network(connection).await);
    checks.push(sshfs());
    checks
}

/// The plugin's version against the tunneld it starts.
fn versions() -> Check {
    let plugin = env!("CARGO_PKG_VERSION");
    let tunneld = tunneld_version();
    let path = tunneld.path.display();
    match (&tunneld.version, &tunneld.error) {
        (Some(version), _) if version == plugin => Check::ok(
            "versions",
            format!("plugin {plugin}, tunneld {version} ({path})"),
        ),
        (Some(version), _) => Check::new(
            "versions",
            Outcome::Warning,
            format!("plugin {plugin}, tunneld {version} ({path})"),
            Some(
                "install the plugin's own tunneld again (kubectl krew upgrade), or name one \
                 with KUBEDEV_TUNNELD"
                    .into(),
            ),
        ),
        (None, error) => Check::new(
            "versions",
            Outcome::Failed,
            format!(
                "cannot run tunneld ({path}): {}",
                error.as_deref().unwrap_or("no version")
            ),
            Some("install the plugin again: its archive holds tunneld".into()),
        ),
    }
}

/// tunneld's cluster network, the names through the machine's resolver, and the round
/// trip through its tunnel.
async fn network(connection: &Connection) -> Vec<Check> {
    // Looking must not make the runtime directory: without it, no tunneld runs.
    if !tunneld::runtime_dir().exists() {
        return vec![not_running()];
    }
    let socket = match tunneld::socket_for(connection) {
        Ok(socket) => socket,
        // The error says what to do.
        Err(err) => {
            return vec![Check::new(
                "cluster network",
                Outcome::Failed,
                err.to_string(),
                None,
            )];
        }
    };
    let mut found = match tunneld::status(&socket).await {
        // Its last session ended: it is about to go, and answers no cluster name.
        Ok(status) if status.sessions.is_empty() => return vec![not_running()],
        Ok(status) => routing(status.network).await,
        Err(TunneldError::NotRunning(_)) => return vec![not_running()],
        Err(err) => {
            return vec![Check::new(
                "cluster network",
                Outcome::Failed,
                format!("tunneld does not answer: {err}"),
                Some("`leave --all`, then start a session again".into()),
            )];
        }
    };
    found.push(tunnel(&socket).await);
    found
}

/// The round trip to an agent through tunneld's link: the API server's port-forward, there
/// and back.
async fn tunnel(socket: &Path) -> Check {
    match tunneld::time_link(socket).await {
        Ok((pod, median)) => Check::ok(
            "tunnel",
            format!(
                "round trip to the agent in pod {pod}: {:.1} ms (median of 5)",
                median.as_secs_f64() * 1000.0
            ),
        ),
        Err(TunneldError::Failed(reason)) if reason == "no agent is linked" => Check::new(
            "tunnel",
            Outcome::Skipped,
            "no agent is linked: checked while a session lives",
            None,
        ),
        Err(err) => Check::new(
            "tunnel",
            Outcome::Failed,
            err.to_string(),
            Some("gather-logs has tunneld's log and the agents'".into()),
        ),
    }
}

/// tunneld's cluster network as its status says, and the names through the resolver.
async fn routing(network: NetworkStatus) -> Vec<Check> {
    match network {
        NetworkStatus::Up {
            ranges, resolver, ..
        } => {
            let routed = ranges
                .iter()
                .filter(|r| r.state == RangeState::Routed)
                .count();
            let elsewhere: Vec<String> = ranges
                .iter()
                .filter(|r| r.state != RangeState::Routed)
                .map(|r| format!("{}: {}", r.range, r.reason))
                .collect();
            let found = format!("up, {routed} of {} ranges routed", ranges.len());
            let range_check = match elsewhere.is_empty() {
                true => Check::ok("cluster network", found),
                false => Check::new(
                    "cluster network",
                    Outcome::Warning,
                    format!("{found}; not routed: {}", elsewhere.join("; ")),
                    Some("--also-proxy RANGE sends a range through the cluster anyway".into()),
                ),
            };
            vec![range_check, names(&resolver).await]
        }
        NetworkStatus::Unavailable { reason } => vec![Check::new(
            "cluster network",
            // Only Linux has it yet: elsewhere its absence is no fault.
            if cfg!(target_os = "linux") {
                Outcome::Warning
            } else {
                Outcome::Skipped
            },
            format!("not on this machine: {reason}"),
            Some("`-- CMD` and tunneld's proxy still reach the cluster (see `status`)".into()),
        )],
        NetworkStatus::Off => vec![Check::new(
            "cluster network",
            Outcome::Skipped,
            "off: no session has started it",
            None,
        )],
    }
}

/// The network check when no tunneld runs a session for the context.
fn not_running() -> Check {
    Check::new(
        "cluster network",
        Outcome::Skipped,
        "no session runs for this context: checked while one lives",
        None,
    )
}

/// Whether a cluster name resolves through the machine's resolver, where tunneld pointed
/// it (never asked otherwise: the question would go to the machine's own DNS server).
async fn names(resolver: &ResolverStatus) -> Check {
    if let ResolverStatus::Unchanged { reason, .. } = resolver {
        return Check::new(
            "cluster names",
            Outcome::Warning,
            format!("the machine's resolver is left as it is: {reason}"),
            Some("`-- CMD` resolves them; so does tunneld's proxy".into()),
        );
    }
    let lookup = tokio::net::lookup_host((CLUSTER_NAME, 443));
    match tokio::time::timeout(LOOKUP_DEADLINE, lookup).await {
        Ok(Ok(mut addresses)) => match addresses.next() {
            Some(address) => Check::ok(
                "cluster names",
                format!("{CLUSTER_NAME} is {} (through {resolver})", address.ip()),
            ),
            None => unresolved(resolver, "no address".into()),
        },
        Ok(Err(err)) => unresolved(resolver, err.to_string()),
        Err(_) => unresolved(resolver, format!("no answer in {LOOKUP_DEADLINE:?}")),
    }
}

fn unresolved(resolver: &ResolverStatus, why: String) -> Check {
    Check::new(
        "cluster names",
        Outcome::Failed,
        format!("{CLUSTER_NAME} does not resolve through {resolver}: {why}"),
        Some("`status` shows how the resolver was pointed; gather-logs has tunneld's log".into()),
    )
}

/// Whether sshfs, which mounts the volumes, is here.
fn sshfs() -> Check {
    if cfg!(windows) {
        return Check::new(
            "sshfs",
            Outcome::Skipped,
            "volumes are not mounted on Windows yet",
            None,
        );
    }
    match which::which("sshfs") {
        Ok(path) => Check::ok("sshfs", path.display().to_string()),
        Err(_) => Check::new(
            "sshfs",
            Outcome::Warning,
            "not found: sessions go on without their volumes",
            Some("install sshfs (Debian and Ubuntu: apt install sshfs; macOS: macFUSE and its sshfs)".into()),
        ),
    }
}
