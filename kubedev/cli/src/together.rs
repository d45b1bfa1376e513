//! Sessions run together (`-f kubedev.yaml`): they start one at a time in the file's
//! order, so that each one's progress reads whole; their commands run once they are all
//! live; and once one ends, however it ends, the others end too.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kubedev_process::signals::StopSignals;

/// What sessions run together share: whose turn it is to start, which went live, and
/// whether they end.
pub(super) struct Together {
    /// Cancelled once one of them ends (detached: once one fails).
    pub(super) ending: CancellationToken,
    /// The index of the session whose turn it is to start.
    next_tx: watch::Sender<usize>,
    /// The names of those that went live, in order.
    live_tx: watch::Sender<Vec<String>>,
    sessions: usize,
    detach: bool,
}

/// One of the sessions run together: the `index`th of the file.
#[derive(Clone, Copy)]
pub(super) struct Member<'a> {
    pub(super) together: &'a Together,
    pub(super) index: usize,
}

impl Together {
    /// For `sessions` sessions, `detach`ed or not.
    pub(super) fn new(sessions: usize, detach: bool) -> Self {
        Self {
            ending: CancellationToken::new(),
            next_tx: watch::Sender::new(0),
            live_tx: watch::Sender::new(Vec::new()),
            sessions,
            detach,
        }
    }

    /// The sessions that went live.
    pub(super) fn live(&self) -> Vec<String> {
        self.live_tx.borrow().clone()
    }

    /// Notes that session `name` went live, and gives the next its turn; says so once
    /// they all are.
    fn went_live(&self, name: &str) {
        self.live_tx.send_modify(|live| live.push(name.to_owned()));
        self.next_tx.send_modify(|next| *next += 1);
        let live = self.live_tx.borrow().len();
        if live == self.sessions && !self.detach {
            let (sessions, are) = if live == 1 {
                ("session is", "it")
            } else {
                ("sessions are", "them")
            };
            eprintln!(
                "the file's {live} {sessions} live; press Ctrl-C to end {are} (they also end \
                 when one of them does)"
            );
        }
    }
}

/// What stops a session: a stop signal, or, run together, the end of another.
pub(super) struct Stop<'a> {
    signals: StopSignals,
    member: Option<Member<'a>>,
}

/// A session's turn to start, held while it starts and goes live. Given up without going
/// live (it failed, or was stopped), it ends the others, so that none starts after.
pub(super) struct Turn<'a> {
    member: Option<Member<'a>>,
}

impl Turn<'_> {
    /// Gives the turn up to the next session, this one `name` having gone live.
    pub(super) fn went_live(mut self, name: &str) {
        if let Some(member) = self.member.take() {
            member.together.went_live(name);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.member {
            member.together.ending.cancel();
        }
    }
}

impl<'a> Stop<'a> {
    /// Listens for stop signals from now on (and for the others' end, as `member`).
    pub(super) fn listen(member: Option<Member<'a>>) -> std::io::Result<Self> {
        Ok(Self {
            signals: StopSignals::listen()?,
            member,
        })
    }

    /// Completes when the session is to stop.
    pub(super) async fn recv(&mut self) {
        match self.member {
            Some(member) => tokio::select! {
                () = self.signals.recv() => {}
                () = member.together.ending.cancelled() => {}
            },
            None => self.signals.recv().await,
        }
    }

    /// Waits for the session's turn to start (in the file's order); none if it is stopped
    /// first, or the others are ending.
    pub(super) async fn turn(&mut self) -> Option<Turn<'a>> {
        let Some(member) = self.member else {
            return Some(Turn { member: None });
        };
        let mut next_rx = member.together.next_tx.subscribe();
        let turn = tokio::select! {
            biased;
            () = self.recv() => false,
            turn = next_rx.wait_for(|next| *next == member.index) => turn.is_ok(),
        };
        let ending = member.together.ending.is_cancelled();
        (turn && !ending).then_some(Turn {
            member: Some(member),
        })
    }

    /// Waits until every session run together is live (at once for one run alone); false
    /// if it is stopped first, or the others are ending.
    pub(super) async fn all_live(&mut self) -> bool {
        let Some(member) = self.member else {
            return true;
        };
        let together = member.together;
        let mut live_rx = together.live_tx.subscribe();
        tokio::select! {
            biased;
            () = self.recv() => false,
            live = live_rx.wait_for(|live| live.len() == together.sessions) => live.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn member(together: &Together, index: usize) -> Stop<'_> {
        Stop::listen(Some(Member { together, index })).expect("signals")
    }

    #[tokio::test]
    async fn sessions_take_their_turns_in_the_files_order() {
        let together = Together::new(2, false);
        let (mut first, mut second) = (member(&together, 0), member(&together, 1));
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.turn()).await;
        assert!(waiting.is_err(), "the second waits for the first");
        let turn = first.turn().await.expect("the first's turn");
        turn.went_live("web-alice");
        let turn = second.turn().await.expect("then the second's");
        let waiting = tokio::time::timeout(Duration::from_millis(50), first.all_live()).await;
        assert!(waiting.is_err(), "one is not live yet: its command waits");
        turn.went_live("api-alice");
        assert!(first.all_live().await, "both are live");
        assert_eq!(together.live(), ["web-alice", "api-alice"]);
    }

    #[tokio::test]
    async fn a_turn_given_up_without_going_live_ends_the_others() {
        let together = Together::new(2, false);
        let (mut first, mut second) = (member(&together, 0), member(&together, 1));
        drop(first.turn().await.expect("the first's turn"));
        assert!(together.ending.is_cancelled());
        assert!(second.turn().await.is_none(), "the second never starts");
        assert!(!first.all_live().await);
    }

    #[tokio::test]
    async fn a_session_alone_needs_no_turn() {
        let mut alone = Stop::listen(None).expect("signals");
        let turn = alone.turn().await.expect("at once");
        turn.went_live("web-alice");
        assert!(alone.all_live().await);
    }
}
