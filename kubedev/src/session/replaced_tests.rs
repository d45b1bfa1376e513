//! Restoring from the record last seen, once the workload was replaced whole and lost its
//! own: what the session changed elsewhere comes back, and a session started since keeps
//! everything of its own.

use serde_json::json;
use tests_fake_api::{FakeApi, NAMESPACE, web_deployment};

use super::cluster_tests::plan;
use super::*;

/// What restoring `plan`'s session from `record`, the record last seen, does.
async fn restore_from(fake: &FakeApi, plan: &Plan, record: &Record) -> Left {
    restore_unrecorded(
        &fake.client(),
        NAMESPACE,
        &plan.workload,
        record,
        plan.timeout,
    )
    .await
    .expect("restore")
}

#[tokio::test(start_paused = true)]
async fn a_workload_replaced_whole_gets_its_service_back_from_the_last_record() {
    let fake = FakeApi::with_web_app(json!(8080));
    let alice = plan("alice", None);
    let started = start(&fake.client(), NAMESPACE, &alice, |_| {})
        .await
        .expect("alice starts");
    fake.add_deployment(web_deployment());

    let left = restore_from(&fake, &alice, &started.record).await;
    assert_eq!(left, Left::Restored(Default::default()));
    let ports = &fake.service("web")["spec"]["ports"];
    assert_eq!(ports[0]["targetPort"], json!(8080), "the Service is back");
}

#[tokio::test(start_paused = true)]
async fn a_session_started_since_keeps_its_record_and_agent() {
    let fake = FakeApi::with_web_app(json!("http"));
    let alice = plan("alice", None);
    let started = start(&fake.client(), NAMESPACE, &alice, |_| {})
        .await
        .expect("alice starts");
    fake.add_deployment(web_deployment());
    let bob = plan("bob", None);
    start(&fake.client(), NAMESPACE, &bob, |_| {})
        .await
        .expect("bob starts on the replaced workload");
    let bobs = fake.deployment("web");

    let left = restore_from(&fake, &alice, &started.record).await;
    assert_eq!(left, Left::OthersRemain(1));
    let now = fake.deployment("web");
    assert_eq!(now["spec"], bobs["spec"]);
    assert_eq!(
        now["metadata"]["annotations"],
        bobs["metadata"]["annotations"]
    );
}
