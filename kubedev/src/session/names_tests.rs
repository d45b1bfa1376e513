//! Session names are unique in a namespace: `leave NAME` and tunneld know a session by it.

use serde_json::json;
use tests_fake_api::{FakeApi, NAMESPACE, web_deployment};

use super::cluster_tests::plan;
use super::*;

#[tokio::test(start_paused = true)]
async fn a_name_in_use_on_another_workload_is_refused_before_anything_changes() {
    let fake = FakeApi::with_web_app(json!("http"));
    let mut api = web_deployment();
    api["metadata"]["name"] = json!("api");
    fake.add_deployment(api);
    start(&fake.client(), NAMESPACE, &plan("dev", None), |_| {})
        .await
        .expect("the first dev starts");
    let before = fake.deployment("api");

    let mut on_api = plan("dev", None);
    on_api.workload = "api".parse().expect("workload");
    let refused = start(&fake.client(), NAMESPACE, &on_api, |_| {})
        .await
        .expect_err("a second dev");
    assert!(
        refused.to_string().contains("already on deployment/web"),
        "{refused}"
    );
    assert_eq!(fake.deployment("api"), before, "untouched");
}
