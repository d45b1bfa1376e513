use kubedev_protocol::mux::{self, Mode};

use super::*;

/// A handle on a connection of its own (nobody at the other end).
fn connection() -> MuxHandle {
    let (near, _far) = tokio::io::duplex(1024);
    mux::spawn(near, Mode::Server).0
}

fn header_filter(value: &str) -> Option<HttpFilter> {
    Some(HttpFilter {
        headers: vec![("x-dev".into(), value.into())],
        path_prefix: None,
    })
}

#[tokio::test]
async fn the_newest_workstation_that_claimed_a_port_comes_first() {
    let workstations = Workstations::default();
    let (older, newer, other) = (connection(), connection(), connection());
    let older_id = workstations.add(older.clone());
    let newer_id = workstations.add(newer.clone());
    let other_id = workstations.add(other);
    workstations.claim(older_id, 8080, None, None);
    workstations.claim(newer_id, 8080, header_filter("alice"), None);
    workstations.claim(other_id, 9090, None, None);

    let claimants = workstations.claimants(8080);
    assert_eq!(claimants.len(), 2);
    assert!(claimants[0].handle.same_connection(&newer));
    assert_eq!(claimants[0].filter, header_filter("alice"));
    assert!(claimants[1].handle.same_connection(&older));
    assert_eq!(claimants[1].filter, None);
    assert!(workstations.claimants(7070).is_empty());
}

#[tokio::test]
async fn claiming_a_port_again_replaces_the_claim() {
    let workstations = Workstations::default();
    let id = workstations.add(connection());
    workstations.claim(id, 8080, header_filter("alice"), None);
    workstations.claim(id, 8080, header_filter("bob"), None);

    let claimants = workstations.claimants(8080);
    assert_eq!(claimants.len(), 1);
    assert_eq!(claimants[0].filter, header_filter("bob"));
}

#[tokio::test]
async fn a_workstation_that_left_takes_nothing() {
    let workstations = Workstations::default();
    let (staying, leaving) = (connection(), connection());
    let staying_id = workstations.add(staying.clone());
    let leaving_id = workstations.add(leaving);
    workstations.claim(staying_id, 8080, None, None);
    workstations.claim(leaving_id, 8080, None, None);
    workstations.remove(leaving_id);
    // A claim from a connection already gone is ignored.
    workstations.claim(leaving_id, 9090, None, None);

    let claimants = workstations.claimants(8080);
    assert_eq!(claimants.len(), 1);
    assert!(claimants[0].handle.same_connection(&staying));
    assert!(workstations.claimants(9090).is_empty());
}

#[tokio::test]
async fn a_wiretap_gets_copies_once_however_many_links_it_has() {
    let workstations = Workstations::default();
    let taker = workstations.add(connection());
    let first_link = workstations.add(connection());
    let second_link = workstations.add(connection());
    let other_tap = workstations.add(connection());
    workstations.claim(taker, 8080, None, None);
    for link in [first_link, second_link] {
        workstations.claim(link, 8080, header_filter("alice"), Some("alice-1".into()));
    }
    workstations.claim(other_tap, 8080, None, Some("bob-1".into()));

    // Wiretaps take nothing away from the app or the intercept.
    let (takers, wiretappers) = workstations.claims(8080);
    assert_eq!(takers.len(), 1);
    assert_eq!(wiretappers.len(), 2, "{wiretappers:?}");
    let bob = &wiretappers[0];
    let alice = &wiretappers[1];
    assert_eq!(bob.links.len(), 1);
    assert_eq!(alice.links.len(), 2);
    assert_eq!(alice.filter, header_filter("alice"));

    // Counts outlive the links that made them.
    alice.tally.count(true);
    alice.tally.count(false);
    workstations.remove(first_link);
    workstations.remove(second_link);
    let counts = workstations.counts("alice-1");
    assert_eq!((counts.copied, counts.dropped), (1, 1));
    assert!(
        workstations
            .claims(8080)
            .1
            .iter()
            .all(|w| w.filter.is_none())
    );
}
