//! Sessions run together (`-f kubedev.yaml`): they start one at a time, so that each one's
//! progress reads whole, and once one ends, however it ends, the others end too.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use kubedev_process::signals::StopSignals;

/// What sessions run together share: whose turn it is to start, and whether they end.
pub(super) struct Together {
    /// Cancelled once one of them ends (detached: once one fails).
    pub(super) ending: CancellationToken,
    starting: Semaphore,
    sessions: usize,
    live: AtomicUsize,
    detach: bool,
}

impl Together {
    /// For `sessions` sessions, `detach`ed or not.
    pub(super) fn new(sessions: usize, detach: bool) -> Self {
        Self {
            ending: CancellationToken::new(),
            starting: Semaphore::new(1),
            sessions,
            live: AtomicUsize::new(0),
            detach,
        }
    }

    /// Counts a session that went live; says so once they all are.
    pub(super) fn went_live(&self) {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        if live == self.sessions && !self.detach {
            eprintln!(
                "the file's {live} sessions are live; press Ctrl-C to end them (they also end \
                 when one of them does)"
            );
        }
    }

    /// Waits for a session's turn to start (sessions take turns in the file's order);
    /// none once they are ending.
    async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        tokio::select! {
            permit = self.starting.acquire() => permit.ok(),
            () = self.ending.cancelled() => None,
        }
    }
}

/// What stops a session: a stop signal, or, run together, the end of another.
pub(super) struct Stop<'a> {
    signals: StopSignals,
    together: Option<&'a Together>,
}

/// A session's turn to start: held while it starts and goes live, and given up when
/// dropped.
pub(super) struct Turn<'a> {
    _permit: Option<SemaphorePermit<'a>>,
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
            return Some(Turn { _permit: None });
        };
        tokio::select! {
            permit = together.turn() => permit.map(|permit| Turn { _permit: Some(permit) }),
            () = self.signals.recv() => None,
        }
    }
}
