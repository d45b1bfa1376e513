//! Sessions run together (`-f kubedev.yaml`): they start one at a time, so that each one's
//! progress reads whole, and once one ends, however it ends, the others end too.

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use kubedev_process::signals::StopSignals;

/// What sessions run together share: whose turn it is to start, and whether they end.
pub(super) struct Together {
    /// Cancelled once one of them ends (detached: once one fails).
    pub(super) ending: CancellationToken,
    starting: Semaphore,
    sessions: usize,
    /// The names of those that went live, in order.
    live: Mutex<Vec<String>>,
    detach: bool,
}

impl Together {
    /// For `sessions` sessions, `detach`ed or not.
    pub(super) fn new(sessions: usize, detach: bool) -> Self {
        Self {
            ending: CancellationToken::new(),
            starting: Semaphore::new(1),
            sessions,
            live: Mutex::new(Vec::new()),
            detach,
        }
    }

    /// Notes that session `name` went live; says so once they all are.
    fn went_live(&self, name: &str) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.push(name.to_owned());
        if live.len() == self.sessions && !self.detach {
            eprintln!(
                "the file's {} sessions are live; press Ctrl-C to end them (they also end \
                 when one of them does)",
                live.len()
            );
        }
    }

    /// The sessions that went live.
    pub(super) fn live(&self) -> Vec<String> {
        (self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
        .clone()
    }

    /// Waits for a session's turn to start (sessions take turns in the file's order);
    /// none once they are ending, even if the turn came at the same time.
    async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        let permit = tokio::select! {
            biased;
            () = self.ending.cancelled() => None,
            permit = self.starting.acquire() => permit.ok(),
        };
        permit.filter(|_| !self.ending.is_cancelled())
    }
}

/// What stops a session: a stop signal, or, run together, the end of another.
pub(super) struct Stop<'a> {
    signals: StopSignals,
    together: Option<&'a Together>,
}

/// A session's turn to start, held while it starts and goes live. Given up without going
/// live (it failed, or was stopped), it ends the others first, so that none starts after.
pub(super) struct Turn<'a> {
    together: Option<&'a Together>,
    _permit: Option<SemaphorePermit<'a>>,
}

impl Turn<'_> {
    /// Gives the turn up to the next session, this one `name` having gone live.
    pub(super) fn went_live(mut self, name: &str) {
        if let Some(together) = self.together.take() {
            together.went_live(name);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(together) = self.together {
            together.ending.cancel();
        }
    }
}

impl<'a> Stop<'a> {
    /// Listens for stop signals from now on (and for the others' end, `together`).
    pub(super) fn listen(together: Option<&'a Together>) -> std::io::Result<Self> {
        Ok(Self {
            signals: StopSignals::listen()?,
            together,
        })
    }

    /// Completes when the session is to stop.
    pub(super) async fn recv(&mut self) {
        match self.together {
            Some(together) => tokio::select! {
                () = self.signals.recv() => {}
                () = together.ending.cancelled() => {}
            },
            None => self.signals.recv().await,
        }
    }

    /// Waits for the session's turn to start; none if it is stopped first.
    pub(super) async fn turn(&mut self) -> Option<Turn<'a>> {
        let Some(together) = self.together else {
            return Some(Turn {
                together: None,
                _permit: None,
            });
        };
        tokio::select! {
            permit = together.turn() => permit.map(|permit| Turn {
                together: Some(together),
                _permit: Some(permit),
            }),
            () = self.signals.recv() => None,
        }
    }
}
