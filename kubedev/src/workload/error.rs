//! [`WorkloadError`]: what can go wrong reading and changing a workload, its pods and its
//! Services, in terms a user can act on.

/// A failed call to the Kubernetes API about a workload, its pods or its Services, or a
/// workload kubedev cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The user's role lacks a permission; the message names it, the way
    /// `kubectl auth can-i` asks about it.
    #[error(
        "not allowed to {verb} {resource} in namespace {namespace}: ask for that permission \
         (check with `kubectl auth can-i {verb} {resource} -n {namespace}`)"
    )]
    Forbidden {
        /// The verb refused (`get`, `update`, `list`, ...).
        verb: &'static str,
        /// The resource (`deployments`, `services`, `pods`, ...).
        resource: &'static str,
        /// Where.
        namespace: String,
    },
    /// `what` (`deployment/web`, `service web`) does not exist.
    #[error("{what} not found in namespace {namespace}")]
    NotFound {
        /// The object, as a user names it.
        what: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// No workload of any kind has the bare name given.
    #[error(
        "no deployment, statefulset, replicaset, daemonset or rollout named {name} in namespace \
         {namespace}{}",
        unreadable_note(unreadable)
    )]
    NoneNamed {
        /// The name.
        name: String,
        /// Where it was looked for.
        namespace: String,
        /// The resources the user may not read, where it could be.
        unreadable: Vec<&'static str>,
    },
    /// Workloads of several kinds have the bare name given.
    #[error(
        "{name} names {} in namespace {namespace}: say which, as {}",
        join(kinds, |kind| format!("a {}", kind.resource()), "and"),
        join(kinds, |kind| format!("{}/{name}", kind.resource()), "or")
    )]
    Ambiguous {
        /// The name.
        name: String,
        /// Where.
        namespace: String,
        /// The kinds that have it.
        kinds: Vec<super::WorkloadKind>,
    },
    /// The object changed between the read and the write (HTTP 409): read it again and
    /// redo the change ([`super::retry_on_conflict`] does).
    #[error("{verb} {resource} in namespace {namespace}: it changed meanwhile")]
    Conflict {
        /// The verb (`update`).
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// Where.
        namespace: String,
        /// The API server's answer.
        source: Box<kube::Error>,
    },
    /// Any other failure of the call.
    #[error("{verb} {resource} in namespace {namespace}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// Where.
        namespace: String,
        /// Why.
        source: Box<kube::Error>,
    },
    /// The workload lacks what every Deployment, StatefulSet and ReplicaSet has.
    #[error("{workload} {lacks}")]
    Malformed {
        /// The workload.
        workload: String,
        /// e.g. "has no pod template".
        lacks: &'static str,
    },
    /// A pod kubedev leaves as it is, or could not delete and create again: `why` says.
    #[error("{pod} {why}")]
    PodRefused {
        /// The pod (`pod/web`).
        pod: String,
        /// Why, and what to do.
        why: String,
    },
    /// The pod template does not read as one.
    #[error("{workload} has an unreadable pod template")]
    Template {
        /// The workload.
        workload: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// " (not allowed to get RESOURCES there)", or nothing when every kind was read.
fn unreadable_note(unreadable: &[&str]) -> String {
    if unreadable.is_empty() {
        return String::new();
    }
    format!(
        " (not allowed to get {} there)",
        join(unreadable, |resource| (*resource).to_owned(), "or")
    )
}

/// `items` as `a, b and c` (`word` between the last two).
fn join<T>(items: &[T], show: impl Fn(&T) -> String, word: &str) -> String {
    let shown: Vec<String> = items.iter().map(show).collect();
    match shown.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} {word} {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl WorkloadError {
    /// Classifies an error of the API call `verb` `resource` in `namespace`.
    pub fn from_api(
        err: kube::Error,
        verb: &'static str,
        resource: &'static str,
        namespace: &str,
    ) -> Self {
        let namespace = namespace.to_owned();
        match &err {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                verb,
                resource,
                namespace,
            },
            kube::Error::Api(status) if status.is_conflict() => Self::Conflict {
                verb,
                resource,
                namespace,
                source: Box::new(err),
            },
            _ => Self::Api {
                verb,
                resource,
                namespace,
                source: Box::new(err),
            },
        }
    }

    /// Whether redoing the read-change-write may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Whether the API server has no such resource at all (a CRD not installed).
    pub fn is_not_served(&self) -> bool {
        matches!(self, Self::Api { source, .. }
            if matches!(source.as_ref(), kube::Error::Api(status) if status.code == 404))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        let mut status = kube::core::Status::failure("refused", reason);
        status.code = code;
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn a_refusal_names_the_permission_to_ask_for() {
        let err = WorkloadError::from_api(api_error(403, "Forbidden"), "patch", "services", "shop");
        assert!(matches!(err, WorkloadError::Forbidden { .. }));
        assert_eq!(
            err.to_string(),
            "not allowed to patch services in namespace shop: ask for that permission \
             (check with `kubectl auth can-i patch services -n shop`)"
        );
    }

    #[test]
    fn a_conflict_is_told_apart_from_other_failures() {
        let conflict =
            WorkloadError::from_api(api_error(409, "Conflict"), "update", "deployments", "shop");
        assert!(conflict.is_conflict());
        let other = WorkloadError::from_api(
            api_error(500, "InternalError"),
            "update",
            "deployments",
            "shop",
        );
        assert!(!other.is_conflict());
        assert_eq!(other.to_string(), "update deployments in namespace shop");
    }
}
