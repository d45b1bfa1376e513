use super::*;

fn range(text: &str) -> Cidr {
    cidr::parse(text).expect("valid range")
}

fn path(destination: &str, device: &str) -> MachineRoute {
    MachineRoute {
        destination: range(destination),
        kind: MachineRouteKind::Path,
        before_main: false,
        description: format!("{destination} dev {device}"),
    }
}

fn reject(destination: &str) -> MachineRoute {
    MachineRoute {
        destination: range(destination),
        kind: MachineRouteKind::Reject,
        before_main: false,
        description: format!("unreachable {destination}"),
    }
}

fn cluster(ranges: &[&str]) -> Wanted {
    Wanted {
        cluster: ranges.iter().map(|r| range(r)).collect(),
        ..Wanted::default()
    }
}

fn routes(plan: &RoutePlan) -> Vec<String> {
    plan.routes.iter().map(ToString::to_string).collect()
}

fn excepted(status: &RangeStatus) -> Vec<String> {
    status.except.iter().map(|p| p.range.to_string()).collect()
}

#[test]
fn a_laptop_routes_what_only_its_default_route_covers() {
    let machine = [path("0.0.0.0/0", "wlan0"), path("192.168.1.0/24", "wlan0")];
    let plan = plan(&cluster(&["10.96.0.0/16", "10.244.0.0/16"]), &machine);
    assert_eq!(routes(&plan), ["10.96.0.0/16", "10.244.0.0/16"]);
    for status in &plan.ranges {
        assert_eq!(status.state, RangeState::Routed);
        assert_eq!(
            status.reason,
            "this machine reaches it only through its default route"
        );
        assert!(status.except.is_empty());
    }
}

#[test]
fn on_a_node_the_bridge_keeps_the_pods_and_reject_routes_stay() {
    let machine = [
        path("0.0.0.0/0", "eth0"),
        path("10.244.0.0/24", "kubedev0"),
        reject("10.244.0.0/16"),
        reject("10.96.0.0/16"),
    ];
    // With cluster-wide reads: the node's podCIDR is exactly the bridge's route.
    let plan = plan(&cluster(&["10.96.0.0/16", "10.244.0.0/24"]), &machine);
    assert_eq!(routes(&plan), ["10.96.0.0/17", "10.96.128.0/17"]);
    assert_eq!(plan.ranges[0].state, RangeState::Routed);
    assert!(plan.ranges[0].reason.contains("unreachable 10.96.0.0/16"));
    assert_eq!(plan.ranges[1].state, RangeState::Machine);
    assert_eq!(
        plan.ranges[1].via.as_deref(),
        Some("10.244.0.0/24 dev kubedev0")
    );

    // A namespace-scoped user guesses a /16 around the pod IPs: the rest of it is
    // routed, the node's own pods stay on the bridge.
    let guessed = super::plan(&cluster(&["10.244.0.0/16"]), &machine);
    assert_eq!(routes(&guessed), ["10.244.0.0/17", "10.244.128.0/17"]);
    assert_eq!(excepted(&guessed.ranges[0]), ["10.244.0.0/24"]);
}

#[test]
fn a_vpn_route_keeps_its_range_unless_the_user_says_otherwise() {
    let machine = [path("10.0.0.0/8", "tun0"), path("10.96.0.0/16", "wg0")];
    let plan_for = |wanted: &Wanted| plan(wanted, &machine);
    let left = plan_for(&cluster(&["10.96.0.0/16", "10.100.0.0/16"]));
    assert!(left.routes.is_empty());
    assert_eq!(left.ranges[0].via.as_deref(), Some("10.96.0.0/16 dev wg0"));
    assert_eq!(left.ranges[1].via.as_deref(), Some("10.0.0.0/8 dev tun0"));

    let also = Wanted {
        also: vec![range("10.96.0.0/16"), range("10.100.0.0/16")],
        ..cluster(&["10.96.0.0/16"])
    };
    let forced = plan_for(&also);
    // More specific than the /8 as it is; the /16 of the same length needs its halves.
    assert_eq!(
        routes(&forced),
        ["10.96.0.0/17", "10.96.128.0/17", "10.100.0.0/16"]
    );
    assert!(
        forced
            .ranges
            .iter()
            .all(|s| s.state == RangeState::Routed && s.reason == "--also-proxy")
    );
}

#[test]
fn never_proxy_and_the_api_server_are_cut_out() {
    let wanted = Wanted {
        never: vec![
            Exclusion {
                range: range("10.96.0.0/17"),
                reason: "--never-proxy".into(),
            },
            Exclusion {
                range: range("10.244.0.0/16"),
                reason: "--never-proxy".into(),
            },
            Exclusion {
                range: range("10.100.0.1/32"),
                reason: "the API server's address".into(),
            },
        ],
        ..cluster(&["10.96.0.0/16", "10.244.0.0/24", "10.100.0.0/16"])
    };
    let plan = plan(&wanted, &[]);
    assert_eq!(plan.ranges[0].state, RangeState::Routed);
    assert_eq!(excepted(&plan.ranges[0]), ["10.96.0.0/17"]);
    assert_eq!(plan.ranges[1].state, RangeState::Excluded);
    assert_eq!(plan.ranges[1].reason, "--never-proxy");
    assert_eq!(excepted(&plan.ranges[2]), ["10.100.0.1/32"]);
    let routed = routes(&plan);
    assert!(routed.contains(&"10.96.128.0/17".to_owned()), "{routed:?}");
    assert!(
        plan.routes
            .iter()
            .all(|r| !cidr::overlap(r, &range("10.96.0.0/17"))
                && !cidr::overlap(r, &range("10.100.0.1/32"))),
        "{routed:?}"
    );
    assert_eq!(plan.routes.len(), 1 + 16);
}

#[test]
fn never_proxy_wins_over_also_proxy_and_cuts_pieces_that_stay_off_the_machines_routes() {
    let machine = [path("10.0.0.0/12", "tun0")];
    let wanted = Wanted {
        never: vec![Exclusion {
            range: range("10.1.0.0/16"),
            reason: "--never-proxy".into(),
        }],
        ..cluster(&["10.0.0.0/8"])
    };
    let plan = plan(&wanted, &machine);
    // What is left of the /8 is routed, but nothing inside the VPN's /12.
    assert!(
        plan.routes
            .iter()
            .all(|r| !cidr::overlap(r, &range("10.0.0.0/12"))),
        "{:?}",
        routes(&plan)
    );
    assert!(plan.routes.contains(&range("10.128.0.0/9")));
    assert_eq!(excepted(&plan.ranges[0]), ["10.0.0.0/12", "10.1.0.0/16"]);

    let both = Wanted {
        also: vec![range("10.96.0.0/16")],
        never: vec![Exclusion {
            range: range("10.96.0.0/16"),
            reason: "--never-proxy".into(),
        }],
        ..Wanted::default()
    };
    let plan = super::plan(&both, &[]);
    assert!(plan.routes.is_empty());
    assert_eq!(plan.ranges[0].state, RangeState::Excluded);
}

#[test]
fn default_like_routes_do_not_count_and_earlier_tables_cannot_be_outranked() {
    let machine = [
        path("0.0.0.0/1", "tun0"),
        path("128.0.0.0/1", "tun0"),
        MachineRoute {
            before_main: true,
            description: "10.96.0.0/16 dev tailscale0 table 52".into(),
            ..path("10.96.0.0/16", "tailscale0")
        },
    ];
    let wanted = Wanted {
        also: vec![range("10.96.0.0/16")],
        ..cluster(&["10.96.0.0/16", "10.244.0.0/16"])
    };
    let plan = plan(&wanted, &machine);
    assert_eq!(routes(&plan), ["10.244.0.0/16"]);
    assert_eq!(plan.ranges[0].state, RangeState::Excluded);
    assert!(
        plan.ranges[0].except[0]
            .reason
            .contains("looked up before tunneld's"),
        "{:?}",
        plan.ranges[0]
    );
    assert_eq!(plan.ranges[1].state, RangeState::Routed);
}

#[test]
fn a_single_address_reject_route_cannot_be_outranked() {
    let plan = plan(&cluster(&["10.96.0.0/30"]), &[reject("10.96.0.1/32")]);
    assert_eq!(
        routes(&plan),
        ["10.96.0.0/32", "10.96.0.2/31"],
        "everything but the /32"
    );
    assert_eq!(excepted(&plan.ranges[0]), ["10.96.0.1/32"]);
}

#[test]
fn a_range_another_kubedev_tunneld_routes_is_left_to_it_and_said_so() {
    let machine = [
        path("0.0.0.0/0", "eth0"),
        path("10.96.0.0/17", "kubedev-tun0"),
    ];
    let plan = plan(&cluster(&["10.96.0.0/17", "10.244.0.0/16"]), &machine);
    assert_eq!(routes(&plan), ["10.244.0.0/16"]);
    let left = &plan.ranges[0];
    assert_eq!(left.state, RangeState::Machine);
    assert!(
        left.reason
            .starts_with("another kubedev tunneld on this machine routes it"),
        "{}",
        left.reason
    );
    assert_eq!(left.via.as_deref(), Some("10.96.0.0/17 dev kubedev-tun0"));
}

#[test]
fn ipv6_ranges_are_planned_against_the_ipv6_routes_alone() {
    let machine = [
        path("0.0.0.0/0", "eth0"),
        path("::/0", "eth0"),
        path("fd00::/64", "eth0"),
        path("fd4b:6b64:244::/64", "kubedev0"),
        reject("fd4b:6b64:244::/56"),
        reject("10.96.0.0/16"),
    ];
    let wanted = cluster(&["fd4b:6b64:96::/112", "fd4b:6b64:244::/56", "10.96.0.0/16"]);
    let plan = plan(&wanted, &machine);
    let v6_service = &plan.ranges[0];
    assert_eq!(v6_service.state, RangeState::Routed);
    assert_eq!(
        v6_service.reason,
        "this machine reaches it only through its default route"
    );
    let v6_pods = &plan.ranges[1];
    assert_eq!(v6_pods.state, RangeState::Routed);
    assert_eq!(
        excepted(v6_pods),
        ["fd4b:6b64:244::/64"],
        "the bridge keeps its pods"
    );
    assert!(
        v6_pods.reason.contains("only rejects it"),
        "{}",
        v6_pods.reason
    );
    let routed = routes(&plan);
    assert!(
        routed.contains(&"fd4b:6b64:96::/112".to_owned()),
        "{routed:?}"
    );
    assert!(
        routed.contains(&"fd4b:6b64:244:80::/57".to_owned()),
        "{routed:?}"
    );
    assert!(
        !routed.iter().any(|r| r == "fd4b:6b64:244::/56"),
        "halves, not the rejected range"
    );
    assert!(routed.contains(&"10.96.0.0/17".to_owned()), "{routed:?}");
}
