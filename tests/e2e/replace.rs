//! `kubectl replace-container`: the container is gone from the pods while the session lasts,
//! all of its traffic reaches the workstation, and it comes back exactly on leave.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kubedev_e2e::workstation::Workstation;
use kubedev_e2e::{TestCluster, TestNamespace};
use serde_json::Value;

const PLUGIN: &str = "kubectl-replace_container";

async fn template(ns: &TestNamespace) -> Value {
    let deployment = ns
        .api::<Deployment>()
        .get("echo")
        .await
        .expect("deployment");
    serde_json::to_value(deployment.spec.map(|s| s.template)).expect("json")
}

async fn containers(ns: &TestNamespace) -> Vec<Vec<String>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=echo"))
        .await
        .expect("pods");
    pods.items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn the_container_is_replaced_by_the_workstation_until_leave() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = template(&ns).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "replacement");

    workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &["echo", "-n", &ns.name, "--port", "3000:http", "--detach"],
    );
    assert_eq!(containers(&ns).await, [["kubedev-agent"]]);
    let answer = ns
        .http_get("client", "echo:8080", "/r")
        .expect("GET through the service");
    assert_eq!(answer.trim(), "local replacement: GET /r HTTP/1.1");

    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "echo", "-n", &ns.name]);
    assert_eq!(containers(&ns).await, [["echo"]]);
    assert_eq!(template(&ns).await, before, "restored exactly");
}
