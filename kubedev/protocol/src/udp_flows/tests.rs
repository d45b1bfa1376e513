//! The table of flows: what starts a flow, what reaches it, what is dropped.

use super::*;

#[test]
fn first_datagram_asks_for_a_flow_then_later_ones_follow_it() {
    let mut flows = UdpFlows::default();
    let returned = flows.deliver(&1, b"one".to_vec());
    assert_eq!(returned.as_deref(), Some(&b"one"[..]));

    let mut datagrams_rx = flows.start(1, b"one".to_vec()).expect("room");
    assert_eq!(flows.deliver(&1, b"two".to_vec()), None);
    assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"one"[..]));
    assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"two"[..]));
}

#[test]
fn flows_are_told_apart_by_their_key() {
    let mut flows = UdpFlows::default();
    let _first_rx = flows.start(1, Vec::new()).expect("room");
    assert!(flows.deliver(&2, b"x".to_vec()).is_some());
}

#[test]
fn an_ended_flow_is_replaced_and_pruned() {
    let mut flows = UdpFlows::default();
    let ended_rx = flows.start(1, Vec::new()).expect("room");
    let _live_rx = flows.start(2, Vec::new()).expect("room");
    drop(ended_rx);
    flows.prune();
    assert_eq!(flows.len(), 1);

    let ended_rx = flows.start(1, Vec::new()).expect("room");
    drop(ended_rx);
    assert_eq!(
        flows.deliver(&1, b"again".to_vec()).as_deref(),
        Some(&b"again"[..])
    );
}

#[test]
fn a_flow_that_falls_behind_loses_datagrams_not_others() {
    let mut flows = UdpFlows::default();
    let mut slow_rx = flows.start(1, Vec::new()).expect("room");
    let _other_rx = flows.start(2, Vec::new()).expect("room");
    for _ in 0..FLOW_BACKLOG * 2 {
        assert_eq!(flows.deliver(&1, vec![0]), None);
    }
    assert_eq!(flows.deliver(&2, vec![1]), None);
    let mut received = 0;
    while slow_rx.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, FLOW_BACKLOG);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_drops_new_sources_and_keeps_its_flows() {
    let mut flows = UdpFlows::with_cap(4);
    let counts = flows.counts();
    let mut kept: Vec<_> = (0..4)
        .map(|key| flows.start(key, Vec::new()).expect("room"))
        .collect();
    assert!(flows.start(4, b"new".to_vec()).is_none());
    assert_eq!((counts.flows(), counts.dropped()), (4, 1));
    assert_eq!(flows.deliver(&0, b"old".to_vec()), None);
    assert_eq!(kept[0].try_recv().ok().as_deref(), Some(&b""[..]));
    assert_eq!(kept[0].try_recv().ok().as_deref(), Some(&b"old"[..]));

    // A flow that ended makes room, once the table is swept.
    drop(kept.remove(3));
    assert!(flows.start(5, Vec::new()).is_none(), "swept a moment ago");
    tokio::time::advance(PRUNE_WHEN_FULL).await;
    assert!(flows.start(5, Vec::new()).is_some());
    assert_eq!((counts.flows(), counts.dropped()), (4, 2));
}

/// The largest datagram UDP over IPv4 carries.
const LARGEST: usize = 65507;

#[test]
fn large_datagrams_fill_a_flows_bytes_before_its_count() {
    let mut flows = UdpFlows::default();
    let mut flow_rx = flows.start(1, vec![0; LARGEST]).expect("room");
    for _ in 0..FLOW_BACKLOG {
        assert_eq!(flows.deliver(&1, vec![1; LARGEST]), None);
    }
    let fit = FLOW_QUEUED_BYTES / LARGEST;
    assert_eq!(flows.queued_bytes(), fit * LARGEST);
    let mut received = 0;
    while flow_rx.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, fit, "the rest were dropped");
    assert_eq!(flows.queued_bytes(), 0, "taken, no longer counted");
    assert_eq!(flows.deliver(&1, vec![2; LARGEST]), None);
    assert_eq!(flow_rx.try_recv().ok().as_deref(), Some(&[2; LARGEST][..]));
}

#[test]
fn the_flows_of_a_table_together_hold_no_more_than_its_bytes() {
    let mut flows = UdpFlows::default();
    let flooded = 2 * TABLE_QUEUED_BYTES / FLOW_QUEUED_BYTES;
    let mut slow: Vec<_> = (0..flooded)
        .map(|key| flows.start(key, Vec::new()).expect("room"))
        .collect();
    for key in 0..flooded {
        for _ in 0..FLOW_BACKLOG {
            let _ = flows.deliver(&key, vec![0; LARGEST]);
        }
    }
    assert!(flows.queued_bytes() <= TABLE_QUEUED_BYTES);
    assert!(flows.queued_bytes() > TABLE_QUEUED_BYTES - LARGEST, "full");
    // A new flow still starts, and its datagrams go through once others drained.
    let mut fresh_rx = flows.start(flooded, vec![9; LARGEST]).expect("room");
    assert!(
        fresh_rx.try_recv().is_err(),
        "no room for its first datagram"
    );
    while slow[0].try_recv().is_ok() {}
    assert_eq!(flows.deliver(&flooded, vec![9; LARGEST]), None);
    assert_eq!(fresh_rx.try_recv().ok().as_deref(), Some(&[9; LARGEST][..]));
    slow.clear();
}
