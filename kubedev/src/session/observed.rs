//! Leases as this machine has seen them. A lease has run out when this machine has seen it
//! unchanged for its whole duration, by this machine's clock, as client-go's leader
//! election decides: the holder's renew time is never compared with the local clock, so a
//! teammate whose clock runs a minute ahead reclaims nothing early. The observations are
//! kept in a file of the user's own between runs of the plugins.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::lease::SessionLease;
use crate::private_files::{PrivateFileError, read_own, write_own};

/// When this machine first saw one version of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    /// The lease's resourceVersion, which every renewal changes.
    version: String,
    /// Milliseconds since the epoch, by this machine's clock.
    since_ms: u64,
}

/// What this machine has seen of the sessions' leases (see the module's comment).
#[derive(Debug, Default)]
pub struct LeaseObservations {
    file: Option<PathBuf>,
    seen: BTreeMap<String, Seen>,
}

impl LeaseObservations {
    /// Observations kept nowhere: every run starts afresh.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The observations kept in `file` (none yet, or unreadable: afresh).
    pub fn load(file: PathBuf) -> Self {
        let seen = match read_own(&file) {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|err| {
                tracing::warn!("{}: unreadable, starting afresh: {err}", file.display());
                BTreeMap::new()
            }),
            Ok(None) => BTreeMap::new(),
            Err(err) => {
                tracing::warn!("{}: {err}", file.display());
                BTreeMap::new()
            }
        };
        Self {
            file: Some(file),
            seen,
        }
    }

    /// Keeps the observations in their file, if they have one.
    pub fn save(&self) -> Result<(), PrivateFileError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        // Maps of strings and numbers only: serializing cannot fail.
        let text = serde_json::to_string(&self.seen).expect("observations are plain JSON");
        write_own(file, &text)
    }

    /// How long this machine has seen `lease` as it is now, at `now`; a lease new to it,
    /// or changed since, is seen from `now` on.
    pub(super) fn unchanged_for(&mut self, lease: &SessionLease, now: SystemTime) -> Duration {
        let now_ms = millis(now);
        let version = lease.version().to_owned();
        let seen = self
            .seen
            .entry(lease.key())
            .and_modify(|seen| {
                if seen.version != version {
                    *seen = Seen {
                        version: version.clone(),
                        since_ms: now_ms,
                    };
                }
            })
            .or_insert_with(|| Seen {
                version: version.clone(),
                since_ms: now_ms,
            });
        Duration::from_millis(now_ms.saturating_sub(seen.since_ms))
    }

    /// Records that this machine saw `lease` as it is now already at `since`.
    pub fn seen_since(&mut self, lease: &SessionLease, since: SystemTime) {
        let seen = Seen {
            version: lease.version().to_owned(),
            since_ms: millis(since),
        };
        self.seen.insert(lease.key(), seen);
    }

    /// Forgets the leases of `namespace` not in `present`: they are gone.
    pub(super) fn forget_gone(&mut self, namespace: &str, present: &[SessionLease]) {
        let prefix = format!("{namespace}/");
        let keys: Vec<String> = present.iter().map(SessionLease::key).collect();
        self.seen
            .retain(|key, _| !key.starts_with(&prefix) || keys.contains(key));
    }
}

fn millis(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;

    fn lease(version: &str) -> SessionLease {
        let object: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubedev-run-a", "namespace": "shop", "uid": "u1",
                         "resourceVersion": version},
            "spec": {"holderIdentity": "run-a", "leaseDurationSeconds": 60,
                     "renewTime": "2020-01-01T00:00:00.000000Z"}
        }))
        .expect("lease");
        SessionLease::from_object(object).expect("a session lease")
    }

    #[test]
    fn a_lease_counts_as_unchanged_only_since_this_machine_saw_its_version() {
        let mut observations = LeaseObservations::in_memory();
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Renewed in 2020 by its holder's clock: to this machine it is simply new.
        assert_eq!(
            observations.unchanged_for(&lease("1"), start),
            Duration::ZERO
        );
        let later = start + Duration::from_secs(45);
        assert_eq!(
            observations.unchanged_for(&lease("1"), later),
            Duration::from_secs(45)
        );
        // A renewal starts the count again.
        assert_eq!(
            observations.unchanged_for(&lease("2"), later),
            Duration::ZERO
        );
    }

    #[test]
    fn observations_outlive_the_run_in_their_file_and_forget_gone_leases() {
        let file =
            std::env::temp_dir().join(format!("kubedev-observed-{}.json", std::process::id()));
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut observations = LeaseObservations::load(file.clone());
        observations.unchanged_for(&lease("1"), start);
        observations.save().expect("saved");

        let mut again = LeaseObservations::load(file.clone());
        let later = start + Duration::from_secs(61);
        assert_eq!(
            again.unchanged_for(&lease("1"), later),
            Duration::from_secs(61)
        );
        again.forget_gone("shop", &[]);
        assert_eq!(again.unchanged_for(&lease("1"), later), Duration::ZERO);

        std::fs::write(&file, "not json").expect("write");
        assert!(LeaseObservations::load(file.clone()).seen.is_empty());
        std::fs::remove_file(file).expect("removed");
    }
}
