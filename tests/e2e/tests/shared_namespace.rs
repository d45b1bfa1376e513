//! A namespace shared with teammates: what they change on a workload during a session
//! stays after it ends.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use tests_e2e::workstation::{LocalServer, Workstation};
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

struct Setup {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    _server: LocalServer,
}

async fn setup(prefix: &str) -> Setup {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let workstation = Workstation::create(&cluster);
    let server = workstation.serve_http(3000, "laptop");
    Setup {
        cluster,
        ns,
        workstation,
        _server: server,
    }
}

impl Setup {
    /// Runs the plugin in the test's namespace; its stdout and stderr.
    fn plugin_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        let output = self.workstation.plugin(&self.cluster, PLUGIN, &all);
        assert!(output.status.success(), "{PLUGIN} {args:?}: {output:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    async fn deployment(&self) -> Value {
        let deployment = self.ns.api::<Deployment>().get("echo").await.expect("echo");
        serde_json::to_value(deployment).expect("json")
    }

    /// Waits until `count` pods of the session are linked.
    fn wait_linked(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let listed: Value =
                serde_json::from_str(&self.plugin_ok(&["list", "-o", "json"])).expect("json");
            let linked = listed[0]["linked_pods"].as_array().map_or(0, Vec::len);
            if linked == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} pods never linked: {listed}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[tokio::test]
async fn a_teammates_env_var_and_scale_made_during_an_intercept_stay_after_leave() {
    let s = setup("teammate").await;
    let before = s.deployment().await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);

    s.ns.kubectl_ok(&[
        "set",
        "env",
        "deploy/echo",
        "-c",
        "echo",
        "TEAMMATE_FLAG=on",
    ])
    .expect("set env");
    s.ns.kubectl_ok(&["scale", "deploy/echo", "--replicas", "3"])
        .expect("scale");
    s.ns.wait_deployment_ready("echo")
        .await
        .expect("rolled out");
    s.wait_linked(3);
    let answer =
        s.ns.http_get("client", "echo:8080", "/during")
            .expect("GET");
    assert_eq!(answer.trim(), "local laptop: GET /during HTTP/1.1");

    let left = s.plugin_ok(&["leave", "echo"]);
    assert!(
        left.contains("kept changes made during the session to")
            && left.contains("spec.template.spec.containers[echo].env"),
        "the plugin says what it kept: {left}"
    );
    let after = s.deployment().await;
    let template = &after["spec"]["template"];
    let mut wanted = before["spec"]["template"].clone();
    wanted["spec"]["containers"][0]["env"] = json!([{"name": "TEAMMATE_FLAG", "value": "on"}]);
    assert_eq!(
        template, &wanted,
        "the original, with the teammate's env var"
    );
    assert_eq!(after["spec"]["replicas"], json!(3));
    assert!(
        after["metadata"]["annotations"]
            .get(kubedev::session::RECORD_ANNOTATION)
            .is_none()
    );
    s.ns.wait_deployment_ready("echo")
        .await
        .expect("rolled out");
    let answer = s.ns.http_get("client", "echo:8080", "/after").expect("GET");
    assert!(answer.starts_with("echo from echo-"), "{answer}");
}
