//! What the user asked a session to be (the [`Plan`] that starting, joining and the choice
//! of container, Service and ports all read), and what starting it gave ([`Started`]).

use std::time::Duration;

use super::Record;
use crate::control::Forward;
use crate::mode::Mode;
use crate::workload::{Workload, WorkloadRef};
use kubedev_protocol::HttpFilter;

/// A port the user asked for: `LOCAL[:REMOTE]`, REMOTE a service port (intercept) or a
/// container port (replace), by number or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The port on this machine.
    pub local: u16,
    /// The service or container port, by number or name.
    pub remote: Option<String>,
}

impl std::str::FromStr for PortMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (local, remote) = match text.split_once(':') {
            Some((local, remote)) if !remote.is_empty() => (local, Some(remote.to_owned())),
            Some(_) => return Err(format!("invalid port {text:?}: expected LOCAL[:REMOTE]")),
            None => (text, None),
        };
        let local = local
            .parse()
            .map_err(|_| format!("invalid local port {local:?} in {text:?}"))?;
        Ok(Self { local, remote })
    }
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which plugin asks.
    pub mode: Mode,
    /// The session's name (the workload's, unless `--name` says otherwise).
    pub name: String,
    /// The workload to change.
    pub workload: WorkloadRef,
    /// The app container (`-c`; needed when the pods have several).
    pub container: Option<String>,
    /// The agent's image reference.
    pub agent_image: String,
    /// The ports asked for (`--port`).
    pub ports: Vec<PortMapping>,
    /// intercept: the Service to take over (needed when several select the pods).
    pub service: Option<String>,
    /// Where intercepted connections go on the workstation.
    pub address: String,
    /// intercept: only the HTTP requests that match come here.
    pub filter: Option<HttpFilter>,
    /// intercept: copies come here, and the app still answers.
    pub wiretap: bool,
    /// intercept: the Secret with the certificate and key of an app that terminates TLS
    /// itself, for the agent to read its requests.
    pub tls_secret: Option<String>,
    /// How long to wait for the pods.
    pub timeout: Duration,
    /// This run of the plugin (see [`Record::owner`]).
    pub owner: String,
    /// What the agent asks for and may use.
    pub agent_resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// Pause Flux's reconciliation of the workload (and the Service the session changes)
    /// while the session lasts (see [`super::FLUX_RECONCILE`]).
    pub pause_flux: bool,
}

/// A session live in the cluster.
#[derive(Debug, Clone)]
pub struct Started {
    /// The workload as written.
    pub workload: Workload,
    /// What the session recorded on it.
    pub record: Record,
    /// The secret its agents take.
    pub token: String,
    /// The label selector of the session's agent pods.
    pub agents: String,
    /// Where the connections the agents take over go on this machine.
    pub forwards: Vec<Forward>,
}
