//! How many links a pod gets. One link is one connection through the API server, which
//! keeps only so much in flight on it (its send buffer, 4 MiB by default on Linux, holds
//! 2 to 3 MiB of a port-forward's data: 40 to 60 MiB/s at 50 ms). A pod starts with
//! [`BASE_LINKS`]; while what its links carry, times the path's round trip, is more than
//! they hold in flight with one to spare, their number doubles (or rises to what that
//! product needs, if more), up to [`MOST_LINKS`]: what full links carry says only that
//! the need is at least that, as a TCP sender's acknowledged bytes do, so they grow as its
//! slow start does rather than one link a tick (a link takes several round trips to come
//! up, and a 128 MiB read at 50 ms is over in a few ticks). Links beyond the need are let
//! go one at a time after [`LINGER`], once no flow uses them.

use std::time::{Duration, Instant};

use kubedev_protocol::stripe::MAX_STREAMS;

/// The links every running pod has: new flows take turns on them, and one carries the
/// pod's traffic while the other reconnects.
pub(crate) const BASE_LINKS: usize = 2;
/// The most links to one pod: a striped flow takes a stream on each, up to its limit.
pub(super) const MOST_LINKS: usize = MAX_STREAMS;
/// What one link is counted on to hold in flight: half of what it was measured to, so
/// that a link is added before the others are full.
const LINK_IN_FLIGHT: f64 = (1 << 20) as f64;
/// How often a pod's traffic is measured.
pub(super) const TICK: Duration = Duration::from_millis(500);
/// How long links beyond the need are kept, for the next burst.
const LINGER: Duration = Duration::from_secs(30);

/// The links a pod needs to carry `rate` (bytes a second) over a path whose round trip is
/// `round_trip`: enough to hold the bandwidth-delay product, and one more to grow into.
pub(super) fn links_needed(rate: u64, round_trip: Duration) -> usize {
    let in_flight = rate as f64 * round_trip.as_secs_f64();
    let holding = (in_flight / LINK_IN_FLIGHT).ceil() as usize;
    (holding + 1).clamp(BASE_LINKS, MOST_LINKS)
}

/// The links a pod is to have, from one measured need to the next: twice as many (or the
/// need, if more) each time the need is higher, one fewer once it has been lower for
/// [`LINGER`].
#[derive(Debug)]
pub(super) struct Demand {
    wanted: usize,
    lower_since: Option<Instant>,
}

impl Default for Demand {
    fn default() -> Self {
        Self {
            wanted: BASE_LINKS,
            lower_since: None,
        }
    }
}

impl Demand {
    /// The links wanted now that `needed` were measured at `now`.
    pub(super) fn next(&mut self, needed: usize, now: Instant) -> usize {
        if needed > self.wanted {
            self.wanted = needed.max(2 * self.wanted).min(MOST_LINKS);
            self.lower_since = None;
        } else if needed < self.wanted {
            let since = *self.lower_since.get_or_insert(now);
            if now.duration_since(since) >= LINGER {
                self.wanted -= 1;
                self.lower_since = Some(now);
            }
        } else {
            self.lower_since = None;
        }
        self.wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_near_pod_keeps_its_base_links_however_fast() {
        assert_eq!(
            links_needed(400 * MIB, Duration::from_micros(500)),
            BASE_LINKS
        );
        assert_eq!(links_needed(0, Duration::from_millis(80)), BASE_LINKS);
    }

    #[test]
    fn a_far_pod_gets_a_link_per_mebibyte_in_flight_and_one_more() {
        // 90 MiB/s at 50 ms: 4.5 MiB in flight.
        assert_eq!(links_needed(90 * MIB, Duration::from_millis(50)), 6);
        assert_eq!(links_needed(100 * MIB, Duration::from_millis(20)), 3);
        assert_eq!(
            links_needed(10_000 * MIB, Duration::from_millis(50)),
            MOST_LINKS
        );
    }

    #[test]
    fn links_double_while_full_and_are_let_go_one_at_a_time_after_lingering() {
        let start = Instant::now();
        let mut demand = Demand::default();
        assert_eq!(demand.next(BASE_LINKS + 1, start), 2 * BASE_LINKS);
        assert_eq!(
            demand.next(2 * BASE_LINKS + 1, start + TICK),
            4 * BASE_LINKS
        );
        assert_eq!(demand.next(BASE_LINKS, start + 2 * TICK), 4 * BASE_LINKS);
        assert_eq!(demand.next(BASE_LINKS, start + LINGER), 4 * BASE_LINKS);
        let later = start + 2 * TICK + LINGER;
        assert_eq!(demand.next(BASE_LINKS, later), 4 * BASE_LINKS - 1);
        // A burst in between starts the wait over.
        let wanted = 4 * BASE_LINKS - 1;
        assert_eq!(demand.next(wanted, later + TICK), wanted);
        assert_eq!(demand.next(BASE_LINKS, later + 2 * TICK), wanted);
        assert_eq!(demand.next(BASE_LINKS, later + LINGER), wanted);
        assert_eq!(
            demand.next(BASE_LINKS, later + 2 * TICK + LINGER),
            wanted - 1
        );
    }

    #[test]
    fn a_need_beyond_twice_the_links_is_met_at_once_and_never_beyond_the_most() {
        let start = Instant::now();
        let mut demand = Demand::default();
        assert_eq!(demand.next(7, start), 7);
        assert_eq!(demand.next(MOST_LINKS + 5, start + TICK), MOST_LINKS);
    }
}
