//! The control socket's requests: each client connection brings one [`ControlRequest`] and
//! gets its reply, but for a hold ([`super::holds`]), an SFTP session on the app's volumes
//! and a command's own network ([`super::command_network`]), which keep the connection.

use std::sync::Arc;
use std::time::Duration;

use kubedev::control::{
    AgentOwner, ControlReply, ControlRequest, DaemonStatus, PodPort, ProxyChoices, SessionKey,
    SessionStatus,
};
use kubedev::tunneld::ControlStream;
use kubedev_protocol::WiretapCounts;
use kubedev_protocol::codec::{read_message, write_message};
use tokio_util::sync::CancellationToken;

use super::{Daemon, Tunneled};
use crate::agents::AgentSelector;
use crate::agents::striped::{self, Flow};
use crate::to_pod;

/// How long a status request waits for an agent's wiretap counts.
const COUNTS_WAIT: Duration = Duration::from_secs(2);

/// How many round trips a `TimeLink` request times, and how long each may take.
const TIMED_ROUND_TRIPS: usize = 5;
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);

/// How long an environment request waits for a session's agent to be linked.
const ENVIRONMENT_WAIT: Duration = Duration::from_secs(30);

impl Daemon {
    pub(super) async fn serve_client(
        self: &Arc<Self>,
        mut stream: ControlStream,
    ) -> anyhow::Result<()> {
        let request: ControlRequest = read_message(&mut stream).await?;
        let reply = match request {
            ControlRequest::AddSession {
                name,
                namespace,
                agents,
                token,
                forwards,
                proxy,
                to_pod,
                owner,
            } => {
                let session = SessionKey::new(&namespace, &name);
                let selector = AgentSelector {
                    owner,
                    wiretap: format!("{namespace}/{name}/{}", std::process::id()),
                    namespace,
                    labels: agents,
                    token,
                    forwards: forwards.into(),
                    local: Arc::default(),
                };
                self.add_session(session, selector, &proxy, &to_pod).await
            }
            ControlRequest::RemoveSession {
                session,
                owner,
                by_leave,
            } => (self.remove_own_session(&session, owner.as_ref(), by_leave)).await,
            ControlRequest::Status => ControlReply::Status(Box::new(self.status().await)),
            ControlRequest::TimeLink => self.time_link().await,
            ControlRequest::Environment { session } => self.environment(&session).await,
            ControlRequest::OpenFiles { session } => {
                return self.serve_files(&session, stream).await;
            }
            ControlRequest::Hold(held) => return self.hold(held, stream).await,
            ControlRequest::Release => ControlReply::Failed {
                reason: "release without a hold".into(),
            },
            #[cfg(target_os = "linux")]
            ControlRequest::ServeCommandNetwork { session } => {
                return self.serve_command_network(&session, stream).await;
            }
            #[cfg(not(target_os = "linux"))]
            ControlRequest::ServeCommandNetwork { .. } => ControlReply::Failed {
                reason: "this system has no network namespaces".into(),
            },
        };
        write_message(&mut stream, &reply).await?;
        Ok(())
    }

    async fn add_session(
        &self,
        session: SessionKey,
        selector: AgentSelector,
        proxy: &ProxyChoices,
        to_pod: &[PodPort],
    ) -> ControlReply {
        let mut sessions = self.sessions.lock().await;
        if sessions.contains_key(&session) {
            return ControlReply::Failed {
                reason: format!(
                    "a session named {:?} already exists in namespace {}",
                    session.name, session.namespace
                ),
            };
        }
        let to_pod = match to_pod::bind(to_pod).await {
            Ok(bound) => bound,
            Err(reason) => return ControlReply::Failed { reason },
        };
        let stop = CancellationToken::new();
        let wiretap = selector
            .forwards
            .iter()
            .any(|forward| forward.wiretap)
            .then(|| selector.wiretap.clone());
        let local = selector.local.clone();
        let owner = selector.owner.clone();
        self.pool
            .follow(self.client.clone(), session.clone(), selector, stop.clone());
        to_pod::serve(to_pod, session.clone(), self.pool.clone(), &stop);
        tracing::info!("session {session} added");
        let namespace = session.namespace.clone();
        let tunneled = Tunneled {
            wiretap,
            local,
            stop,
            owner,
        };
        sessions.insert(session, tunneled);
        drop(sessions);
        self.sessions_changed.notify_waiters();
        let new_choices = self.proxy.lock().await.merge(proxy);
        let cluster = self.learn_cluster(&namespace).await;
        self.start_network(cluster, new_choices).await;
        ControlReply::Done
    }

    /// Turns the client's connection into an SFTP session on the app's volumes, with one of
    /// the session's agents, until either side closes.
    async fn serve_files(
        &self,
        session: &SessionKey,
        mut client: ControlStream,
    ) -> anyhow::Result<()> {
        let Some(link) = self.pool.pick(Some(session), ENVIRONMENT_WAIT).await else {
            let reason = format!("no agent of session {session} is linked");
            return Ok(write_message(&mut client, &ControlReply::Failed { reason }).await?);
        };
        let files = match striped::open(&self.pool, &link, Flow::Files).await {
            Ok(files) => files,
            Err(err) => {
                let reason = format!("volumes of session {session}: {err}");
                return Ok(write_message(&mut client, &ControlReply::Failed { reason }).await?);
            }
        };
        write_message(&mut client, &ControlReply::Done).await?;
        Ok(crate::files_relay::relay(client, files).await?)
    }

    async fn environment(&self, session: &SessionKey) -> ControlReply {
        let Some(link) = self.pool.pick(Some(session), ENVIRONMENT_WAIT).await else {
            return ControlReply::Failed {
                reason: format!("no agent of session {session} is linked"),
            };
        };
        match link.environment().await {
            Ok(variables) => ControlReply::Environment { variables },
            Err(err) => ControlReply::Failed {
                reason: format!("environment of session {session}: {err}"),
            },
        }
    }

    /// Times round trips to one linked agent through its link: the port-forward's, the
    /// API server's and the agent's own time together.
    async fn time_link(&self) -> ControlReply {
        let Some((pod, link)) = self.pool.any_link().await else {
            return ControlReply::Failed {
                reason: "no agent is linked".into(),
            };
        };
        let mut times = Vec::with_capacity(TIMED_ROUND_TRIPS);
        for _ in 0..TIMED_ROUND_TRIPS {
            let started = std::time::Instant::now();
            if let Err(err) = link.ping(ROUND_TRIP_LIMIT).await {
                return ControlReply::Failed {
                    reason: format!("the agent in pod {pod} did not answer: {err}"),
                };
            }
            times.push(started.elapsed());
        }
        times.sort_unstable();
        ControlReply::RoundTrip {
            pod,
            median: times[times.len() / 2],
        }
    }

    /// Removes `session` if its agent pods are `owner`'s (any, for none): a run that
    /// failed to add its session must not remove the namesake another run added. For
    /// `by_leave`, the run that holds it here, if one does, is told first.
    async fn remove_own_session(
        &self,
        session: &SessionKey,
        owner: Option<&AgentOwner>,
        by_leave: bool,
    ) -> ControlReply {
        let sessions = self.sessions.lock().await;
        let theirs = sessions.get(session).is_some_and(|tunneled| {
            owner.is_some_and(|owner| tunneled.owner.as_ref() != Some(owner))
        });
        drop(sessions);
        if theirs {
            tracing::info!("session {session} is another run's: left as it is");
            return ControlReply::Done;
        }
        if by_leave {
            self.tell_holder(session, "`leave` ended it from another command")
                .await;
        }
        self.remove_session(session).await
    }

    /// Tells the run that holds `session` here, if one does, that it is over: `why`.
    async fn tell_holder(&self, session: &SessionKey, why: &str) {
        let leases = self.leases.lock().await;
        for keeping in leases
            .values()
            .filter(|keeping| keeping.session == *session)
        {
            keeping.mark_ending();
            keeping.lost_tx.send_replace(Some(why.to_owned()));
        }
    }

    pub(super) async fn remove_session(&self, session: &SessionKey) -> ControlReply {
        let Some(tunneled) = self.sessions.lock().await.remove(session) else {
            return ControlReply::Failed {
                reason: format!(
                    "no session named {:?} in namespace {}",
                    session.name, session.namespace
                ),
            };
        };
        tunneled.stop.cancel();
        self.pool.forget(session).await;
        // Ended on purpose: its lease goes with it (a detached session's renewals end here).
        self.leases.lock().await.retain(|_, keeping| {
            if keeping.session != *session {
                return true;
            }
            keeping.mark_ending();
            !keeping.is_detached()
        });
        tracing::info!("session {session} removed");
        self.sessions_changed.notify_waiters();
        ControlReply::Done
    }

    /// A wiretap's counts over every pod it is linked to; a pod that does not answer in
    /// time is left out.
    async fn wiretap_counts(&self, session: &SessionKey, id: &str) -> WiretapCounts {
        let asked =
            self.pool
                .link_per_pod(session)
                .await
                .into_iter()
                .map(|link| async move {
                    tokio::time::timeout(COUNTS_WAIT, link.wiretap_counts(id)).await
                });
        let mut total = WiretapCounts::default();
        for counts in futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .flatten()
        {
            total += counts;
        }
        total
    }

    async fn status(&self) -> DaemonStatus {
        let sessions = self.sessions.lock().await;
        let mut listed = Vec::new();
        for (session, tunneled) in sessions.iter() {
            let wiretap = match &tunneled.wiretap {
                Some(id) => Some(self.wiretap_counts(session, id).await),
                None => None,
            };
            listed.push(SessionStatus {
                name: session.name.clone(),
                namespace: session.namespace.clone(),
                linked_pods: self.pool.linked_pods(session).await,
                wiretap,
            });
        }
        listed.sort_by_key(SessionStatus::key);
        let network = self.network.lock().await.status();
        DaemonStatus {
            pid: std::process::id(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            network,
            proxy: self.proxy_status.get().cloned(),
            sessions: listed,
        }
    }
}
