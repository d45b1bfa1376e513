//! Argo Rollouts, with the real Argo Rollouts controller of the test cluster: named bare, a
//! Rollout's pods get the agent through its own canary, the Service's requests reach the
//! workstation, and leave restores the pod template exactly.

use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// The Rollout's pod template as stored.
fn template(ns: &TestNamespace) -> Value {
    let stored = ns
        .kubectl_ok(&["get", "rollout/echo", "-o", "json"])
        .expect("the rollout");
    let rollout: Value = serde_json::from_str(&stored).expect("JSON");
    rollout["spec"]["template"].clone()
}

/// A namespace with Rollout `echo` of two replicas and `strategy`, a client pod and a
/// workstation; the Rollout's template as stored before anything else.
async fn setup(prefix: &str, strategy: Value) -> (TestCluster, TestNamespace, Workstation, Value) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo_rollout("echo", 2, strategy)
        .await
        .expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = template(&ns);
    let workstation = Workstation::create(&cluster);
    (cluster, ns, workstation, before)
}

#[tokio::test]
async fn a_rollouts_requests_reach_the_workstation_until_leave_restores_it() {
    let canary = serde_json::json!({"canary": {}});
    let (cluster, ns, workstation, before) = setup("intercept-ro", canary).await;
    let _server = workstation.serve_http(3000, "laptop");
    let namespace = ["-n", ns.name.as_str()];

    let start = [&["echo", "--port", "3000:http", "--detach"], &namespace[..]].concat();
    workstation.plugin_ok(&cluster, PLUGIN, &start);
    for _ in 0..4 {
        assert_eq!(
            ns.http_get("client", "echo:8080", "/ro")
                .expect("GET")
                .trim(),
            "local laptop: GET /ro HTTP/1.1",
            "every replica's requests reach the workstation"
        );
    }
    let list = [&["list", "-o", "json"], &namespace[..]].concat();
    let listed: Value =
        serde_json::from_str(&workstation.plugin_ok(&cluster, PLUGIN, &list)).expect("JSON");
    assert_eq!(listed[0]["workload"], "rollout/echo", "{listed}");
    assert_eq!(listed[0]["linkedPods"].as_array().map(Vec::len), Some(2));

    workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[&["leave", "echo"], &namespace[..]].concat(),
    );
    assert_eq!(template(&ns), before, "restored exactly");
    ns.wait_for_the_echo_app("/after");
}

/// A canary that pauses at a step holds the agent back until someone promotes it: the start
/// gives up at its timeout, says so and how to promote, and restores the template exactly.
#[tokio::test]
async fn a_canary_paused_by_its_steps_is_named_and_the_rollout_restored() {
    let paused = serde_json::json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}});
    let (cluster, ns, workstation, before) = setup("intercept-ro-pause", paused).await;

    let args = [
        "echo",
        "--port",
        "3000:http",
        "--timeout",
        "20s",
        "-n",
        &ns.name,
    ];
    let refused = workstation.plugin(&cluster, PLUGIN, &args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("the rollout is paused by its strategy (CanaryPauseStep)")
            && stderr.contains("kubectl argo rollouts promote echo"),
        "{stderr}"
    );
    assert_eq!(template(&ns), before, "restored exactly");
    ns.wait_for_the_echo_app("/after");
}

#[tokio::test]
async fn a_rollout_without_a_template_of_its_own_is_refused_before_anything_changes() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "intercept-ro-ref").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    let rollout = serde_json::json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "echo-ref"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "echo"}},
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "echo"},
            "strategy": {"canary": {}}
        }
    });
    ns.apply_json(&rollout).expect("rollout");
    // The controller annotates a new Rollout with its revision; snapshot it after that.
    ns.kubectl_ok(&[
        "wait",
        "rollout/echo-ref",
        r"--for=jsonpath={.metadata.annotations.rollout\.argoproj\.io/revision}=1",
        "--timeout=120s",
    ])
    .expect("the controller saw the rollout");
    let stored = || {
        ns.kubectl_ok(&[
            "get",
            "rollout/echo-ref",
            "-o=jsonpath={.metadata.generation} {.metadata.annotations} {.spec}",
        ])
    };
    let before = stored().expect("stored");
    let workstation = Workstation::create(&cluster);

    let refused = workstation.plugin(
        &cluster,
        PLUGIN,
        &["ro/echo-ref", "--port", "3000:http", "-n", &ns.name],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("rollout/echo-ref has no pod template of its own"),
        "{stderr}"
    );
    assert_eq!(stored().expect("stored"), before, "nothing changed");
}
