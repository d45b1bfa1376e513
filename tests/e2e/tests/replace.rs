//! `kubectl replace-container`: the container is gone from the pods while the session lasts
//! (sidecars keep running), all of its traffic (TCP and UDP) reaches the workstation, and
//! it comes back exactly on leave.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::json;
use tests_e2e::workstation::Workstation;
use tests_e2e::{CLIENT_IMAGE, TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-replace_container";

/// The containers of every running echo pod, sorted.
async fn containers(ns: &TestNamespace) -> Vec<Vec<String>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=echo"))
        .await
        .expect("pods");
    let mut all: Vec<Vec<String>> = pods
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let mut names: Vec<String> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
                .collect();
            names.sort();
            names
        })
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn the_container_is_replaced_by_the_workstation_and_sidecars_stay() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    let sidecar = json!([{
        "op": "add",
        "path": "/spec/template/spec/containers/-",
        "value": {"name": "sidecar", "image": CLIENT_IMAGE, "imagePullPolicy": "Never"}
    }]);
    ns.kubectl_ok(&[
        "patch",
        "deployment",
        "echo",
        "--type=json",
        "-p",
        &sidecar.to_string(),
    ])
    .expect("add a sidecar");
    ns.wait_deployment_ready("echo").await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "replacement");
    let _udp_server = workstation.serve_udp(9000, "replacement");

    // Two containers: the one to replace must be named.
    let ambiguous = workstation.plugin(&cluster, PLUGIN, &["echo", "-n", &ns.name, "--detach"]);
    let stderr = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(stderr.contains("choose one with -c"), "{stderr}");

    workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[
            "echo",
            "-c",
            "echo",
            "-n",
            &ns.name,
            "--port",
            "3000:http",
            "--detach",
        ],
    );
    assert_eq!(containers(&ns).await, [["kubedev-agent", "sidecar"]]);
    let answer = ns
        .http_get("client", "echo:8080", "/r")
        .expect("GET through the service");
    assert_eq!(answer.trim(), "local replacement: GET /r HTTP/1.1");
    // Its UDP port too: datagrams reach the workstation and the answers come back.
    let answer = ns
        .exec("client", &["probe", "udp", "echo:9000", "ping"])
        .expect("UDP through the service");
    assert_eq!(answer.trim(), "local replacement: ping");

    // A second replace of the same container is refused.
    let again = workstation.plugin(
        &cluster,
        PLUGIN,
        &[
            "echo", "-c", "echo", "-n", &ns.name, "--name", "again", "--detach",
        ],
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already has a kubedev session"), "{stderr}");

    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "echo", "-n", &ns.name]);
    assert_eq!(containers(&ns).await, [["echo", "sidecar"]]);
    assert_eq!(ns.echo_template(false).await, before, "restored exactly");
}

#[tokio::test]
async fn every_replica_of_a_statefulset_is_replaced() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace-sts").await;
    ns.deploy_echo_statefulset("echo", 3)
        .await
        .expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.echo_template(true).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "replacement");

    workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[
            "statefulset/echo",
            "-n",
            &ns.name,
            "--port",
            "3000:http",
            "--detach",
        ],
    );
    assert_eq!(containers(&ns).await, vec![vec!["kubedev-agent"]; 3]);
    for attempt in 0..9 {
        let path = format!("/s{attempt}");
        let answer = ns
            .http_get("client", "echo:8080", &path)
            .expect("GET through the service");
        assert_eq!(
            answer.trim(),
            format!("local replacement: GET {path} HTTP/1.1")
        );
    }
    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "echo", "-n", &ns.name]);
    assert_eq!(containers(&ns).await, vec![vec!["echo"]; 3]);
    assert_eq!(ns.echo_template(true).await, before, "restored exactly");
}

#[tokio::test]
async fn a_replace_whose_machine_died_refuses_connections_and_is_restored_after_its_lease() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace-machine-dies").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "replacement");
    let args = [
        "echo",
        "-n",
        &ns.name,
        "--port",
        "3000:http",
        "--lease",
        "6s",
    ];
    let mut plugin =
        workstation.spawn_plugin_logged(&cluster, PLUGIN, &args, &workstation.file("plugin.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ns
        .http_get("client", "echo:8080", "/live")
        .is_ok_and(|answer| answer.starts_with("local replacement"))
    {
        assert!(std::time::Instant::now() < deadline, "never live");
        assert!(
            plugin.try_wait().expect("wait").is_none(),
            "the plugin exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let tunneld = workstation.plugins_tunneld_pid(&cluster, PLUGIN);

    tests_e2e::freeze_then_kill(&[plugin.id(), tunneld]);
    plugin.wait().expect("reaped");
    // No container is left to answer, and no workstation: connections are refused or
    // closed at once, never left hanging until the client's timeout.
    for attempt in 0..3 {
        let refused = ns
            .http_get("client", "echo:8080", &format!("/gone-{attempt}"))
            .expect_err("nothing answers");
        let message = format!("{refused:#}");
        assert!(
            !message.contains("timed out") && !message.contains("temporarily unavailable"),
            "{message}"
        );
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let said = loop {
        let listed = workstation.plugin(&cluster, PLUGIN, &["list", "-n", &ns.name]);
        let stderr = String::from_utf8_lossy(&listed.stderr).into_owned();
        if stderr.contains("its lease ran out") {
            break stderr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reclaimed: {stderr}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    assert!(said.contains("deployment/echo restored"), "{said}");
    assert_eq!(ns.echo_template(false).await, before, "restored exactly");
    assert_eq!(containers(&ns).await, [["echo"]]);
}

/// Every pod of `app` (terminating ones too) that still runs container `container`.
async fn pods_running(ns: &TestNamespace, app: &str, container: &str) -> Vec<String> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("pods");
    pods.items
        .iter()
        .filter(|pod| {
            pod.spec
                .iter()
                .any(|spec| spec.containers.iter().any(|c| c.name == container))
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn replace_returns_only_once_no_pod_runs_the_replaced_container() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace-gone").await;
    // A queue consumer whose PID 1 is a shell that ignores SIGTERM: its pods keep running
    // through their whole grace period once told to stop.
    let consumer = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "consumer"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "consumer"}},
            "template": {
                "metadata": {"labels": {"app": "consumer"}},
                "spec": {
                    "terminationGracePeriodSeconds": 12,
                    "containers": [{
                        "name": "worker",
                        "image": CLIENT_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
                    }]
                }
            }
        }
    });
    ns.apply_json(&consumer).expect("the consumer");
    ns.wait_deployment_ready("consumer")
        .await
        .expect("consumer ready");
    let workstation = Workstation::create(&cluster);

    let args = ["consumer", "-n", &ns.name, "--detach"];
    workstation.plugin_ok(&cluster, PLUGIN, &args);
    assert_eq!(
        pods_running(&ns, "consumer", "worker").await,
        Vec::<String>::new(),
        "a replaced consumer still runs after replace returned"
    );

    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "consumer", "-n", &ns.name]);
    assert_eq!(pods_running(&ns, "consumer", "worker").await.len(), 2);
}

#[tokio::test]
async fn a_privileged_app_on_port_80_is_replaced_by_an_unprivileged_agent() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "replace-low-port").await;
    let manifest = json!({
        "apiVersion": "v1", "kind": "List", "items": [{
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "web", "image": tests_e2e::ECHO_IMAGE,
                            "imagePullPolicy": "Never", "args": ["--http", "80"],
                            "ports": [{"name": "http", "containerPort": 80}],
                            "securityContext": {
                                "privileged": true, "runAsUser": 0,
                                "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}
                            }
                        }]
                    }
                }
            }
        }, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
        }]
    });
    ns.apply_json(&manifest).expect("apply");
    ns.wait_deployment_ready("web").await.expect("web ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.stored_deployment_and_service("web").await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "replacement");

    let args = ["web", "-n", &ns.name, "--port", "3000:80", "--detach"];
    workstation.plugin_ok(&cluster, PLUGIN, &args);
    let answer = ns
        .http_get("client", "web:80", "/low")
        .expect("GET port 80");
    assert_eq!(answer.trim(), "local replacement: GET /low HTTP/1.1");
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web,kubedev.io/session"))
        .await
        .expect("pods");
    let pod = pods.items.first().expect("an agent pod");
    let spec = pod.spec.as_ref().expect("spec");
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "kubedev-agent")
        .expect("agent");
    let security = serde_json::to_value(&agent.security_context).expect("json");
    assert_eq!(security["runAsUser"], 65532, "{security}");
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{security}");
    assert_eq!(
        security["capabilities"],
        json!({"drop": ["ALL"]}),
        "{security}"
    );
    assert!(
        agent
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some()
    );

    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "web", "-n", &ns.name]);
    assert_eq!(
        ns.stored_deployment_and_service("web").await,
        before,
        "restored exactly"
    );
}
