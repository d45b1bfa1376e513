//! Shared library of the kubedev kubectl plugins (`kubectl intercept`,
//! `kubectl replace-container`, `kubectl ingest`) and of tunneld.
//!
//! Everything the plugins have in common lives here: kubectl-style cluster flags
//! and client construction ([`cluster`]), workload references ([`workload`]) and
//! error reporting ([`cli`]).

pub mod cli;
pub mod cluster;
pub mod workload;
