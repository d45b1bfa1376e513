//! Starting, joining and leaving sessions against a fake API server: what reaches the
//! cluster, and that leaving puts back exactly what was there.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::inject::AGENT_CONTAINER;
use crate::mode::Mode;
use kubedev_protocol::HttpFilter;
use tests_fake_api::{FakeApi, NAMESPACE};

pub(super) fn plan(name: &str, filter: Option<&str>) -> Plan {
    Plan {
        mode: Mode::Intercept,
        name: name.into(),
        workload: "web".parse().expect("workload"),
        container: None,
        agent_image: "kubedev-agent:test".into(),
        ports: vec!["3000".parse().expect("port")],
        service: None,
        address: "127.0.0.1".into(),
        filter: filter.map(|value| HttpFilter {
            headers: vec![("x-dev".into(), value.into())],
            path_prefix: None,
        }),
        wiretap: false,
        tls_secret: None,
        timeout: Duration::from_secs(30),
        owner: format!("run-{name}"),
        agent_resources: crate::inject::default_agent_resources(),
        pause_flux: false,
    }
}

async fn leave_session(fake: &FakeApi, plan: &Plan, owner: Option<&str>) -> Left {
    leave(
        &fake.client(),
        NAMESPACE,
        &plan.workload,
        &plan.name,
        owner,
        plan.timeout,
        |_| {},
    )
    .await
    .expect("leave")
}

fn containers(object: &Value) -> Vec<&str> {
    object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

fn annotations(object: &Value) -> &Value {
    &object["metadata"]["annotations"]
}

#[tokio::test(start_paused = true)]
async fn an_intercept_injects_the_agent_and_leaving_restores_the_template_exactly() {
    let fake = FakeApi::with_web_app(json!("http"));
    let original = fake.deployment("web");
    let plan = plan("alice", None);

    let started = start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("start");
    let during = fake.deployment("web");
    assert_eq!(containers(&during), ["web", AGENT_CONTAINER]);
    let record = annotations(&during)[RECORD_ANNOTATION]
        .as_str()
        .expect("record");
    assert!(
        !record.contains(&started.token),
        "the record holds no token"
    );
    assert!(
        !during.to_string().contains(&started.token),
        "nor the template"
    );
    let secret = fake
        .secret(crate::inject::TOKENS_SECRET)
        .expect("the tokens' Secret");
    let stored = secret["data"]
        .as_object()
        .expect("data")
        .values()
        .next()
        .cloned();
    let encoded = base64_of(&started.token);
    assert_eq!(
        stored,
        Some(json!(encoded)),
        "the token, in the Secret only"
    );
    assert_eq!(started.forwards.len(), 1);
    assert_eq!(started.forwards[0].app_port, 8080);
    assert_eq!(started.forwards[0].local_port, 3000);
    assert!(started.agents.contains("app=web"), "{}", started.agents);

    assert_eq!(
        leave_session(&fake, &plan, Some(&plan.owner)).await,
        Left::Restored(Default::default())
    );
    let after = fake.deployment("web");
    assert_eq!(after["spec"]["template"], original["spec"]["template"]);
    assert!(annotations(&after).get(RECORD_ANNOTATION).is_none());
    let tokens = fake
        .secret(crate::inject::TOKENS_SECRET)
        .expect("the tokens' Secret");
    let left = tokens["data"].as_object().map_or(0, |data| data.len());
    assert_eq!(left, 0, "the token went with the agent: {tokens}");
}

fn base64_of(text: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .expect("base64")
}

#[tokio::test(start_paused = true)]
async fn a_numeric_target_port_is_pointed_at_the_agent_and_put_back() {
    let fake = FakeApi::with_web_app(json!(8080));
    let original = fake.service("web");
    let plan = plan("alice", None);

    start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("start");
    assert_eq!(
        fake.service("web")["spec"]["ports"][0]["targetPort"],
        json!("kd-8080")
    );

    leave_session(&fake, &plan, None).await;
    assert_eq!(fake.service("web")["spec"], original["spec"]);
}

#[tokio::test(start_paused = true)]
async fn what_a_teammate_changed_during_the_session_stays_after_leave() {
    let fake = FakeApi::with_web_app(json!(8080));
    let plan = plan("alice", None);
    start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("start");
    // A teammate's `kubectl set env -c web`, `scale --replicas 3` and a new Service port.
    let mut deployment = fake.deployment("web");
    let web = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    web["env"] = json!([{"name": "TEAMMATE_FLAG", "value": "on"}]);
    deployment["spec"]["replicas"] = json!(3);
    fake.add_deployment(deployment);
    let mut service = fake.service("web");
    let metrics = json!({"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"});
    service["spec"]["ports"]
        .as_array_mut()
        .expect("ports")
        .push(metrics.clone());
    fake.add_service(service);

    let Left::Restored(changes) = leave_session(&fake, &plan, None).await else {
        panic!("not restored");
    };
    let after = fake.deployment("web");
    assert_eq!(containers(&after), ["web"]);
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "TEAMMATE_FLAG", "value": "on"}])
    );
    assert_eq!(after["spec"]["replicas"], json!(3));
    let ports = &fake.service("web")["spec"]["ports"];
    assert_eq!(ports[0]["targetPort"], json!(8080));
    assert_eq!(ports[1], metrics);
    assert_eq!(
        changes.kept,
        [
            "service/web spec.ports[metrics]",
            "spec.template.spec.containers[web].env",
            "spec.replicas (2 -> 3)"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_that_conflicts_is_redone_from_a_fresh_read() {
    let fake = FakeApi::with_web_app(json!("http"));
    fake.refuse_writes(2);

    start(&fake.client(), NAMESPACE, &plan("alice", None), |_| {})
        .await
        .expect("start after two conflicts");
    assert_eq!(
        containers(&fake.deployment("web")),
        ["web", AGENT_CONTAINER]
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_intercept_joins_the_agent_without_restarting_the_pods() {
    // A named targetPort, and a number (which the first session pointed at the agent).
    for target in [json!("http"), json!(8080)] {
        let fake = FakeApi::with_web_app(target);
        let (alice, bob) = (plan("alice", Some("alice")), plan("bob", Some("bob")));
        start(&fake.client(), NAMESPACE, &alice, |_| {})
            .await
            .expect("alice starts");
        let alone = fake.deployment("web");

        let joined = start(&fake.client(), NAMESPACE, &bob, |_| {})
            .await
            .expect("bob joins");
        let shared = fake.deployment("web");
        assert_eq!(shared["spec"]["template"], alone["spec"]["template"]);
        let names: Vec<&str> = joined.record.sessions().map(|s| s.name).collect();
        assert_eq!(names, ["alice", "bob"]);
        // Bob's agents are the pods alice's session labelled.
        assert!(joined.agents.ends_with("=alice"), "{}", joined.agents);

        assert_eq!(
            leave_session(&fake, &bob, Some(&bob.owner)).await,
            Left::OthersRemain(1)
        );
        assert_eq!(
            fake.deployment("web")["spec"]["template"],
            alone["spec"]["template"]
        );
        assert_eq!(
            leave_session(&fake, &alice, Some(&alice.owner)).await,
            Left::Restored(Default::default())
        );
        assert_eq!(containers(&fake.deployment("web")), ["web"]);
    }
}

#[tokio::test(start_paused = true)]
async fn an_intercept_without_a_filter_is_refused_on_a_taken_workload() {
    let fake = FakeApi::with_web_app(json!("http"));
    start(&fake.client(), NAMESPACE, &plan("alice", None), |_| {})
        .await
        .expect("alice starts");
    let writes = fake.write_count();

    let err = start(&fake.client(), NAMESPACE, &plan("bob", None), |_| {})
        .await
        .expect_err("bob is refused");
    assert!(matches!(err, SessionError::Refused(_)), "{err}");
    assert_eq!(fake.write_count(), writes);
}

#[tokio::test(start_paused = true)]
async fn leaving_changes_nothing_when_the_session_is_absent_or_another_runs() {
    let fake = FakeApi::with_web_app(json!("http"));
    let alice = plan("alice", None);
    assert_eq!(
        leave_session(&fake, &alice, None).await,
        Left::NotThere,
        "nothing started yet"
    );
    start(&fake.client(), NAMESPACE, &alice, |_| {})
        .await
        .expect("start");
    let writes = fake.write_count();

    assert_eq!(
        leave_session(&fake, &alice, Some("run-someone-else")).await,
        Left::NotOwned
    );
    assert_eq!(
        leave_session(&fake, &plan("ghost", None), None).await,
        Left::NotThere
    );
    assert_eq!(fake.write_count(), writes);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_after_changing_the_workload_puts_it_back() {
    let fake = FakeApi::with_web_app(json!(8080));
    let original = fake.deployment("web");
    fake.forbid_service_writes();

    let err = start(&fake.client(), NAMESPACE, &plan("alice", None), |_| {})
        .await
        .expect_err("the Service cannot be changed");
    let SessionError::RolledBack { source, .. } = &err else {
        panic!("not rolled back: {err}");
    };
    assert!(
        source
            .to_string()
            .contains("not allowed to update services"),
        "{source}"
    );
    let after = fake.deployment("web");
    assert_eq!(after["spec"]["template"], original["spec"]["template"]);
    assert!(annotations(&after).get(RECORD_ANNOTATION).is_none());
}

/// The session record on `web`, which must read.
async fn recorded(fake: &FakeApi) -> Record {
    let workload = crate::workload::Workload::get(
        &fake.client(),
        NAMESPACE,
        &"web".parse().expect("workload"),
    )
    .await
    .expect("web");
    record_of(&workload)
        .expect("the record reads")
        .expect("a record")
}

/// Two runs of a plugin starting on one workload at the same moment, each with its lease.
async fn race(fake: &FakeApi, first: &Plan, second: &Plan) -> [Result<Started, SessionError>; 2] {
    for plan in [first, second] {
        let holder = lease::Holder {
            owner: plan.owner.clone(),
            host: "laptop".into(),
            user: plan.name.clone(),
        };
        lease::take_lease(
            &fake.client(),
            NAMESPACE,
            &holder,
            &plan.name,
            "deployment/web",
            Duration::from_secs(60),
        )
        .await
        .expect("lease");
    }
    let client = fake.client();
    let (a, b) = tokio::join!(
        start(&client, NAMESPACE, first, |_| {}),
        start(&client, NAMESPACE, second, |_| {})
    );
    [a, b]
}

#[tokio::test(start_paused = true)]
async fn two_runs_racing_for_one_workload_leave_one_winner_and_an_exact_restore() {
    let fake = FakeApi::with_web_app(json!("http"));
    let original = fake.deployment("web");
    for round in 0..10 {
        let (alice, bob) = (plan("alice", None), plan("bob", None));
        let (first, second) = if round % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        let results = race(&fake, first, second).await;
        let won: Vec<&Plan> = [first, second]
            .into_iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(plan, _)| plan)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: one wins");
        let refusal = results
            .iter()
            .find_map(|result| result.as_ref().err())
            .expect("one refused")
            .to_string();
        let winner = if won[0].name == "alice" {
            "alice@laptop"
        } else {
            "bob@laptop"
        };
        assert!(
            refusal.contains(&format!("intercept {:?} is already on it", won[0].name))
                && refusal.contains(&format!("(held by {winner})")),
            "round {round}: {refusal}"
        );
        let record = recorded(&fake).await;
        assert_eq!(record.name, won[0].name);
        assert!(record.joined.is_empty());

        assert_eq!(
            leave_session(&fake, won[0], Some(&won[0].owner)).await,
            Left::Restored(Default::default())
        );
        assert_eq!(
            fake.deployment("web")["spec"]["template"],
            original["spec"]["template"],
            "round {round}: restored exactly"
        );
        for plan in [&alice, &bob] {
            lease::end_lease(&fake.client(), NAMESPACE, &plan.owner)
                .await
                .expect("end lease");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn two_filtered_intercepts_racing_both_get_in_and_the_last_to_leave_restores() {
    let fake = FakeApi::with_web_app(json!("http"));
    let original = fake.deployment("web");
    for round in 0..10 {
        let (alice, bob) = (plan("alice", Some("alice")), plan("bob", Some("bob")));
        let results = race(&fake, &alice, &bob).await;
        assert!(
            results.iter().all(Result::is_ok),
            "round {round}: {results:?}"
        );
        let record = recorded(&fake).await;
        let mut names: Vec<&str> = record.sessions().map(|s| s.name).collect();
        names.sort_unstable();
        assert_eq!(names, ["alice", "bob"], "round {round}");

        let (first, last) = if round % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        assert_eq!(
            leave_session(&fake, first, Some(&first.owner)).await,
            Left::OthersRemain(1)
        );
        assert_eq!(
            leave_session(&fake, last, Some(&last.owner)).await,
            Left::Restored(Default::default())
        );
        assert_eq!(
            fake.deployment("web")["spec"]["template"],
            original["spec"]["template"],
            "round {round}: restored exactly"
        );
        assert!(
            fake.lease("kubedev-run-alice").is_none() && fake.lease("kubedev-run-bob").is_none()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_workload_whose_pods_cannot_be_selected_is_refused_before_it_changes() {
    let fake = FakeApi::default();
    let mut web = tests_fake_api::web_deployment();
    web["spec"]["selector"] = json!({
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
    });
    fake.add_deployment(web);
    let original = fake.deployment("web");
    let plan = Plan {
        mode: Mode::Ingest,
        ports: Vec::new(),
        ..plan("alice", None)
    };

    let refused = start(&fake.client(), NAMESPACE, &plan, |_| {}).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|err| err.to_string().contains("has no matchLabels selector")),
        "{refused:?}"
    );
    assert_eq!(fake.deployment("web"), original, "nothing was written");
    assert_eq!(fake.write_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn pausing_flux_marks_the_workload_and_service_for_the_session_only() {
    let fake = FakeApi::with_web_app(json!(8080));
    let (deployment, service) = (fake.deployment("web"), fake.service("web"));
    let mut plan = plan("alice", None);
    plan.pause_flux = true;
    start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("start");
    for object in [fake.deployment("web"), fake.service("web")] {
        assert_eq!(annotations(&object)[FLUX_RECONCILE], json!(FLUX_PAUSED));
    }

    leave_session(&fake, &plan, None).await;
    for (before, after) in [
        (deployment, fake.deployment("web")),
        (service, fake.service("web")),
    ] {
        assert!(annotations(&after).get(FLUX_RECONCILE).is_none(), "{after}");
        assert_eq!(after["spec"]["template"], before["spec"]["template"]);
        assert_eq!(after["spec"]["ports"], before["spec"]["ports"]);
    }
}
