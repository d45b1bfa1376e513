use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use serde_json::json;

use super::ports::{choose_container, container_serving, intercepted_ports, replaced_ports};
use super::service::selects;
use super::*;
use crate::control::Forward;
use crate::inject::TargetPort;
use crate::mode::Mode;
use crate::workload::WorkloadRef;
use kubedev_protocol::{HttpFilter, Transport};

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web", "tier": "front"}},
        "spec": {"containers": [
            {"name": "web", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "admin", "containerPort": 9000},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "containerPort": 53}
            ]},
            {"name": "proxy"}
        ]}
    }))
    .expect("template")
}

fn service(ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": ports}
    }))
    .expect("service")
}

fn plan(mode: Mode, ports: &[&str]) -> Plan {
    Plan {
        mode,
        name: "s".into(),
        workload: "web".parse().expect("workload"),
        container: Some("web".into()),
        agent_image: "agent".into(),
        ports: ports.iter().map(|p| p.parse().expect("port")).collect(),
        service: None,
        address: "127.0.0.1".into(),
        filter: None,
        wiretap: false,
        tls_secret: None,
        timeout: Duration::from_secs(1),
        owner: "run-a".into(),
        agent_resources: crate::inject::default_agent_resources(),
        pause_flux: false,
    }
}

fn forward(app_port: u16, local_port: u16) -> Forward {
    Forward {
        app_port,
        local_host: "127.0.0.1".into(),
        local_port,
        filter: None,
        transport: Transport::Tcp,
        wiretap: false,
    }
}

#[test]
fn port_mappings_parse_like_kubectl_port_forward() {
    let mapping: PortMapping = "8080:http".parse().expect("valid");
    assert_eq!(mapping.local, 8080);
    assert_eq!(mapping.remote.as_deref(), Some("http"));
    assert_eq!("3000".parse::<PortMapping>().expect("valid").remote, None);
    for bad in ["", "x", "80:", "70000"] {
        assert!(bad.parse::<PortMapping>().is_err(), "{bad:?}");
    }
}

#[test]
fn a_container_must_be_named_when_there_are_several() {
    let workload: WorkloadRef = "web".parse().expect("workload");
    let err = choose_container(&template(), None, &workload).expect_err("ambiguous");
    assert!(err.to_string().contains("choose one with -c"), "{err}");
    let err = choose_container(&template(), Some("db"), &workload).expect_err("unknown");
    assert!(
        err.to_string().contains("its containers: web, proxy"),
        "{err}"
    );
    assert_eq!(
        choose_container(&template(), Some("proxy"), &workload).expect("known"),
        "proxy"
    );
}

#[test]
fn intercept_finds_the_container_from_the_service_s_target_port() {
    let mut plan = plan(Mode::Intercept, &["3000"]);
    plan.container = None;
    let by_name = service(json!([{"port": 80, "targetPort": "http"}]));
    let by_number = service(json!([{"port": 80, "targetPort": 9000}]));
    let same_number = service(json!([{"port": 8080}]));
    for service in [by_name, by_number, same_number] {
        assert_eq!(
            container_serving(&service, &template(), &plan).expect("valid"),
            Some("web".to_owned())
        );
    }
    // A port no container declares (declaring is optional), or one both declare: -c it is.
    let undeclared = service(json!([{"port": 80, "targetPort": 7000}]));
    assert_eq!(
        container_serving(&undeclared, &template(), &plan).expect("valid"),
        None
    );
    let mut both: PodTemplateSpec = template();
    let containers = &mut both.spec.as_mut().expect("spec").containers;
    containers[1].ports = containers[0].ports.clone();
    let named = service(json!([{"port": 80, "targetPort": "http"}]));
    assert_eq!(
        container_serving(&named, &both, &plan).expect("valid"),
        None
    );
}

#[test]
fn services_select_by_every_label_of_their_selector() {
    let labels = template().metadata.and_then(|m| m.labels).expect("labels");
    assert!(selects(&service(json!([])), &labels));
    let mut other = service(json!([]));
    other.spec.as_mut().expect("spec").selector =
        Some(BTreeMap::from([("app".to_owned(), "db".to_owned())]));
    assert!(!selects(&other, &labels));
}

#[test]
fn intercepted_ports_follow_the_service_target() {
    let named = service(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
    let (targets, forwards) = intercepted_ports(
        &named,
        &template(),
        "web",
        &plan(Mode::Intercept, &["3000"]),
    )
    .expect("resolved");
    assert_eq!(targets, [TargetPort::Named("http".into())]);
    assert_eq!(forwards, [forward(8080, 3000)]);

    let numeric = service(json!([
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "admin", "port": 9000}
    ]));
    let (targets, forwards) = intercepted_ports(
        &numeric,
        &template(),
        "web",
        &plan(Mode::Intercept, &["3000:http", "3001:9000"]),
    )
    .expect("resolved");
    assert_eq!(
        targets,
        [TargetPort::Number(8080), TargetPort::Number(9000)]
    );
    assert_eq!(forwards, [forward(8080, 3000), forward(9000, 3001)]);
}

#[test]
fn intercepting_a_port_the_service_lacks_is_refused() {
    let two = service(json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]));
    let err = intercepted_ports(&two, &template(), "web", &plan(Mode::Intercept, &["3000"]))
        .expect_err("ambiguous");
    assert!(err.to_string().contains("several ports"), "{err}");
    let err = intercepted_ports(
        &two,
        &template(),
        "web",
        &plan(Mode::Intercept, &["3000:grpc"]),
    )
    .expect_err("unknown");
    assert!(
        err.to_string()
            .contains("service web has no TCP port \"grpc\"; its ports: http (80), admin (9000)"),
        "{err}"
    );
}

#[test]
fn replace_forwards_every_container_port_unless_mapped() {
    let mapped = &["3000:http", "5353:53"];
    let forwards =
        replaced_ports(&template(), "web", &plan(Mode::Replace, mapped)).expect("resolved");
    let udp = Forward {
        transport: Transport::Udp,
        ..forward(53, 5353)
    };
    assert_eq!(
        forwards,
        [
            forward(8080, 3000),
            forward(9000, 9000),
            udp,
            forward(53, 5353)
        ]
    );
    let err = replaced_ports(&template(), "web", &plan(Mode::Replace, &["3000:grpc"]))
        .expect_err("unknown");
    assert!(err.to_string().contains("declares no port grpc"), "{err}");
}

#[test]
fn tokens_are_fresh_hex() {
    let (a, b) = (random_id().expect("token"), random_id().expect("token"));
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

fn record(filter: Option<HttpFilter>) -> Record {
    Record {
        name: "alice".into(),
        filter,
        wiretap: false,
        joined: Vec::new(),
        mode: Mode::Intercept,
        container: "web".into(),
        template: json!({}),
        applied: None,
        services: Vec::new(),
        paused_flux: false,
        token_key: None,
        owner: Some("run-a".into()),
        replicas: None,
        managers: None,
    }
}

fn header(value: &str) -> HttpFilter {
    HttpFilter {
        headers: vec![("x-dev".into(), value.into())],
        path_prefix: None,
    }
}

/// Why an intercept (or, with `wiretap`, a wiretap) named `name` with `filter` may not
/// join `existing`.
fn refusal(
    existing: &Record,
    name: &str,
    mode: Mode,
    filter: Option<HttpFilter>,
    wiretap: bool,
) -> Option<String> {
    let plan = Plan {
        name: name.into(),
        filter,
        wiretap,
        tls_secret: None,
        ..plan(mode, &[])
    };
    super::join::refusal(existing, &plan)
}

#[test]
fn intercepts_share_a_workload_only_with_distinct_filters() {
    let filtered = record(Some(header("alice")));
    let bob = || Some(header("bob"));
    assert_eq!(
        refusal(&filtered, "bob", Mode::Intercept, bob(), false),
        None
    );

    let reason = |r: &Record, name: &str, mode: Mode, f: Option<HttpFilter>| {
        refusal(r, name, mode, f, false).expect("refused")
    };
    let same = Some(header("alice"));
    assert!(reason(&filtered, "bob", Mode::Intercept, same).contains("already takes"));
    let unfiltered = reason(&filtered, "bob", Mode::Intercept, None);
    assert!(
        unfiltered.contains("needs an HTTP filter") && unfiltered.contains("a --port for each")
    );
    assert!(reason(&filtered, "alice", Mode::Intercept, bob()).contains("choose another --name"));
    assert!(reason(&filtered, "bob", Mode::Replace, None).contains("it ends with `leave"));
    let everything = record(None);
    assert!(reason(&everything, "bob", Mode::Intercept, bob()).contains("takes every request"));
}

#[test]
fn wiretaps_share_with_any_intercept_and_take_nothing_from_them() {
    let everything = record(None);
    // A wiretap joins an intercept that takes every request, with or without a filter.
    assert_eq!(
        refusal(&everything, "tap", Mode::Intercept, None, true),
        None
    );
    let alice = Some(header("alice"));
    assert_eq!(
        refusal(&everything, "tap", Mode::Intercept, alice, true),
        None
    );
    // Its name must still be its own.
    let taken = refusal(&everything, "alice", Mode::Intercept, None, true);
    assert!(taken.is_some_and(|r| r.contains("choose another --name")));

    // Next to wiretaps alone, an intercept takes every request.
    let mut tapped = record(None);
    tapped.wiretap = true;
    tapped.joined.push(Joined {
        name: "tap-2".into(),
        filter: Some(header("bob")),
        wiretap: true,
        owner: None,
    });
    assert_eq!(
        refusal(&tapped, "carol", Mode::Intercept, None, false),
        None
    );
    let listed: Vec<bool> = tapped.sessions().map(|s| s.wiretap).collect();
    assert_eq!(listed, [true, true]);
}

/// Alice's intercept (run-a), which Bob's (run-b) joined.
fn shared() -> Record {
    let mut shared = record(Some(header("alice")));
    shared.joined.push(Joined {
        name: "bob".into(),
        filter: Some(header("bob")),
        wiretap: false,
        owner: Some("run-b".into()),
    });
    shared
}

#[test]
fn sessions_list_the_first_then_those_that_joined() {
    let shared = shared();
    let names: Vec<&str> = shared.sessions().map(|s| s.name).collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[test]
fn a_session_is_removed_only_by_its_run_or_by_anyone_without_one() {
    let mut shared = shared();
    assert_eq!(shared.remove("carol", None), Removal::NotThere);
    // Another run's session of the same name stays.
    assert_eq!(shared.remove("alice", Some("run-x")), Removal::NotOwned);
    assert_eq!(shared.sessions().count(), 2);
    // The first one leaving hands the agent, and its ownership record, to the next.
    assert_eq!(
        shared.remove("alice", Some("run-a")),
        Removal::OthersRemain(1)
    );
    assert_eq!(shared.name, "bob");
    assert_eq!(shared.filter, Some(header("bob")));
    assert_eq!(shared.owner.as_deref(), Some("run-b"));
    // `leave` by name, from anywhere.
    assert_eq!(shared.remove("bob", None), Removal::Last);
}

#[test]
fn only_the_sessions_container_counts_for_volumes() {
    let mut with_volumes = record(None);
    with_volumes.template = json!({"spec": {"containers": [
        {"name": "web"},
        {"name": "proxy", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    ]}});
    assert!(!with_volumes.container_has_volumes());
    with_volumes.container = "proxy".into();
    assert!(with_volumes.container_has_volumes());
}
