//! The sessions in a namespace, and restoring those whose lease has run out: what every run
//! of a plugin does first, so that a session whose machine died is undone by the next
//! kubedev command anyone runs there.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::SessionError;
use super::connect::{ConnectPod, connects_in, end_connect};
use super::lease::{Holder, SessionLease, end_lease, leases_in, take_over};
use super::leave::leave;
use super::observed::LeaseObservations;
use super::record::{Record, record_of};
use super::tokens::{TokensSecret, keep_only};
use crate::workload::retry_on_conflict;
use crate::workload::{Workload, restore_expired_gaps};

/// Every workload in `namespace` with a session on it, and its record.
pub async fn sessions_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<(Workload, Record)>, SessionError> {
    sessions_of(client, Some(namespace)).await
}

/// The sessions recorded on workloads in every namespace (a role with cluster-wide `list`).
pub async fn sessions_everywhere(
    client: &kube::Client,
) -> Result<Vec<(Workload, Record)>, SessionError> {
    sessions_of(client, None).await
}

async fn sessions_of(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<(Workload, Record)>, SessionError> {
    let mut found = Vec::new();
    for workload in Workload::list_every_kind(client, namespace).await? {
        if workload.is_controlled() {
            continue;
        }
        if let Some(record) = record_of(&workload)? {
            found.push((workload, record));
        }
    }
    Ok(found)
}

/// Creates again the pods whose kubedev run ended between deleting and creating them.
async fn restore_pods_in_gaps(client: &kube::Client, namespace: &str) {
    match restore_expired_gaps(client, namespace).await {
        Ok(pods) => {
            for pod in pods {
                tracing::warn!(
                    "{pod} created again as it was: the kubedev run that deleted it ended \
                     before creating it again"
                );
            }
        }
        Err(err) => tracing::warn!("pods deleted by a kubedev run that ended: {err}"),
    }
}

/// A session whose lease has run out.
#[derive(Debug, Clone)]
pub struct Expired {
    /// The session's name.
    pub session: String,
    /// What it changed: its workload (`deployment/web`), or a connect session's pod
    /// (`pod/kubedev-connect-dev`).
    pub target: String,
    /// Who held it (`user@host`).
    pub holder: String,
    /// How long ago its lease ran out.
    pub ended_ago: Duration,
}

impl Expired {
    /// The session and why it is being restored, in words.
    pub fn describe(&self) -> String {
        format!(
            "session {:?} on {}: its lease ran out {}s ago (held by {})",
            self.session,
            self.target,
            self.ended_ago.as_secs(),
            self.holder
        )
    }
}

/// Restores, as `leave` does, every session in `namespace` whose lease has run out by
/// `observations` (this machine has seen it unchanged for its lifetime; one
/// without a lease is left to `leave`), taking its lease over first so that no two runs
/// restore one session and its holder, if it comes back, learns that it is over; a
/// connect session's pod is deleted. Calls `found` before restoring each; returns what
/// each restore did, in words. Leases whose session is nowhere are deleted.
pub async fn reclaim_expired(
    client: &kube::Client,
    namespace: &str,
    (by, observations): (&Holder, &mut LeaseObservations),
    timeout: Duration,
    mut found: impl FnMut(&Expired),
) -> Result<Vec<(Expired, Result<String, SessionError>)>, SessionError> {
    let (sessions, connects, leases) = futures::try_join!(
        sessions_in(client, namespace),
        connects_in(client, namespace),
        leases_in(client, namespace)
    )?;
    // A session without a lease (its Role has no leases, or it was deleted by hand) is
    // never reclaimed: only `leave` ends it.
    let on_workloads = sessions.iter().flat_map(|(workload, record)| {
        record.holders().filter_map(move |(session, owner)| {
            Some((Claim::OnWorkload { workload, session }, owner?))
        })
    });
    let on_pods = connects
        .iter()
        .filter_map(|pod| Some((Claim::Connect(pod), pod.owner.as_deref()?)));
    let claims: Vec<(Claim<'_>, &str)> = on_workloads.chain(on_pods).collect();
    let now = SystemTime::now();
    observations.forget_gone(namespace, &leases);
    let mut ended_ago = |lease: &SessionLease| {
        let unchanged = observations.unchanged_for(lease, now);
        unchanged.checked_sub(lease.lifetime())
    };
    let ended: Vec<(&SessionLease, Duration)> = leases
        .iter()
        .filter_map(|lease| Some((lease, ended_ago(lease)?)))
        .collect();
    let mut reclaimed = Vec::new();
    for (claim, owner) in &claims {
        let Some(&(lease, ended_ago)) = ended
            .iter()
            .find(|(l, _)| l.session_owner() == Some(*owner))
        else {
            continue;
        };
        if !take_over(client, namespace, lease, by, claim.restore_time(timeout)).await? {
            continue;
        }
        let expired = Expired {
            session: claim.session().to_owned(),
            target: claim.target(),
            holder: lease.holder.describe(),
            ended_ago,
        };
        found(&expired);
        let restored = claim.restore(client, namespace, owner, timeout).await;
        reclaimed.push((expired, restored));
    }
    let claimed: HashSet<&str> = claims.iter().map(|(_, owner)| *owner).collect();
    for (lease, _) in &ended {
        match lease.session_owner() {
            Some(owner) if !claimed.contains(owner) => {
                end_lease(client, namespace, owner).await?;
            }
            _ => {}
        }
    }
    if let Err(err) = sweep_tokens(client, namespace).await {
        tracing::debug!("sweeping the tokens of ended sessions: {err}");
    }
    restore_pods_in_gaps(client, namespace).await;
    Ok(reclaimed)
}

/// Drops the tokens of agents no record holds any more and of runs without a lease (their
/// workload was replaced or deleted under them). The records and leases are listed after
/// the tokens are read: a run stores its token after taking its lease, so a token read is
/// never one whose run is still starting; the write fails if one was added meanwhile.
async fn sweep_tokens(client: &kube::Client, namespace: &str) -> Result<(), SessionError> {
    let tokens = TokensSecret::new(client, namespace);
    retry_on_conflict(|| async {
        let Some(mut secret) = tokens.read().await? else {
            return Ok(());
        };
        let (sessions, leases) =
            futures::try_join!(sessions_in(client, namespace), leases_in(client, namespace))?;
        let recorded = sessions
            .iter()
            .filter_map(|(_, record)| record.token_key.as_deref());
        let leased = leases.iter().filter_map(SessionLease::session_owner);
        let kept: Vec<&str> = recorded.chain(leased).collect();
        if keep_only(&mut secret, &kept) {
            tokens.write(&secret).await?;
        }
        Ok(())
    })
    .await
}

/// What a leased session changed in the cluster.
enum Claim<'a> {
    /// A session recorded on a workload.
    OnWorkload {
        workload: &'a Workload,
        session: &'a str,
    },
    /// A connect session's pod.
    Connect(&'a ConnectPod),
}

impl Claim<'_> {
    fn session(&self) -> &str {
        match self {
            Self::OnWorkload { session, .. } => session,
            Self::Connect(pod) => &pod.session,
        }
    }

    fn target(&self) -> String {
        match self {
            Self::OnWorkload { workload, .. } => workload.reference.to_string(),
            Self::Connect(pod) => format!("pod/{}", pod.pod),
        }
    }

    /// How long the taken-over lease is held: for the restore and the pods' wait, with
    /// room for the calls.
    fn restore_time(&self, timeout: Duration) -> Duration {
        match self {
            Self::OnWorkload { .. } => timeout + timeout / 2,
            Self::Connect(_) => timeout,
        }
    }

    /// Undoes the session of run `owner`; says what was done, in words.
    async fn restore(
        &self,
        client: &kube::Client,
        namespace: &str,
        owner: &str,
        timeout: Duration,
    ) -> Result<String, SessionError> {
        match self {
            Self::OnWorkload { workload, session } => {
                let reference = &workload.reference;
                let left = leave(
                    client,
                    namespace,
                    reference,
                    session,
                    Some(owner),
                    timeout,
                    |_| {},
                )
                .await?;
                Ok(left.describe(session, reference))
            }
            Self::Connect(pod) => {
                end_connect(client, namespace, &pod.session, Some(owner)).await?;
                Ok(format!("connect session {:?} ended", pod.session))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_session_says_whose_it_was_and_since_when() {
        let expired = Expired {
            session: "web".into(),
            target: "deployment/web".into(),
            holder: "alice@laptop".into(),
            ended_ago: Duration::from_secs(42),
        };
        assert_eq!(
            expired.describe(),
            "session \"web\" on deployment/web: its lease ran out 42s ago (held by alice@laptop)"
        );
    }
}
