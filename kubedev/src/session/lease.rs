//! Session leases: one `coordination.k8s.io/v1` Lease per run of a plugin, taken before the
//! session changes anything and renewed by tunneld while the session lives. A session whose
//! lease has run out (its machine died, slept or lost the cluster for longer than the lease)
//! is restored by the next run of any plugin in the namespace ([`super::reclaim_expired`]).
//!
//! A Lease object rather than an expiry in the workload's record: renewing it every few
//! seconds leaves the workload, and everyone watching it (controllers, GitOps tools),
//! untouched, and cannot conflict with sessions joining or leaving it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;

use super::SessionError;
use crate::workload::WorkloadError;

/// How long a lease lasts unless `--lease` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The shortest lease a session may have: tunneld renews it three times per lifetime.
pub const SHORTEST_LEASE: Duration = Duration::from_secs(3);

/// The longest wait between two renewals, whatever the lifetime.
const LONGEST_RENEW_PERIOD: Duration = Duration::from_secs(10);

/// The resource, as `kubectl auth can-i` names it.
const RESOURCE: &str = "leases.coordination.k8s.io";
const NAME_PREFIX: &str = "kubedev-";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "kubedev";
const SESSION_ANNOTATION: &str = "kubedev.io/session-name";
const WORKLOAD_ANNOTATION: &str = "kubedev.io/workload";
const HOST_ANNOTATION: &str = "kubedev.io/host";
const USER_ANNOTATION: &str = "kubedev.io/user";
/// Set by the run that restores a session whose lease ran out: who did it.
const RECLAIMED_BY_ANNOTATION: &str = "kubedev.io/reclaimed-by";

/// Who holds a session: the run of the plugin, and the user and machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// The run of the plugin (see [`super::Record::owner`]).
    pub owner: String,
    /// The machine's host name.
    pub host: String,
    /// The user running the plugin.
    pub user: String,
}

impl Holder {
    /// Run `owner` of a plugin on this machine, by this user.
    pub fn here(owner: &str) -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let user = super::naming::user_name().unwrap_or_else(|| "unknown".into());
        Self {
            owner: owner.to_owned(),
            host,
            user,
        }
    }

    /// Whether `other` is the same user on the same machine (whichever run).
    pub fn same_user_and_host(&self, other: &Holder) -> bool {
        self.user == other.user && self.host == other.host
    }

    /// `user@host`, as `list` shows it.
    pub fn describe(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

/// A session's lease as the cluster holds it.
#[derive(Debug, Clone)]
pub struct SessionLease {
    /// The session's name.
    pub session: String,
    /// The session's workload (`deployment/web`).
    pub workload: String,
    /// Who holds it.
    pub holder: Holder,
    /// When it runs out unless renewed.
    pub ends: Timestamp,
    object: Lease,
}

impl SessionLease {
    pub(super) fn from_object(object: Lease) -> Option<Self> {
        let annotations = object.metadata.annotations.clone().unwrap_or_default();
        let spec = object.spec.as_ref()?;
        let owner = spec.holder_identity.clone()?;
        let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
        let lifetime = SignedDuration::from_secs(spec.lease_duration_seconds?.into());
        let annotation = |key: &str| annotations.get(key).cloned().unwrap_or_default();
        Some(Self {
            session: annotation(SESSION_ANNOTATION),
            workload: annotation(WORKLOAD_ANNOTATION),
            holder: Holder {
                owner,
                host: annotation(HOST_ANNOTATION),
                user: annotation(USER_ANNOTATION),
            },
            ends: renewed.checked_add(lifetime).ok()?,
            object,
        })
    }

    /// The run whose session this lease covers (which its name carries, whoever holds it
    /// now).
    pub fn session_owner(&self) -> Option<&str> {
        self.object
            .metadata
            .name
            .as_deref()?
            .strip_prefix(NAME_PREFIX)
    }

    /// How long it lasts unless renewed: never less than [`SHORTEST_LEASE`], so a lease
    /// written without a duration is not taken for run out the moment it is seen.
    pub fn lifetime(&self) -> Duration {
        let seconds = self
            .object
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds);
        let given = Duration::from_secs(seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(0));
        given.max(SHORTEST_LEASE)
    }

    /// Names this lease among every cluster's: namespace, name and uid.
    pub(super) fn key(&self) -> String {
        let metadata = &self.object.metadata;
        format!(
            "{}/{}/{}",
            metadata.namespace.as_deref().unwrap_or_default(),
            metadata.name.as_deref().unwrap_or_default(),
            metadata.uid.as_deref().unwrap_or_default()
        )
    }

    /// Its version, which every renewal changes.
    pub(super) fn version(&self) -> &str {
        self.object
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    }
}

/// How often tunneld renews a lease of `lifetime`: three times per lifetime, at least every
/// 10 s.
pub fn renew_period(lifetime: Duration) -> Duration {
    (lifetime / 3).min(LONGEST_RENEW_PERIOD)
}

fn lease_name(owner: &str) -> String {
    format!("{NAME_PREFIX}{owner}")
}

fn leases(client: &kube::Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client.clone(), namespace)
}

fn api_error(err: kube::Error, verb: &'static str, namespace: &str) -> SessionError {
    WorkloadError::from_api(err, verb, RESOURCE, namespace).into()
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Takes the lease of `holder`'s session `session` on `workload`, lasting `lifetime`
/// unless renewed.
pub async fn take_lease(
    client: &kube::Client,
    namespace: &str,
    holder: &Holder,
    session: &str,
    workload: &str,
    lifetime: Duration,
) -> Result<(), SessionError> {
    let now = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&holder.owner)),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (SESSION_ANNOTATION.to_owned(), session.to_owned()),
                (WORKLOAD_ANNOTATION.to_owned(), workload.to_owned()),
                (HOST_ANNOTATION.to_owned(), holder.host.clone()),
                (USER_ANNOTATION.to_owned(), holder.user.clone()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.owner.clone()),
            lease_duration_seconds: Some(seconds(lifetime)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    };
    leases(client, namespace)
        .create(&PostParams::default(), &lease)
        .await
        .map_err(|err| api_error(err, "create", namespace))?;
    Ok(())
}

/// What renewing a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still this run's; it lasts another lifetime.
    Renewed,
    /// Gone, or taken by another run (`by`, `user@host`, when it said) that restored the
    /// session after the lease ran out.
    Lost {
        /// Who restored it, if known.
        by: Option<String>,
    },
}

/// Renews run `owner`'s lease for another lifetime, unless it is no longer its own.
pub async fn renew_lease(
    client: &kube::Client,
    namespace: &str,
    owner: &str,
) -> Result<Renewal, SessionError> {
    let api = leases(client, namespace);
    let name = lease_name(owner);
    loop {
        let Some(mut lease) = api
            .get_opt(&name)
            .await
            .map_err(|err| api_error(err, "get", namespace))?
        else {
            return Ok(Renewal::Lost { by: None });
        };
        let by = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RECLAIMED_BY_ANNOTATION))
            .cloned();
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(Renewal::Lost { by });
        };
        if spec.holder_identity.as_deref() != Some(owner) {
            return Ok(Renewal::Lost { by });
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        // The write carries the resourceVersion read: a run taking the lease over meanwhile
        // makes it conflict, and the next read shows the new holder.
        match api.replace(&name, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(Renewal::Renewed),
            Err(kube::Error::Api(status)) if status.is_conflict() => {}
            Err(err) => return Err(api_error(err, "update", namespace)),
        }
    }
}

/// Deletes run `owner`'s lease: its session has ended. Gone already is fine.
pub async fn end_lease(
    client: &kube::Client,
    namespace: &str,
    owner: &str,
) -> Result<(), SessionError> {
    match leases(client, namespace)
        .delete(&lease_name(owner), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(err) => Err(api_error(err, "delete", namespace)),
    }
}

/// Who holds run `owner`'s session, from its lease, if it has one that can be read.
pub async fn holder_of(client: &kube::Client, namespace: &str, owner: &str) -> Option<Holder> {
    lease_holder(client, namespace, owner).await.ok()?
}

/// Who holds run `owner`'s session, from its lease: none if it has none (or one unreadable
/// as a session's), an error if the lease cannot be read.
pub async fn lease_holder(
    client: &kube::Client,
    namespace: &str,
    owner: &str,
) -> Result<Option<Holder>, SessionError> {
    let lease = leases(client, namespace)
        .get_opt(&lease_name(owner))
        .await
        .map_err(|err| api_error(err, "get", namespace))?;
    Ok(lease
        .and_then(SessionLease::from_object)
        .map(|lease| lease.holder))
}

/// The sessions' leases in `namespace`.
pub async fn leases_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<SessionLease>, SessionError> {
    let listed = leases(client, namespace)
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await
        .map_err(|err| api_error(err, "list", namespace))?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(SessionLease::from_object)
        .collect())
}

/// Takes over `lease`, as read, for `by` to restore its session: it must have run out
/// (a renewal since makes the write conflict). Holds it for `restore_time`. Returns whether
/// this run has it (another may have been quicker, or the holder renewed).
pub(super) async fn take_over(
    client: &kube::Client,
    namespace: &str,
    lease: &SessionLease,
    by: &Holder,
    restore_time: Duration,
) -> Result<bool, SessionError> {
    let mut object = lease.object.clone();
    let name = object.metadata.name.clone().unwrap_or_default();
    object
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(RECLAIMED_BY_ANNOTATION.to_owned(), by.describe());
    let now = MicroTime(Timestamp::now());
    let spec = object.spec.get_or_insert_default();
    spec.holder_identity = Some(by.owner.clone());
    spec.lease_duration_seconds = Some(seconds(restore_time));
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    match leases(client, namespace)
        .replace(&name, &PostParams::default(), &object)
        .await
    {
        Ok(_) => Ok(true),
        // Renewed, taken over or ended since it was read.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(false),
        Err(err) => Err(api_error(err, "update", namespace)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_three_times_a_lifetime_and_at_least_every_ten_seconds() {
        assert_eq!(renew_period(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(renew_period(DEFAULT_LEASE), Duration::from_secs(10));
        assert_eq!(
            renew_period(Duration::from_secs(3600)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_lease_reads_back_with_its_holder_and_end() {
        let renewed: Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
        let object = Lease {
            metadata: ObjectMeta {
                name: Some(lease_name("run1")),
                annotations: Some(BTreeMap::from([
                    (SESSION_ANNOTATION.to_owned(), "web".to_owned()),
                    (WORKLOAD_ANNOTATION.to_owned(), "deployment/web".to_owned()),
                    (HOST_ANNOTATION.to_owned(), "laptop".to_owned()),
                    (USER_ANNOTATION.to_owned(), "alice".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("run1".into()),
                lease_duration_seconds: Some(60),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        };
        let lease = SessionLease::from_object(object).expect("a session lease");
        assert_eq!(lease.holder.describe(), "alice@laptop");
        assert_eq!(lease.session_owner(), Some("run1"));
        assert_eq!(lease.ends, "2026-12-01T10:01:00Z".parse().expect("time"));
        assert_eq!(lease.lifetime(), Duration::from_secs(60));
    }

    #[test]
    fn a_lease_without_a_holder_or_times_is_not_a_session_lease() {
        assert!(SessionLease::from_object(Lease::default()).is_none());
    }
}
