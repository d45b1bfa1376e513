//! Shared library of the kubedev kubectl plugins (`kubectl intercept`,
//! `kubectl replace-container`, `kubectl ingest`), tunneld and the agent.
//!
//! - [`protocol`]: the wire protocol between tunneld and the in-pod agent (always built;
//!   it is all the agent takes from this crate);
//! - [`tunnel`]: the workstation's end of a session with an agent;
//! - [`control`]: tunneld's control API, and starting tunneld on demand;
//! - [`cidr`]: IPv4 ranges, as `--also-proxy` and tunneld's routes take them;
//! - [`logging`]: the daemons' log format;
//! - [`signals`]: the signals that stop every kubedev process cleanly;
//! - with the `client` feature (default): kubectl-style flags and client construction
//!   ([`cluster`]), workloads ([`workload`]), agent injection ([`inject`]), sessions and
//!   their exact restoration ([`session`]), env output ([`env`]), and the plugins'
//!   shared command line, run and output, with errors reported the way kubectl does
//!   ([`cli`]).

pub mod cidr;
pub mod control;
pub mod logging;
pub mod protocol;
pub mod signals;
pub mod tunnel;

#[cfg(feature = "client")]
pub mod cli;
#[cfg(feature = "client")]
pub mod cluster;
#[cfg(feature = "client")]
pub mod env;
#[cfg(feature = "client")]
pub mod inject;
#[cfg(feature = "client")]
pub mod mount;
#[cfg(feature = "client")]
pub mod session;
#[cfg(feature = "client")]
pub mod workload;
