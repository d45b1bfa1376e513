//! Leases against a fake API server: a session whose lease ran out is restored by the next
//! run, exactly once, and its holder learns it lost the session; a live one is left alone.

use std::time::Duration;

use serde_json::{Value, json};

use super::cluster_tests::plan;
use super::lease::{Holder, Renewal, renew_lease, take_lease};
use super::*;
use tests_fake_api::{FakeApi, NAMESPACE};

fn holder(owner: &str, user: &str) -> Holder {
    Holder {
        owner: owner.into(),
        host: "laptop".into(),
        user: user.into(),
    }
}

/// Starts `plan` with a lease, as a plugin does.
async fn start_leased(fake: &FakeApi, plan: &Plan) {
    take_lease(
        &fake.client(),
        NAMESPACE,
        &holder(&plan.owner, "alice"),
        &plan.name,
        "deployment/web",
        Duration::from_secs(60),
    )
    .await
    .expect("lease");
    start(&fake.client(), NAMESPACE, plan, |_| {})
        .await
        .expect("start");
}

thread_local! {
    /// What the runs of a test (on its own thread) have seen of the leases, as one machine
    /// would keep it.
    static OBSERVATIONS: std::cell::RefCell<LeaseObservations> =
        std::cell::RefCell::new(LeaseObservations::in_memory());
}

/// Makes the lease of run `owner` as if this machine had seen it unchanged for long.
async fn let_run_out(fake: &FakeApi, owner: &str) {
    let leases = super::lease::leases_in(&fake.client(), NAMESPACE)
        .await
        .expect("leases");
    let lease = leases
        .iter()
        .find(|lease| lease.session_owner() == Some(owner))
        .expect("a lease");
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    observations(|seen| seen.seen_since(lease, long_ago));
}

fn observations<T>(use_them: impl FnOnce(&mut LeaseObservations) -> T) -> T {
    OBSERVATIONS.with(|seen| use_them(&mut seen.borrow_mut()))
}

async fn reclaim(fake: &FakeApi, by: &str) -> Vec<(Expired, Result<String, SessionError>)> {
    let mut seen = observations(std::mem::take);
    let reclaimed = reclaim_expired(
        &fake.client(),
        NAMESPACE,
        (&holder(by, "bob"), &mut seen),
        Duration::from_secs(30),
        |_| {},
    )
    .await
    .expect("reclaim");
    observations(|kept| *kept = seen);
    reclaimed
}

fn template(object: &Value) -> &Value {
    &object["spec"]["template"]
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_lease_ran_out_is_restored_once_by_the_next_run() {
    let fake = FakeApi::with_web_app(json!("http"));
    let original = fake.deployment("web");
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;

    assert!(
        reclaim(&fake, "run-bob").await.is_empty(),
        "live: left alone"
    );
    assert_ne!(template(&fake.deployment("web")), template(&original));

    let_run_out(&fake, &plan.owner).await;
    let reclaimed = reclaim(&fake, "run-bob").await;
    assert_eq!(reclaimed.len(), 1);
    let (expired, left) = &reclaimed[0];
    assert_eq!(expired.session, "web");
    assert_eq!(expired.holder, "alice@laptop");
    assert_eq!(left.as_ref().expect("restored"), "deployment/web restored");
    let after = fake.deployment("web");
    assert_eq!(template(&after), template(&original));
    assert!(
        after["metadata"]["annotations"]
            .get(RECORD_ANNOTATION)
            .is_none()
    );
    assert!(
        fake.lease("kubedev-run-web").is_none(),
        "the lease ends with it"
    );

    assert!(
        reclaim(&fake, "run-carol").await.is_empty(),
        "restored once"
    );
    let renewal = renew_lease(&fake.client(), NAMESPACE, &plan.owner)
        .await
        .expect("renew");
    assert!(matches!(renewal, Renewal::Lost { .. }), "{renewal:?}");
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_comes_back_during_the_restore_learns_who_took_its_session() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;
    let_run_out(&fake, &plan.owner).await;
    let lease = super::lease::leases_in(&fake.client(), NAMESPACE)
        .await
        .expect("leases")
        .remove(0);

    let taken = super::lease::take_over(
        &fake.client(),
        NAMESPACE,
        &lease,
        &holder("run-bob", "bob"),
        Duration::from_secs(60),
    )
    .await
    .expect("take over");
    assert!(taken);
    let renewal = renew_lease(&fake.client(), NAMESPACE, &plan.owner)
        .await
        .expect("renew");
    assert_eq!(
        renewal,
        Renewal::Lost {
            by: Some("bob@laptop".into())
        }
    );
    assert!(
        reclaim(&fake, "run-carol").await.is_empty(),
        "bob restores it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_after_it_was_read_is_not_taken_over() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;
    let_run_out(&fake, &plan.owner).await;
    let stale = super::lease::leases_in(&fake.client(), NAMESPACE)
        .await
        .expect("leases")
        .remove(0);

    let renewal = renew_lease(&fake.client(), NAMESPACE, &plan.owner)
        .await
        .expect("renew");
    assert_eq!(renewal, Renewal::Renewed, "the laptop woke up in time");
    let taken = super::lease::take_over(
        &fake.client(),
        NAMESPACE,
        &stale,
        &holder("run-bob", "bob"),
        Duration::from_secs(60),
    )
    .await
    .expect("take over");
    assert!(!taken);
    assert!(reclaim(&fake, "run-bob").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_session_without_a_lease_is_left_to_leave() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("start");
    let during = fake.deployment("web");
    assert!(reclaim(&fake, "run-bob").await.is_empty());
    assert_eq!(fake.deployment("web"), during);
}

#[tokio::test(start_paused = true)]
async fn leaving_ends_the_lease_and_a_lease_without_a_session_is_cleared_once_run_out() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;
    leave(
        &fake.client(),
        NAMESPACE,
        &plan.workload,
        &plan.name,
        None,
        plan.timeout,
        |_| {},
    )
    .await
    .expect("leave");
    assert!(fake.lease("kubedev-run-web").is_none());

    // A plugin that died between taking its lease and changing the workload.
    take_lease(
        &fake.client(),
        NAMESPACE,
        &holder("run-gone", "alice"),
        "web",
        "deployment/web",
        Duration::from_secs(60),
    )
    .await
    .expect("lease");
    assert!(reclaim(&fake, "run-bob").await.is_empty());
    assert!(fake.lease("kubedev-run-gone").is_some(), "live: kept");
    let_run_out(&fake, "run-gone").await;
    assert!(
        reclaim(&fake, "run-bob").await.is_empty(),
        "nothing to restore"
    );
    assert!(fake.lease("kubedev-run-gone").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_by_a_clock_far_behind_is_not_taken_for_run_out() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;
    // Its holder's clock is an hour behind this machine's.
    let name = format!("kubedev-{}", plan.owner);
    let mut lease = fake.lease(&name).expect("a lease");
    lease["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
    fake.put_lease(lease);

    assert!(reclaim(&fake, "run-bob").await.is_empty(), "first seen now");
    assert!(reclaim(&fake, "run-bob").await.is_empty(), "seen only just");
    let containers = &fake.deployment("web")["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers.as_array().map(Vec::len),
        Some(2),
        "still intercepted"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_no_record_or_live_lease_holds_are_swept_by_the_next_run() {
    let fake = FakeApi::with_web_app(json!("http"));
    let plan = plan("web", None);
    start_leased(&fake, &plan).await;
    let tokens = |fake: &FakeApi| -> Vec<String> {
        let secret = fake
            .secret(crate::inject::TOKENS_SECRET)
            .expect("the tokens' Secret");
        secret["data"]
            .as_object()
            .map(|data| data.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut secret = fake
        .secret(crate::inject::TOKENS_SECRET)
        .expect("the tokens' Secret");
    // The agent of a run whose workload was replaced under it, with no lease left.
    secret["data"]["deployment.gone.run-gone"] = json!("dG9rZW4=");
    let client = fake.client();
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, NAMESPACE);
    let object = serde_json::from_value(secret).expect("secret");
    api.replace(crate::inject::TOKENS_SECRET, &Default::default(), &object)
        .await
        .expect("planted");
    assert_eq!(tokens(&fake).len(), 2);

    assert!(reclaim(&fake, "run-bob").await.is_empty());
    assert_eq!(tokens(&fake), [format!("deployment.web.{}", plan.owner)]);
}
