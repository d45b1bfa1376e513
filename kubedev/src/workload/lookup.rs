//! A workload as users type it ([`WorkloadName`]: `NAME` or `KIND/NAME`), found in the
//! cluster. A bare NAME is whichever Deployment, StatefulSet, ReplicaSet, DaemonSet or Argo
//! Rollout has that name, as Telepresence finds a workload whatever its kind; when two kinds
//! share it, the user is asked to say which.

use std::fmt;
use std::str::FromStr;

use super::{Workload, WorkloadError, WorkloadKind, WorkloadRef};

/// A workload as typed on the command line: its kind only if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadName {
    /// The kind, from `KIND/NAME`.
    pub kind: Option<WorkloadKind>,
    /// The name.
    pub name: String,
}

impl FromStr for WorkloadName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match text.split_once('/') {
            None => (None, text),
            Some((kind, name)) => {
                let kind = WorkloadKind::parse(kind).ok_or_else(|| {
                    format!(
                        "unsupported workload kind {kind:?}: use deployment/NAME, \
                         statefulset/NAME, replicaset/NAME, daemonset/NAME, rollout/NAME or \
                         pod/NAME"
                    )
                })?;
                (Some(kind), name)
            }
        };
        if !super::is_dns_subdomain(name) {
            return Err(format!(
                "invalid workload name {name:?}: expected a Kubernetes object name \
                 (lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{}/{}", kind.resource(), self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl WorkloadName {
    /// The workload this names in `namespace`: the kind given, or the one kind that has a
    /// workload of this name (a ReplicaSet that a Deployment owns is the Deployment's).
    pub async fn find(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<WorkloadRef, WorkloadError> {
        if let Some(kind) = self.kind {
            return Ok(WorkloadRef {
                kind,
                name: self.name.clone(),
            });
        }
        let lookups = WorkloadKind::ALL.map(|kind| {
            let reference = WorkloadRef {
                kind,
                name: self.name.clone(),
            };
            async move {
                let found = Workload::get(client, namespace, &reference).await;
                (kind, found.map(|workload| workload.is_controlled()))
            }
        });
        let found = futures::future::join_all(lookups).await;
        self.choose(namespace, found)
    }

    /// The one workload among `found`: per kind, whether another object controls the one
    /// of this name, or why there is none.
    fn choose(
        &self,
        namespace: &str,
        found: Vec<(WorkloadKind, Result<bool, WorkloadError>)>,
    ) -> Result<WorkloadRef, WorkloadError> {
        let mut kinds = Vec::new();
        let mut unreadable = Vec::new();
        for (kind, answer) in found {
            match answer {
                Ok(false) => kinds.push(kind),
                Ok(true) | Err(WorkloadError::NotFound { .. }) => {}
                Err(WorkloadError::Forbidden { resource, .. }) => unreadable.push(resource),
                Err(err) => return Err(err),
            }
        }
        match kinds[..] {
            [kind] => Ok(WorkloadRef {
                kind,
                name: self.name.clone(),
            }),
            [] => Err(WorkloadError::NoneNamed {
                name: self.name.clone(),
                namespace: namespace.to_owned(),
                unreadable,
            }),
            _ => Err(WorkloadError::Ambiguous {
                name: self.name.clone(),
                namespace: namespace.to_owned(),
                kinds,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> WorkloadName {
        text.parse().expect(text)
    }

    /// The lookups' answers: a workload of `kind` (controlled by another, or not), or none.
    fn found(answers: [Option<bool>; 5]) -> Vec<(WorkloadKind, Result<bool, WorkloadError>)> {
        WorkloadKind::ALL
            .into_iter()
            .zip(answers)
            .map(|(kind, answer)| {
                let missing = || WorkloadError::NotFound {
                    what: format!("{}/web", kind.resource()),
                    namespace: "dev".into(),
                };
                (kind, answer.ok_or_else(missing))
            })
            .collect()
    }

    #[test]
    fn a_name_is_read_with_its_kind_only_if_given() {
        assert_eq!(name("web").kind, None);
        assert_eq!(name("sts/web").kind, Some(WorkloadKind::StatefulSet));
        assert_eq!(name("sts/web").to_string(), "statefulset/web");
        assert_eq!(name("ds/web").to_string(), "daemonset/web");
        assert!("cronjob/web".parse::<WorkloadName>().is_err());
        assert!("Web".parse::<WorkloadName>().is_err());
    }

    #[test]
    fn a_bare_name_is_the_one_kind_that_has_it() {
        let chosen = name("web")
            .choose("dev", found([None, Some(false), None, None, None]))
            .expect("one");
        assert_eq!(chosen.to_string(), "statefulset/web");
        let chosen = name("web")
            .choose("dev", found([None, None, None, Some(false), None]))
            .expect("one");
        assert_eq!(chosen.to_string(), "daemonset/web");
        let chosen = name("web")
            .choose("dev", found([None, None, None, None, Some(false)]))
            .expect("one");
        assert_eq!(chosen.to_string(), "rollout/web");
    }

    #[test]
    fn a_deployments_own_replicaset_does_not_count() {
        let chosen = name("web")
            .choose("dev", found([Some(false), None, Some(true), None, None]))
            .expect("one");
        assert_eq!(chosen.to_string(), "deployment/web");
    }

    #[test]
    fn two_kinds_of_one_name_ask_which() {
        let asked = name("web")
            .choose("dev", found([Some(false), Some(false), None, None, None]))
            .expect_err("two");
        assert_eq!(
            asked.to_string(),
            "web names a deployment and a statefulset in namespace dev: say which, as \
             deployment/web or statefulset/web"
        );
    }

    #[test]
    fn none_found_says_which_kinds_could_not_be_read() {
        let mut answers = found([None, None, None, None, None]);
        answers[2].1 = Err(WorkloadError::Forbidden {
            verb: "get",
            resource: "replicasets",
            namespace: "dev".into(),
        });
        let refused = name("web").choose("dev", answers).expect_err("none");
        assert_eq!(
            refused.to_string(),
            "no deployment, statefulset, replicaset, daemonset or rollout named web in namespace \
             dev (not allowed to get replicasets there)"
        );
    }
}
