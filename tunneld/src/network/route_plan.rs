//! Which of the cluster's ranges tunneld routes into its TUN device, decided against the
//! machine's own routes, which it never changes:
//! - a range the machine already reaches through an interface (a node's bridge, a VPN) is
//!   left to that route, and so is any part of a range that has a route of its own;
//! - a range the machine reaches only through its default route, or not at all, is routed;
//! - a reject route (unreachable, blackhole, prohibit) for a range stays where it is:
//!   tunneld routes the range's halves, one bit longer, which the kernel prefers while
//!   they exist. They go with the TUN device, however tunneld exits, and the reject route
//!   applies again as it did before;
//! - `--also-proxy` routes a range past the machine's routes the same way;
//!   `--never-proxy` (and the API server's own address) is never routed.

use kubedev::cidr::{self, Cidr};
use kubedev::control::{RangePart, RangeState, RangeStatus};

use super::machine_routes::{MachineRoute, MachineRouteKind};

/// How `ip route` shows a route through a kubedev tunneld's device (`kubedev-tunN`).
pub(crate) const KUBEDEV_DEVICE: &str = " dev kubedev-tun";

/// A range that must not be routed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exclusion {
    pub(crate) range: Cidr,
    pub(crate) reason: String,
}

/// What is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The cluster's pod and service ranges.
    pub(crate) cluster: Vec<Cidr>,
    /// Ranges to route even where the machine has a route of its own.
    pub(crate) also: Vec<Cidr>,
    pub(crate) never: Vec<Exclusion>,
}

/// What to route, and what became of each range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoutePlan {
    pub(crate) routes: Vec<Cidr>,
    pub(crate) ranges: Vec<RangeStatus>,
}

/// Routes covering half the address space or more are default routes, whatever their
/// form: `0.0.0.0/0` (`::/0`), or the `0.0.0.0/1` + `128.0.0.0/1` pair VPN clients use to
/// take over the default without replacing it.
fn is_default(route: &MachineRoute) -> bool {
    route.destination.prefix_len() <= 1
}

/// Decides, range by range, what to route into the TUN device given the machine's routes.
/// A cluster range inside an `--also-proxy` range is routed as that one is.
pub(crate) fn plan(wanted: &Wanted, machine: &[MachineRoute]) -> RoutePlan {
    let mut candidates: Vec<(Cidr, bool)> = wanted
        .cluster
        .iter()
        .map(|range| {
            let forced = wanted.also.iter().any(|also| cidr::holds(also, range));
            (*range, forced)
        })
        .collect();
    for also in &wanted.also {
        if !wanted.cluster.contains(also) {
            candidates.push((*also, true));
        }
    }
    let mut plan = RoutePlan::default();
    for (range, forced) in candidates {
        let status = plan_range(range, forced, &wanted.never, machine, &mut plan.routes);
        plan.ranges.push(status);
    }
    plan.routes.sort_unstable();
    plan.routes.dedup();
    plan
}

/// What becomes of one range (`forced`: `--also-proxy`); its routes go onto `routes`.
fn plan_range(
    range: Cidr,
    forced: bool,
    never: &[Exclusion],
    machine: &[MachineRoute],
    routes: &mut Vec<Cidr>,
) -> RangeStatus {
    let status = |state, reason: String| RangeStatus {
        range,
        state,
        reason,
        via: None,
        except: Vec::new(),
    };
    if let Some(exclusion) = never.iter().find(|n| cidr::holds(&n.range, &range)) {
        return status(RangeState::Excluded, exclusion.reason.clone());
    }
    if !forced
        && let Some(own) = own_paths(machine)
            .filter(|r| cidr::holds(&r.destination, &range))
            .max_by_key(|r| r.destination.prefix_len())
    {
        let reason = if own.description.contains(KUBEDEV_DEVICE) {
            "another kubedev tunneld on this machine routes it (another kube context or \
             identity); this one takes it over when that one ends"
        } else {
            "this machine already reaches it through a route of its own"
        };
        return RangeStatus {
            via: Some(own.description.clone()),
            ..status(RangeState::Machine, reason.into())
        };
    }
    let (routed, except) = pieces_to_route(range, forced, never, machine);
    if routed.is_empty() {
        return RangeStatus {
            except,
            ..status(
                RangeState::Excluded,
                "no part of it is left to route".into(),
            )
        };
    }
    routes.extend(routed);
    RangeStatus {
        except,
        ..status(RangeState::Routed, routed_because(range, forced, machine))
    }
}

/// The machine's routes through an interface, but for its default routes.
fn own_paths(machine: &[MachineRoute]) -> impl Iterator<Item = &MachineRoute> {
    machine
        .iter()
        .filter(|r| r.kind == MachineRouteKind::Path && !is_default(r))
}

/// The routes that take `range` to the cluster, and the parts of it that stay out.
fn pieces_to_route(
    range: Cidr,
    forced: bool,
    never: &[Exclusion],
    machine: &[MachineRoute],
) -> (Vec<Cidr>, Vec<RangePart>) {
    let mut except: Vec<RangePart> = never
        .iter()
        .filter(|n| cidr::overlap(&n.range, &range))
        .map(|n| RangePart {
            range: n.range,
            reason: n.reason.clone(),
        })
        .collect();
    let holes: Vec<Cidr> = except.iter().map(|part| part.range).collect();
    if !forced {
        // More specific than the routes below, they keep their traffic.
        except.extend(
            own_paths(machine)
                .filter(|r| cidr::holds(&range, &r.destination))
                .map(|r| RangePart {
                    range: r.destination,
                    reason: format!("this machine's route {}", r.description),
                }),
        );
    }
    // Routes the kernel would prefer to one of ours: ours must be more specific.
    let outranking: Vec<&MachineRoute> = machine
        .iter()
        .filter(|r| !is_default(r) && cidr::overlap(&r.destination, &range))
        .filter(|r| forced || r.kind == MachineRouteKind::Reject)
        .collect();
    let mut pending = cidr::subtract(&range, &holes);
    let mut routed = Vec::new();
    while let Some(piece) = pending.pop() {
        if !forced && own_paths(machine).any(|r| cidr::holds(&r.destination, &piece)) {
            continue; // the machine's, listed in `except`
        }
        if let Some(first) = machine
            .iter()
            .find(|r| r.before_main && !is_default(r) && cidr::holds(&r.destination, &piece))
        {
            except.push(RangePart {
                range: piece,
                reason: format!(
                    "this machine's route {} is looked up before tunneld's",
                    first.description
                ),
            });
            continue;
        }
        let Some(blocker) = outranking
            .iter()
            .find(|r| cidr::holds(&piece, &r.destination))
        else {
            routed.push(piece);
            continue;
        };
        match cidr::halves(&piece) {
            Some(halves) => pending.extend(halves),
            None => except.push(RangePart {
                range: piece,
                reason: format!("this machine's route {}", blocker.description),
            }),
        }
    }
    except.sort_by_key(|part| part.range);
    except.dedup();
    (routed, except)
}

/// Why a range that is routed needed tunneld.
fn routed_because(range: Cidr, forced: bool, machine: &[MachineRoute]) -> String {
    if forced {
        return "--also-proxy".to_owned();
    }
    if let Some(reject) = machine
        .iter()
        .find(|r| r.kind == MachineRouteKind::Reject && cidr::overlap(&r.destination, &range))
    {
        return format!(
            "this machine only rejects it ({}), a route left in place",
            reject.description
        );
    }
    let same_family =
        |r: &&MachineRoute| r.destination.network().is_ipv4() == range.network().is_ipv4();
    if machine
        .iter()
        .filter(same_family)
        .any(|r| r.kind == MachineRouteKind::Path && is_default(r))
    {
        "this machine reaches it only through its default route".to_owned()
    } else {
        "this machine has no route to it".to_owned()
    }
}

#[cfg(test)]
mod tests;
