//! A datagram waiting for its flow's stream, counted in the bytes its flow and its table
//! hold queued. Datagrams are up to 64 KiB each and any sender can make new flows, so a
//! backlog bounded only in datagrams could hold gigabytes: a queue is bounded in bytes too,
//! per flow and per table.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes queued somewhere (one flow, one table), and how many it may hold.
#[derive(Debug, Clone)]
pub(super) struct QueuedBytes {
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl QueuedBytes {
    /// Nothing queued yet, at most `cap` bytes.
    pub(super) fn with_cap(cap: usize) -> Self {
        Self {
            queued: Arc::default(),
            cap,
        }
    }

    /// The bytes queued now.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts `len` more bytes, if they fit.
    fn reserve(&self, len: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(len).filter(|total| *total <= self.cap)
            })
            .is_ok()
    }

    fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }
}

/// A datagram counted in its flow's and its table's queued bytes until it is dropped.
#[derive(Debug)]
pub struct Queued {
    payload: Vec<u8>,
    len: usize,
    counted: [QueuedBytes; 2],
}

/// Why a datagram was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// Its flow holds as many bytes as it may.
    Flow,
    /// The flows of its table, together, hold as many bytes as they may.
    Table,
}

impl Queued {
    /// `payload`, counted in `flow` and in `table` if it fits in both; else given back
    /// with the one it does not fit in, and neither counts it.
    pub(super) fn within(
        payload: Vec<u8>,
        flow: &QueuedBytes,
        table: &QueuedBytes,
    ) -> Result<Self, (Vec<u8>, Full)> {
        let len = payload.len();
        if !flow.reserve(len) {
            return Err((payload, Full::Flow));
        }
        if !table.reserve(len) {
            flow.release(len);
            return Err((payload, Full::Table));
        }
        Ok(Self {
            payload,
            len,
            counted: [flow.clone(), table.clone()],
        })
    }

    /// The datagram, no longer counted.
    pub(super) fn into_payload(mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }
}

impl Deref for Queued {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.payload
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        for counted in &self.counted {
            counted.release(self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_counts_in_its_flow_and_table_until_dropped() {
        let (flow, table) = (QueuedBytes::with_cap(10), QueuedBytes::with_cap(15));
        let first = Queued::within(vec![0; 6], &flow, &table).expect("fits");
        assert_eq!(&*first, &[0; 6][..]);
        assert_eq!((flow.queued(), table.queued()), (6, 6));

        let (back, full) = Queued::within(vec![1; 5], &flow, &table).expect_err("flow full");
        assert_eq!((back.len(), full), (5, Full::Flow));
        let other_flow = QueuedBytes::with_cap(10);
        let _second = Queued::within(vec![2; 9], &other_flow, &table).expect("fits");
        let (_, full) = Queued::within(vec![3; 1], &flow, &table).expect_err("table full");
        assert_eq!(full, Full::Table);
        assert_eq!(flow.queued(), 6, "a refused datagram counts nowhere");

        assert_eq!(first.into_payload(), vec![0; 6]);
        assert_eq!((flow.queued(), table.queued()), (0, 9));
    }
}
