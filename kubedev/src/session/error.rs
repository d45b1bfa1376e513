//! [`SessionError`]: why a session could not start or end.

use crate::inject::InjectError;
use crate::workload::{MayConflict, RolloutError, WorkloadError};

/// Why a session could not start or end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// What was asked does not fit the workload (a container, port or Service that is not
    /// there, or a choice left open); the message says what to give instead.
    #[error("{0}")]
    Choice(String),
    /// The workload cannot take this session as it is (another owner, a session that
    /// cannot be shared); the message says why.
    #[error("{0}")]
    Refused(String),
    /// What kubedev recorded on the workload, or put in its pods, is not as kubedev writes
    /// it (changed by hand, or by another version).
    #[error("{workload}: {what}")]
    Corrupt {
        /// The workload.
        workload: String,
        /// What is wrong, in words.
        what: String,
    },
    /// The cluster refused or failed a call.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The pods did not get there.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The agent cannot go into the pod template.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// The session did not come up; the workload is as it was.
    #[error("{workload} was restored")]
    RolledBack {
        /// The workload.
        workload: String,
        /// Why the session did not come up.
        source: Box<SessionError>,
    },
    /// The session did not come up, and putting the workload back failed too.
    #[error("restoring {workload} failed too: {restore}")]
    NotRolledBack {
        /// The workload.
        workload: String,
        /// Why it could not be put back.
        restore: Box<SessionError>,
        /// Why the session did not come up.
        source: Box<SessionError>,
    },
    /// No random bytes for a session token.
    #[error("the system gave no random bytes for a session token")]
    Random,
}

impl SessionError {
    /// Whether the session failed because the nodes cannot pull the agent image.
    pub fn cannot_pull_agent(&self) -> bool {
        match self {
            Self::Rollout(RolloutError::AgentImage { .. }) => true,
            Self::RolledBack { source, .. } | Self::NotRolledBack { source, .. } => {
                source.cannot_pull_agent()
            }
            _ => false,
        }
    }

    /// Whether a ResourceQuota refused the workload's pods over cpu or memory: too little
    /// room left, or limits it requires that the agent does not set; what the agent asks
    /// for can change that, unlike a quota on the number of pods.
    pub fn quota_refused_resources(&self) -> bool {
        match self {
            Self::Rollout(RolloutError::NotCreated { reason, .. }) => {
                names_quota_on_resources(reason)
            }
            Self::RolledBack { source, .. } | Self::NotRolledBack { source, .. } => {
                source.quota_refused_resources()
            }
            _ => false,
        }
    }

    /// Whether the user's role lacks a permission the call needed.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Workload(WorkloadError::Forbidden { .. }))
    }
}

impl MayConflict for SessionError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Workload(err) if err.is_conflict())
    }
}

/// Whether a controller's `reason` for not creating a pod is a ResourceQuota's, over cpu
/// or memory: "exceeded quota: q, requested: limits.memory=512Mi, ..." or "failed quota:
/// q: must specify limits.cpu for: kubedev-agent".
fn names_quota_on_resources(reason: &str) -> bool {
    let quota = reason.contains("exceeded quota") || reason.contains("failed quota");
    quota && (reason.contains("cpu") || reason.contains("memory"))
}

/// A JSON form kubedev wrote that does not read back.
pub(super) fn corrupt(
    workload: &impl std::fmt::Display,
    what: impl std::fmt::Display,
) -> SessionError {
    SessionError::Corrupt {
        workload: workload.to_string(),
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_quota_on_cpu_or_memory_is_one_the_agents_resources_can_meet() {
        let message = |tail: &str| format!("FailedCreate: pods \"web-1\" is forbidden: {tail}");
        for resources in [
            "exceeded quota: compute, requested: limits.memory=512Mi, used: limits.memory=1Gi, limited: limits.memory=1Gi",
            "failed quota: compute: must specify limits.cpu for: kubedev-agent; requests.cpu for: kubedev-agent",
        ] {
            assert!(names_quota_on_resources(&message(resources)), "{resources}");
        }
        for other in [
            "exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2",
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false",
        ] {
            assert!(!names_quota_on_resources(&message(other)), "{other}");
        }
    }
}
