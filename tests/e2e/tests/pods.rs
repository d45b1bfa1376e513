//! Pods of their own (`pod/NAME`, no controller): each mode deletes the pod and creates it
//! again with the agent, and on leave creates it as it was; a replica is refused, naming
//! its owner; a run that dies between deleting and creating a pod leaves it to the next.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use tests_e2e::workstation::Workstation;
use tests_e2e::{CLIENT_IMAGE, TestCluster, TestNamespace};

/// A namespace with the echo app as pod `echo-solo` behind Service `echo`, a client pod,
/// a workstation, and the pod as stored before anything else.
async fn setup(prefix: &str) -> (TestCluster, TestNamespace, Workstation, Value) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.run_echo_pod("echo-solo").await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.stored_pod("echo-solo").await.expect("the pod");
    (cluster.clone(), ns, Workstation::create(&cluster), before)
}

/// The names of pod `name`'s containers.
async fn containers(ns: &TestNamespace, name: &str) -> Vec<String> {
    let pod = ns.stored_pod(name).await.expect("the pod");
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// Whether kubedev's field manager is still named on pod `name`.
async fn kubedev_manages(ns: &TestNamespace, name: &str) -> bool {
    let pod = ns.api::<Pod>().get(name).await.expect("the pod");
    let managers = pod.metadata.managed_fields.unwrap_or_default();
    managers
        .iter()
        .any(|entry| entry.manager.as_deref() == Some("kubedev"))
}

#[tokio::test]
async fn a_pod_of_its_own_is_intercepted_and_created_again_exactly_on_leave() {
    let (cluster, ns, workstation, before) = setup("pod-intercept").await;
    let _server = workstation.serve_http(3000, "laptop");
    let args = [
        "pod/echo-solo",
        "-n",
        &ns.name,
        "--name",
        "solo",
        "--port",
        "3000:http",
        "--detach",
    ];
    let started = workstation.plugin(&cluster, "kubectl-intercept", &args);
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(started.status.success(), "{said}");
    assert!(
        said.contains("pod/echo-solo has no controller: kubedev deletes it and creates it again"),
        "{said}"
    );
    assert_eq!(
        containers(&ns, "echo-solo").await,
        ["echo", "kubedev-agent"],
        "the pod is back under its name, with the agent"
    );
    assert_eq!(
        ns.http_get("client", "echo:8080", "/solo")
            .expect("GET")
            .trim(),
        "local laptop: GET /solo HTTP/1.1"
    );
    let list = ["list", "-n", &ns.name, "-o", "json"];
    let listed: Value =
        serde_json::from_str(&workstation.plugin_ok(&cluster, "kubectl-intercept", &list))
            .expect("JSON");
    assert_eq!(listed[0]["workload"], "pod/echo-solo", "{listed}");

    let leave = ["leave", "solo", "-n", &ns.name];
    workstation.plugin_ok(&cluster, "kubectl-intercept", &leave);
    assert_eq!(
        ns.stored_pod("echo-solo").await,
        Some(before),
        "restored exactly"
    );
    assert!(
        !kubedev_manages(&ns, "echo-solo").await,
        "fields given back"
    );
    ns.wait_for_the_echo_app("/after");
}

#[tokio::test]
async fn a_pod_of_its_own_is_replaced_and_a_teammates_label_stays_after_leave() {
    let (cluster, ns, workstation, mut before) = setup("pod-replace").await;
    let _server = workstation.serve_http(8080, "laptop");
    let args = [
        "pod/echo-solo",
        "-n",
        &ns.name,
        "--name",
        "solo",
        "--detach",
    ];
    workstation.plugin_ok(&cluster, "kubectl-replace_container", &args);
    assert_eq!(containers(&ns, "echo-solo").await, ["kubedev-agent"]);
    assert_eq!(
        ns.http_get("client", "echo:8080", "/replaced")
            .expect("GET")
            .trim(),
        "local laptop: GET /replaced HTTP/1.1"
    );

    // A teammate labels the pod meanwhile: the label is theirs, and stays.
    ns.kubectl_ok(&["label", "pod/echo-solo", "owner=bob"])
        .expect("label");
    let leave = ["leave", "solo", "-n", &ns.name];
    let left = workstation.plugin(&cluster, "kubectl-replace_container", &leave);
    let said =
        String::from_utf8_lossy(&left.stderr).into_owned() + &String::from_utf8_lossy(&left.stdout);
    assert!(left.status.success(), "{said}");
    assert!(said.contains("pod.metadata.labels.owner"), "{said}");
    before["labels"]["owner"] = json!("bob");
    assert_eq!(
        ns.stored_pod("echo-solo").await,
        Some(before),
        "restored, the teammate's label kept"
    );
    ns.wait_for_the_echo_app("/after");
}

#[tokio::test]
async fn a_pod_of_its_own_is_ingested_with_its_environment_and_restored() {
    let (cluster, ns, workstation, before) = setup("pod-ingest").await;
    let args = [
        "pod/echo-solo",
        "-n",
        &ns.name,
        "--",
        "sh",
        "-c",
        "printf %s \"$GREETING\"",
    ];
    let output = workstation.plugin_ok(&cluster, "kubectl-ingest", &args);
    assert_eq!(output, "from the pod");
    assert_eq!(
        ns.stored_pod("echo-solo").await,
        Some(before),
        "restored exactly"
    );
}

#[tokio::test]
async fn a_replica_is_refused_naming_its_owner_and_nothing_changes() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "pod-replica").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    let pods = ns.api::<Pod>();
    let listed = pods
        .list(&ListParams::default().labels("app=echo"))
        .await
        .expect("pods");
    let replica = listed.items[0].clone();
    let name = replica.metadata.name.clone().expect("name");
    let workstation = Workstation::create(&cluster);

    let target = format!("pod/{name}");
    let args = [target.as_str(), "-n", &ns.name, "--port", "3000:http"];
    let refused = workstation.plugin(&cluster, "kubectl-intercept", &args);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(&format!("{target} is managed by replicaset/echo-"))
            && said.contains("name the workload that owns it"),
        "{said}"
    );
    let after = pods.get(&name).await.expect("the replica");
    assert_eq!(after.metadata.uid, replica.metadata.uid, "not recreated");
    assert_eq!(
        after.metadata.resource_version, replica.metadata.resource_version,
        "not changed"
    );
}

/// A pod that takes 8 s to stop (its preStop hook sleeps): a window to kill the plugin in.
async fn run_slow_to_stop_pod(ns: &TestNamespace, name: &str) -> Value {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "idle",
                "image": CLIENT_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "8"]}}}
            }]
        }
    }))
    .expect("pod");
    ns.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = ns.api::<Pod>().get(name).await.expect("the pod");
        let phase = pod.status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Running") {
            break;
        }
        assert!(Instant::now() < deadline, "pod {name} not running");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ns.stored_pod(name).await.expect("the pod")
}

/// Starts an ingest of pod `idle` and, once the pod it deleted is stopping, kills the
/// plugin, and tunneld too where `machine_dies`; then runs `list` until the pod is back as
/// `before` (a new pod), and checks that nothing of its gap is kept.
async fn die_in_the_gap_then_find_the_pod_back(prefix: &str, machine_dies: bool) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    let before = run_slow_to_stop_pod(&ns, "idle").await;
    let pods = ns.api::<Pod>();
    let first = pods.get("idle").await.expect("the pod").metadata.uid;
    let workstation = Workstation::create(&cluster);
    let args = ["pod/idle", "-n", &ns.name, "--detach", "--lease", "6s"];
    let mut plugin = workstation.spawn_plugin(&cluster, "kubectl-ingest", &args);

    // The plugin has deleted the pod and waits for it to stop: it dies there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods
        .get("idle")
        .await
        .expect("the pod")
        .metadata
        .deletion_timestamp
        .is_none()
    {
        assert!(Instant::now() < deadline, "the pod was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dying = vec![plugin.id()];
    if machine_dies {
        dying.push(workstation.plugins_tunneld_pid(&cluster, "kubectl-ingest"));
    }
    tests_e2e::freeze_then_kill(&dying);
    plugin.wait().expect("reaped");

    let deadline = Instant::now() + Duration::from_secs(150);
    let list = ["list", "-n", &ns.name];
    loop {
        let now = ns.stored_pod("idle").await;
        let pod = pods.get_opt("idle").await.expect("get");
        let another = pod.is_some_and(|pod| pod.metadata.uid != first);
        if another && now.as_ref() == Some(&before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never created as it was: {now:?}"
        );
        if machine_dies {
            workstation.plugin_ok(&cluster, "kubectl-ingest", &list);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let keys = ns
        .kubectl_ok(&[
            "get",
            "secret",
            "kubedev-session-tokens",
            "-o",
            "jsonpath={.data}",
        ])
        .expect("the sessions' Secret");
    assert!(!keys.contains("pod-gap.idle"), "{keys}");
    assert!(!kubedev_manages(&ns, "idle").await, "fields given back");
    if !machine_dies {
        // tunneld ended the run: its lease and its token went with it.
        assert!(!keys.contains("pod.idle."), "{keys}");
        let leases = ns
            .kubectl_ok(&["get", "leases", "-o", "name"])
            .expect("leases");
        assert!(!leases.contains("kubedev-"), "{leases}");
    }
}

#[tokio::test]
async fn a_pod_whose_plugin_died_between_deleting_and_creating_it_is_created_by_tunneld() {
    die_in_the_gap_then_find_the_pod_back("pod-gap-plugin", false).await;
}

#[tokio::test]
async fn a_pod_whose_machine_died_between_deleting_and_creating_it_is_created_by_the_next_run() {
    die_in_the_gap_then_find_the_pod_back("pod-gap-machine", true).await;
}
