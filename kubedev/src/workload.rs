//! Workloads: references as users type them (`NAME`, whatever its kind, or `KIND/NAME`,
//! with the kinds and short names kubectl accepts), the objects in the cluster ([`Workload`]), and
//! waiting for their pods ([`wait_for_pods`]).

mod argo;
mod conflict;
mod creation;
mod error;
mod lookup;
mod managers;
mod object;
mod owners;
mod pod;
mod pod_gap;
mod pod_recreate;
mod rollout;

use std::fmt;

pub use conflict::{FIELD_MANAGER, MayConflict, retry_on_conflict, write_params};
pub use error::WorkloadError;
pub use lookup::WorkloadName;
pub use managers::hand_back_fields;
pub use object::Workload;
pub use owners::PodOwners;
pub use pod::GAP_PREFIX as POD_GAP_KEY_PREFIX;
pub use pod_gap::{Filled, restore_expired_gaps, restore_gap_of};
pub use rollout::{OldPods, Progress, RolloutError, check_agents, wait_for_pods};
pub(crate) use rollout::{PROXY_SYNC, agent_failure, is_ready, why_not_ready};
use std::str::FromStr;

/// The kinds of workload whose pod template kubedev can patch, and a pod of its own (one
/// that no controller manages), which kubedev deletes and creates again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A Deployment (`deploy`).
    Deployment,
    /// A StatefulSet (`sts`).
    StatefulSet,
    /// A ReplicaSet (`rs`).
    ReplicaSet,
    /// A DaemonSet (`ds`).
    DaemonSet,
    /// An Argo Rollout (`ro`, `argoproj.io/v1alpha1`): a Deployment's pod template under
    /// progressive delivery.
    Rollout,
    /// A pod no controller manages (`po`): its own template, changed by deleting it and
    /// creating it again under the same name.
    Pod,
}

impl WorkloadKind {
    /// Every kind a bare name may be, in the order they are offered and looked up: a pod
    /// is named as `pod/NAME` only, as changing it means creating it again.
    pub const ALL: [Self; 5] = [
        Self::Deployment,
        Self::StatefulSet,
        Self::ReplicaSet,
        Self::DaemonSet,
        Self::Rollout,
    ];

    /// Parses a kind as kubectl accepts it: singular, plural, short name, or
    /// `resource.group`, case-insensitively.
    fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        let (resource, group) = match lower.split_once('.') {
            Some((resource, group)) => (resource, Some(group)),
            None => (lower.as_str(), None),
        };
        let kind = match resource {
            "deploy" | "deployment" | "deployments" => Self::Deployment,
            "sts" | "statefulset" | "statefulsets" => Self::StatefulSet,
            "rs" | "replicaset" | "replicasets" => Self::ReplicaSet,
            "ds" | "daemonset" | "daemonsets" => Self::DaemonSet,
            "ro" | "rollout" | "rollouts" => Self::Rollout,
            "po" | "pod" | "pods" => Self::Pod,
            _ => return None,
        };
        group
            .is_none_or(|group| group == kind.group())
            .then_some(kind)
    }

    /// Its API group.
    pub fn group(self) -> &'static str {
        match self {
            Self::Rollout => "argoproj.io",
            Self::Pod => "",
            _ => "apps",
        }
    }

    /// The label that tells which of its ReplicaSets a pod belongs to, for the kinds whose
    /// pods are their ReplicaSets' (a template change makes a new ReplicaSet).
    pub fn template_hash_label(self) -> Option<&'static str> {
        match self {
            Self::Deployment => Some("pod-template-hash"),
            Self::Rollout => Some("rollouts-pod-template-hash"),
            Self::StatefulSet | Self::ReplicaSet | Self::DaemonSet | Self::Pod => None,
        }
    }

    /// The API resource, as RBAC rules and `kubectl auth can-i` name it.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::ReplicaSet => "replicasets",
            Self::DaemonSet => "daemonsets",
            Self::Rollout => "rollouts",
            Self::Pod => "pods",
        }
    }

    /// The resource name kubectl prints (`deployment`, `statefulset`, ...).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::StatefulSet => "statefulset",
            Self::ReplicaSet => "replicaset",
            Self::DaemonSet => "daemonset",
            Self::Rollout => "rollout",
            Self::Pod => "pod",
        }
    }
}

/// A workload named on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadRef {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
}

impl FromStr for WorkloadRef {
    type Err = String;

    /// `KIND/NAME`, or a bare NAME as a Deployment; a user's bare name is looked up
    /// ([`WorkloadName::find`]).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let WorkloadName { kind, name } = text.parse()?;
        Ok(Self {
            kind: kind.unwrap_or(WorkloadKind::Deployment),
            name,
        })
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.resource(), self.name)
    }
}

/// RFC 1123 subdomain, the rule for the names of workloads.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// RFC 1123 label, the rule for namespace names.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkloadRef, String> {
        text.parse()
    }

    #[test]
    fn bare_name_is_a_deployment() {
        let w = parse("web").expect("valid");
        assert_eq!(w.kind, WorkloadKind::Deployment);
        assert_eq!(w.name, "web");
        assert_eq!(w.to_string(), "deployment/web");
    }

    #[test]
    fn accepts_kubectl_kind_spellings() {
        for (text, kind) in [
            ("deploy/a", WorkloadKind::Deployment),
            ("Deployments.apps/a", WorkloadKind::Deployment),
            ("sts/a", WorkloadKind::StatefulSet),
            ("statefulset/a", WorkloadKind::StatefulSet),
            ("rs/a", WorkloadKind::ReplicaSet),
            ("replicasets.apps/a", WorkloadKind::ReplicaSet),
            ("ds/a", WorkloadKind::DaemonSet),
            ("daemonsets.apps/a", WorkloadKind::DaemonSet),
            ("ro/a", WorkloadKind::Rollout),
            ("rollouts.argoproj.io/a", WorkloadKind::Rollout),
            ("Rollout/a", WorkloadKind::Rollout),
            ("pod/a", WorkloadKind::Pod),
            ("po/a", WorkloadKind::Pod),
            ("pods/a", WorkloadKind::Pod),
        ] {
            assert_eq!(parse(text).expect(text).kind, kind, "{text}");
        }
    }

    #[test]
    fn names_that_look_like_subcommands_work_with_a_kind() {
        assert_eq!(parse("deploy/list").expect("valid").name, "list");
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_names() {
        for unsupported in [
            "cronjob/a",
            "rollouts.apps/a",
            "deployments.argoproj.io/a",
            "pods.apps/a",
        ] {
            let err = parse(unsupported).expect_err("unsupported");
            assert!(err.contains("unsupported workload kind"), "{err}");
        }
        for bad in ["", "Web", "a_b", "-a", "a/", "deploy/a/b"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
