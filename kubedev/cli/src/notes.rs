//! What a session tells its user on the way: before the workload changes (a pod created
//! again, a GitOps controller that would take the session back) and once it is live (local
//! ports nothing listens on yet).

use std::time::Duration;

use kubedev::cluster::Connection;
use kubedev::control::Forward;
use kubedev::mode::Mode;
use kubedev::session::{self, Plan, Reconciler};
use kubedev::workload::{Workload, WorkloadKind};
use kubedev_protocol::Transport;

/// Says which TCP ports of this machine that a session sends connections to nothing
/// listens on yet: the only other trace is a line in tunneld's log.
pub(super) async fn note_idle_local_ports(mode: Mode, forwards: &[Forward]) {
    let meanwhile = match mode {
        Mode::Replace => "are refused",
        Mode::Intercept | Mode::Ingest => "go to the app",
    };
    for forward in forwards.iter().filter(|f| f.transport == Transport::Tcp) {
        if listens(&forward.local_host, forward.local_port).await {
            continue;
        }
        // A server on `localhost` may have taken IPv6's loopback alone (as Node.js does).
        let on_ipv6 = forward.local_host == "127.0.0.1" && listens("::1", forward.local_port).await;
        let hint = match on_ipv6 {
            true => format!(
                "; a server listens on [::1]:{}: give --address ::1 to send them there",
                forward.local_port
            ),
            false => String::new(),
        };
        eprintln!(
            "note: nothing listens on {} yet; until something does, connections for port {} \
             {meanwhile}{hint}",
            forward.local_address(),
            forward.app_port
        );
    }
}

/// Whether something on this machine takes connections at `host:port`.
async fn listens(host: &str, port: u16) -> bool {
    let connecting = tokio::net::TcpStream::connect((host, port));
    let connected = tokio::time::timeout(Duration::from_secs(1), connecting).await;
    !matches!(connected, Ok(Err(_)))
}

/// What the user should know before `plan` changes its workload: a pod of its own is
/// created again, and a GitOps controller may take the session back.
pub(super) async fn before_start(connection: &Connection, plan: &Plan) {
    let Ok(workload) =
        Workload::get(&connection.client, &connection.namespace, &plan.workload).await
    else {
        return;
    };
    if workload.reference.kind == WorkloadKind::Pod && !workload.is_controlled() {
        note_recreation(&workload, plan.mode);
    }
    warn_of_reconciler(&workload, plan);
}

/// Says what creating a pod of its own again changes for the app.
fn note_recreation(pod: &Workload, mode: Mode) {
    if session::record_of(pod).ok().flatten().is_some() {
        return;
    }
    let with = match mode {
        Mode::Replace => "the agent in place of the container",
        Mode::Intercept | Mode::Ingest => "the agent",
    };
    eprintln!(
        "note: {} has no controller: kubedev deletes it and creates it again with {with}, and \
         creates it as it was when the session ends (each time its IP changes, emptyDir \
         volumes start empty and init containers run again)",
        pod.reference
    );
}

/// Says so where a GitOps controller applies the workload: its next sync would take the
/// session back (and kubedev would end it).
fn warn_of_reconciler(workload: &Workload, plan: &Plan) {
    let Some(reconciler) = session::reconciler_of(workload) else {
        return;
    };
    let workload = &plan.workload;
    match (&reconciler, plan.pause_flux) {
        (Reconciler::Flux { .. }, true) => {
            eprintln!(
                "pausing {reconciler} on {workload} and the Service the session takes over, \
                 for the session"
            );
        }
        (Reconciler::Flux { .. }, false) => eprintln!(
            "note: {reconciler} applies {workload}: its next sync takes the session back, and \
             kubedev then ends it; --pause-flux pauses Flux on it for the session \
             (docs/gitops.md)"
        ),
        (Reconciler::ArgoCd { .. }, pause_flux) => eprintln!(
            "note: {reconciler} applies {workload}: with self-heal on, its next sync takes the \
             session back, and kubedev then ends it; docs/gitops.md says how to let the \
             session be{}",
            if pause_flux {
                " (--pause-flux pauses only Flux: Argo CD has no per-object pause)"
            } else {
                ""
            }
        ),
    }
}
