//! A session's life in the cluster: injecting the agent into a workload (and, for a numeric
//! targetPort, pointing its Service at the agent), and restoring both exactly.
//!
//! Before anything changes, the original pod template and Service ports are recorded in an
//! annotation on the workload ([`RECORD_ANNOTATION`]): whoever ends the session, this run
//! or a later one after a crash, puts back exactly what was there. Each run holds a lease
//! on its session ([`lease`]); a session whose lease ran out is restored by the next run of
//! any plugin in the namespace ([`reclaim_expired`]).

mod candidates;
pub mod connect;
mod error;
mod gitops;
pub mod image_trial;
mod join;
pub mod lease;
mod leave;
pub mod naming;
mod observed;
mod plan;
mod ports;
mod reclaim;
mod record;
mod routing;
mod service;
mod start;
mod three_way;
mod tls_secret;
mod tokens;

pub use candidates::{Candidate, CandidatePort, candidates_in};
pub use error::SessionError;
pub use gitops::{Reconciler, reconciler_of};
pub use leave::{Left, leave, restore_unrecorded};
pub use observed::LeaseObservations;
pub use plan::{Plan, PortMapping, Started};
pub use reclaim::{Expired, reclaim_expired, sessions_everywhere, sessions_in};
pub use record::{
    FLUX_PAUSED, FLUX_RECONCILE, Joined, Listed, RECORD_ANNOTATION, Record, Removal, ServiceRecord,
    record_of,
};
pub use routing::{Routing, routing_of};
pub use start::start;
pub use three_way::OthersChanges;

/// A fresh random id (session tokens, plugin runs): 128 random bits from the system's
/// generator (getrandom, or BCryptGenRandom on Windows), hex.
pub fn random_id() -> Result<String, SessionError> {
    kubedev_protocol::random_id().ok_or(SessionError::Random)
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod join_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod names_tests;
#[cfg(test)]
mod replaced_tests;
#[cfg(test)]
mod tests;
