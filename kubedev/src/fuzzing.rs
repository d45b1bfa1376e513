//! What the `control_request` fuzz target in `fuzz/` runs: bytes on tunneld's control
//! socket. A request that decodes must encode back to itself, and the ranges it asks for
//! (`--also-proxy`, `--never-proxy`) must come out of the route arithmetic as promised.
//! The unit test replays every input kept in `fuzz/inputs/control_request/`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use kubedev_protocol::fuzzing::{block_on, messages_round_trip};

use crate::cidr::{self, Cidr};
use crate::control::{ControlRequest, ProxyChoices};
use crate::tunneld::socket_path;

/// Reads control requests from `input` until one does not decode.
pub fn control_request(input: &[u8]) {
    for request in block_on(messages_round_trip::<ControlRequest>(input)) {
        check_names(&request);
        if let ControlRequest::AddSession { proxy, .. } = &request {
            check_proxy_choices(proxy);
        }
    }
}

/// A name from a request never leads a socket out of its directory.
fn check_names(request: &ControlRequest) {
    let name = match request {
        ControlRequest::AddSession { name, .. } => name,
        ControlRequest::RemoveSession { session, .. }
        | ControlRequest::Environment { session }
        | ControlRequest::OpenFiles { session }
        | ControlRequest::ServeCommandNetwork { session } => &session.name,
        ControlRequest::Hold(held) => &held.name,
        ControlRequest::Status | ControlRequest::Release | ControlRequest::TimeLink => return,
    };
    let dir = Path::new("/run/user/1000");
    assert_eq!(
        socket_path(dir, name, "0123456789abcdef").parent(),
        Some(dir)
    );
}

fn check_proxy_choices(proxy: &ProxyChoices) {
    let mut merged = ProxyChoices::default();
    merged.merge(proxy);
    assert!(
        !merged.merge(proxy),
        "merging the same choices twice adds nothing"
    );
    for range in &proxy.also_proxy {
        check_subtract(range, &proxy.never_proxy);
    }
}

/// What is left of `range` without `removed`: inside `range`, outside every removed
/// range, and every address at an edge of a range is on the right side.
fn check_subtract(range: &Cidr, removed: &[Cidr]) {
    let left = cidr::subtract(range, removed);
    for (i, part) in left.iter().enumerate() {
        assert!(cidr::holds(&range.trunc(), part), "{part} outside {range}");
        assert!(!removed.iter().any(|cut| cidr::overlap(cut, part)));
        assert!(!left[i + 1..].iter().any(|other| cidr::overlap(other, part)));
    }
    let edges = std::iter::once(range)
        .chain(removed)
        .flat_map(|r| [r.network(), r.broadcast()])
        .flat_map(neighbours);
    for address in edges {
        let kept = left.iter().any(|part| part.contains(&address));
        let wanted =
            range.trunc().contains(&address) && !removed.iter().any(|cut| cut.contains(&address));
        assert_eq!(
            kept, wanted,
            "{address} of {range} less {removed:?}: {left:?}"
        );
    }
}

/// The address before `address`, itself, and the one after, within its family.
fn neighbours(address: IpAddr) -> [IpAddr; 3] {
    match address {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            [n.saturating_sub(1), n, n.saturating_add(1)].map(|n| IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            [n.saturating_sub(1), n, n.saturating_add(1)].map(|n| IpAddr::V6(Ipv6Addr::from(n)))
        }
    }
}

#[cfg(test)]
mod tests {
    use kubedev_protocol::fuzzing::replay_kept_inputs;

    use super::*;

    #[test]
    fn kept_control_request_inputs_pass() {
        replay_kept_inputs("control_request", control_request);
    }
}
