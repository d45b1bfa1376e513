//! What a cap turned away, counted and told in the log without flooding it. A flood is
//! exactly when caps refuse, thousands of times a second: one warning opens each burst,
//! and the refusals that follow within [`LOG_INTERVAL`] are only counted, their number
//! given with the next warning.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The least time between two warnings of one [`Refusals`]: a burst shows once in the log
/// and a long flood once every ten seconds, with its count.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The refusals of one cap (the streams of a link, the flows of a UDP port, ...).
#[derive(Debug)]
pub struct Refusals {
    /// What is refused, for the log ("a stream the agent opened").
    what: &'static str,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    /// Refused since the last warning, not told yet.
    untold: u64,
    /// No warning before this.
    quiet_until: Option<Instant>,
}

impl Refusals {
    /// Counts refusals of `what`.
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            counts: Mutex::new(Counts {
                total: 0,
                untold: 0,
                quiet_until: None,
            }),
        }
    }

    /// Counts one refusal, and warns with `why` unless a warning went out less than
    /// [`LOG_INTERVAL`] ago.
    pub fn refuse(&self, why: &dyn std::fmt::Display) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total += 1;
        counts.untold += 1;
        let now = Instant::now();
        if counts.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        counts.quiet_until = Some(now + LOG_INTERVAL);
        let (what, untold, total) = (self.what, counts.untold, counts.total);
        counts.untold = 0;
        drop(counts);
        if untold > 1 {
            tracing::warn!(
                "refused {what}: {why} ({untold} since the last warning, {total} in all)"
            );
        } else {
            tracing::warn!("refused {what}: {why} ({total} in all)");
        }
    }

    /// How many were refused so far.
    pub fn total(&self) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_warns_once_and_counts_every_refusal() {
        let refusals = Refusals::new("a test");
        for _ in 0..1000 {
            refusals.refuse(&"full");
        }
        assert_eq!(refusals.total(), 1000);
        let quiet_until = |r: &Refusals| r.counts.lock().expect("lock").quiet_until;
        let first = quiet_until(&refusals);
        assert!(first.is_some());
        tokio::time::advance(LOG_INTERVAL).await;
        refusals.refuse(&"full");
        assert!(
            quiet_until(&refusals) > first,
            "warned again after the interval"
        );
        assert_eq!(refusals.counts.lock().expect("lock").untold, 0);
    }
}
