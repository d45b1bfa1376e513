//! While a foreground session lasts: telling the user when tunneld loses the links to the
//! session's agents (the cluster out of reach, the API server restarting) and when it has
//! them again.

use std::path::PathBuf;
use std::time::Duration;

use kubedev::control::SessionKey;
use kubedev::mode::Mode;
use kubedev::tunneld;

/// How often tunneld is asked how many agents it links to.
const LINK_CHECK_PERIOD: Duration = Duration::from_secs(2);

/// The session whose links are watched.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    pub(super) socket: PathBuf,
    pub(super) session: SessionKey,
    pub(super) mode: Mode,
    /// The pods the workload ran when the session started.
    pub(super) wanted: usize,
}

/// Reports every change in the number of linked agents, for as long as it is polled.
pub(super) async fn report_links(watched: Watched) {
    let mut last = watched.wanted;
    loop {
        tokio::time::sleep(LINK_CHECK_PERIOD).await;
        // A tunneld that does not answer is the hold's to report.
        let Ok(status) = tunneld::status(&watched.socket).await else {
            continue;
        };
        let linked = status
            .sessions
            .iter()
            .find(|s| s.key() == watched.session)
            .map_or(0, |s| s.linked_pods.len());
        if let Some(change) = describe_change(&watched, last, linked) {
            eprintln!("{change}");
        }
        last = linked;
    }
}

/// What to tell the user when the linked agents go from `before` to `now`, if anything.
fn describe_change(watched: &Watched, before: usize, now: usize) -> Option<String> {
    let (session, mode) = (&watched.session.name, watched.mode);
    if before == now {
        return None;
    }
    Some(if now == 0 {
        let meanwhile = match mode {
            Mode::Intercept => "intercepted requests go to the app",
            Mode::Replace => "connections to the replaced container are refused",
            Mode::Ingest => "the environment and volumes are out of reach",
        };
        format!(
            "lost the links to the agents of session {session} (is the cluster out of \
             reach?); {meanwhile} until tunneld links again"
        )
    } else if before == 0 {
        format!("linked again to the agents of session {session} ({now} linked)")
    } else {
        // Counted as they are: the workload's replicas can change during the session, and
        // a rollout links new pods before old ones go.
        let agents = if now == 1 { "agent" } else { "agents" };
        format!("{now} {agents} of session {session} linked, {before} before")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(mode: Mode) -> Watched {
        Watched {
            socket: PathBuf::new(),
            session: SessionKey::new("shop", "web"),
            mode,
            wanted: 2,
        }
    }

    #[test]
    fn losing_and_regaining_the_links_is_told_once_each() {
        let intercept = watched(Mode::Intercept);
        assert_eq!(describe_change(&intercept, 2, 2), None);
        let lost = describe_change(&intercept, 2, 0).expect("told");
        assert!(
            lost.starts_with("lost the links to the agents of session web")
                && lost.contains("intercepted requests go to the app until tunneld links again"),
            "{lost}"
        );
        assert_eq!(
            describe_change(&intercept, 0, 2).as_deref(),
            Some("linked again to the agents of session web (2 linked)")
        );
        assert_eq!(
            describe_change(&intercept, 2, 1).as_deref(),
            Some("1 agent of session web linked, 2 before")
        );
        let replace = describe_change(&watched(Mode::Replace), 1, 0).expect("told");
        assert!(replace.contains("connections to the replaced container are refused"));
    }
}
