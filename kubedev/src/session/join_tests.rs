//! Joining while the session that added the agent still starts: the join waits for the
//! Service to turn to the agent, and changes nothing if it never does.

use serde_json::json;
use tests_fake_api::{FakeApi, NAMESPACE};

use super::cluster_tests::plan;
use super::*;

#[tokio::test(start_paused = true)]
async fn a_join_before_the_service_turns_to_the_agent_waits_and_changes_nothing_if_it_never_does() {
    let fake = FakeApi::with_web_app(json!(8080));
    let original = fake.service("web");
    let alice = plan("alice", Some("alice"));
    start(&fake.client(), NAMESPACE, &alice, |_| {})
        .await
        .expect("alice starts");
    let pointed = fake.service("web");
    // As it is while alice's pods are not ready yet: the Service not turned.
    fake.add_service(original);
    let before = fake.deployment("web");

    let bob = plan("bob", Some("bob"));
    let refused = start(&fake.client(), NAMESPACE, &bob, |_| {})
        .await
        .expect_err("never turned");
    assert!(
        refused.to_string().contains("has not turned it there"),
        "{refused}"
    );
    assert_eq!(fake.deployment("web"), before, "bob not recorded");

    fake.add_service(pointed);
    let joined = start(&fake.client(), NAMESPACE, &bob, |_| {})
        .await
        .expect("bob joins once it has");
    let names: Vec<&str> = joined.record.sessions().map(|s| s.name).collect();
    assert_eq!(names, ["alice", "bob"]);
}
