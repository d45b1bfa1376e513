//! Shared library of the kubedev kubectl plugins (`kubectl intercept`,
//! `kubectl replace-container`, `kubectl ingest`), tunneld and the agent.
//!
//! - [`protocol`]: the wire protocol between tunneld and the in-pod agent (always built;
//!   it is all the agent takes from this crate);
//! - [`tunnel`]: the workstation's end of a session with an agent;
//! - [`control`]: tunneld's control API, and starting tunneld on demand;
//! - [`logging`]: the daemons' log format;
//! - with the `client` feature (default): kubectl-style flags and client construction
//!   ([`cluster`]), workload references ([`workload`]) and error reporting ([`cli`]).

pub mod control;
pub mod logging;
pub mod protocol;
pub mod tunnel;

#[cfg(feature = "client")]
pub mod cli;
#[cfg(feature = "client")]
pub mod cluster;
#[cfg(feature = "client")]
pub mod workload;
