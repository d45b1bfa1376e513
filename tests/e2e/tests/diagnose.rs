//! `diagnose`: every check against the real cluster, as the namespace's developer; a
//! failing check says what to do, and nothing is left in the namespace.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

async fn pods_in(ns: &TestNamespace) -> Vec<String> {
    ns.api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect()
}

#[tokio::test]
async fn every_check_passes_for_the_namespaces_developer_and_nothing_is_left() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "diagnose").await;
    let workstation = Workstation::create(&cluster);

    let output = workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &["diagnose", "-n", &ns.name, "-o", "json"],
    );
    let checks: serde_json::Value = serde_json::from_str(&output).expect("JSON");
    let outcome = |name: &str| {
        checks
            .as_array()
            .and_then(|checks| checks.iter().find(|check| check["name"] == name))
            .map(|check| (check["outcome"].clone(), check["found"].clone()))
            .unwrap_or_else(|| panic!("no check {name}: {checks}"))
    };
    for name in ["api server", "role", "agent image", "versions", "sshfs"] {
        assert_eq!(outcome(name).0, "ok", "{name}: {checks}");
    }
    let (_, image) = outcome("agent image");
    assert!(
        image
            .as_str()
            .is_some_and(|found| found.contains(&format!("(agent {})", env!("CARGO_PKG_VERSION")))),
        "the agent ran and said its version: {image}"
    );
    assert_eq!(outcome("cluster network").0, "skipped", "no tunneld yet");
    assert!(pods_in(&ns).await.is_empty(), "the trial pod is gone");

    // With a session live, the round trip through the tunnel is timed too.
    workstation.plugin_ok(&cluster, PLUGIN, &["connect", "--detach", "-n", &ns.name]);
    let report = workstation.plugin_ok(&cluster, PLUGIN, &["diagnose", "-n", &ns.name]);
    let tunnel = report
        .lines()
        .find(|line| line.contains(" tunnel "))
        .unwrap_or_else(|| panic!("no tunnel check: {report}"));
    assert!(
        tunnel.starts_with("ok ")
            && tunnel.contains("round trip to the agent in pod kubedev-connect-")
            && tunnel.contains(" ms (median of 5)"),
        "{report}"
    );
    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "connect", "-n", &ns.name]);
}

#[tokio::test]
async fn an_image_the_nodes_cannot_pull_fails_with_what_to_do() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "diagnose-image").await;
    let workstation = Workstation::create(&cluster);
    let missing = "10.201.0.1:5000/kubedev/no-such-agent:0.0.0";

    let output = workstation
        .plugin_command(&cluster, PLUGIN, &["diagnose", "-n", &ns.name])
        .env("KUBEDEV_AGENT_IMAGE", missing)
        .output()
        .expect("plugin runs");
    // The report is on stdout, as kubectl's output is.
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "a check failed: {report}");
    assert!(
        report.contains(&format!("FAILED   agent image      {missing}")),
        "{report}"
    );
    assert!(
        report.contains("make push-agent REGISTRY="),
        "what to do: {report}"
    );
    assert!(report.contains("ok       role"), "{report}");
    assert!(pods_in(&ns).await.is_empty(), "the trial pod is gone");
}
