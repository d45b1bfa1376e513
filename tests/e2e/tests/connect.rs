//! `connect`: the cluster's network on the workstation with no workload touched, from each
//! of the three plugins, with the namespace-only Role, in a namespace that enforces the
//! restricted Pod Security Standard; its pod goes with the session however it ends.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// A namespace with the echo service in it, then restricted Pod Security enforced.
async fn restricted_namespace(cluster: &TestCluster, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(cluster, prefix).await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    let name = ns.name.clone();
    ns.kubectl_ok(&[
        "label",
        "namespace",
        &name,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .expect("restricted Pod Security");
    ns
}

/// The names of the connect pods in the namespace.
fn connect_pods(ns: &TestNamespace) -> String {
    ns.kubectl_ok(&["get", "pods", "-l", "kubedev.io/connect", "-o", "name"])
        .expect("pods")
}

/// Waits until no connect pod is left, however it goes.
fn wait_until_no_connect_pod(ns: &TestNamespace, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !connect_pods(ns).trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "still there: {}",
            connect_pods(ns)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn connect_brings_the_cluster_network_from_every_plugin_and_touches_no_workload() {
    let cluster = TestCluster::get();
    let ns = restricted_namespace(&cluster, "connect").await;
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let probe = cluster.probe();
    for plugin in [
        "kubectl-intercept",
        "kubectl-replace_container",
        "kubectl-ingest",
    ] {
        let run = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            workstation.plugin_ok(&cluster, plugin, &all)
        };
        run(&["connect", "--detach"]);

        // A service by name, through tunneld's DNS and TUN.
        let answer = workstation.run_ok(&[&probe, "tcp", "echo:7000", "hello"]);
        assert!(answer.starts_with("echo from echo-"), "{plugin}: {answer}");

        let listed: Value = serde_json::from_str(&run(&["list", "-o", "json"])).expect("list");
        let row = &listed[0];
        // Named after the user, so that teammates' connect sessions do not collide.
        let name = kubedev::session::naming::default_name("connect");
        assert_eq!(row["name"], name.as_str(), "{listed:#}");
        assert_eq!(row["mode"], "connect");
        let pod = format!("kubedev-connect-{name}");
        assert_eq!(row["workload"], format!("pod/{pod}").as_str());
        let status: Value = serde_json::from_str(&run(&["status", "-o", "json"])).expect("status");
        assert_eq!(status["sessions"][0]["name"], name.as_str(), "{status:#}");
        assert_eq!(
            status["sessions"][0]["linkedPods"],
            serde_json::json!([pod])
        );
        assert_eq!(
            ns.echo_template(false).await,
            before,
            "{plugin}: no workload touched"
        );

        run(&["leave", "connect"]);
        assert!(connect_pods(&ns).trim().is_empty(), "{plugin}: pod deleted");
        let leases = ns
            .kubectl_ok(&["get", "leases", "-o", "name"])
            .expect("leases");
        assert!(leases.trim().is_empty(), "{plugin}: lease ended: {leases}");
    }
}

#[tokio::test]
async fn a_connect_pod_goes_when_its_plugin_is_killed_or_its_machine_dies() {
    let cluster = TestCluster::get();
    let ns = restricted_namespace(&cluster, "connect-ends").await;
    let workstation = Workstation::create(&cluster);
    let plugin = "kubectl-intercept";
    let start = |name: &str| {
        let args = [
            "-n",
            ns.name.as_str(),
            "connect",
            "--name",
            name,
            "--lease",
            "20s",
        ];
        let log = workstation.file(&format!("{name}.log"));
        let child = workstation.spawn_plugin_logged(&cluster, plugin, &args, &log);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("press Ctrl-C")) {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                std::fs::read_to_string(&log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        child
    };

    // The plugin is killed outright: tunneld, holding the session, deletes the pod.
    let mut killed = start("killed");
    killed.kill().expect("kill -9");
    let _ = killed.wait();
    wait_until_no_connect_pod(&ns, Duration::from_secs(60));

    // Plugin and tunneld die together: once the lease ran out, the next run deletes it.
    let mut died = start("died");
    let tunneld = workstation.plugins_tunneld_pid(&cluster, plugin);
    tests_e2e::freeze_then_kill(&[died.id(), tunneld]);
    let _ = died.wait();
    assert_eq!(connect_pods(&ns).trim(), "pod/kubedev-connect-died");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = workstation.plugin(&cluster, plugin, &["-n", &ns.name, "list"]);
        let stderr = String::from_utf8_lossy(&listed.stderr).into_owned();
        if stderr.contains("its lease ran out") {
            assert!(
                stderr.contains("connect session \"died\" ended"),
                "{stderr}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never reclaimed: {stderr}");
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_until_no_connect_pod(&ns, Duration::from_secs(30));
}

/// Two identities on one machine (the developer's kubeconfig, then the admin's, as two kube
/// contexts are): the second tunneld reaches the cluster through the first's routes and
/// resolver, and says so; once the first ends, it takes them over, and the cluster's names
/// and addresses still answer.
#[tokio::test]
async fn a_second_identitys_tunneld_takes_the_network_over_when_the_first_ends() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "connect-two").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    let workstation = Workstation::create(&cluster);
    let probe = cluster.probe();
    let admin = cluster.admin_kubeconfig.display().to_string();
    let plugin = "kubectl-intercept";
    let as_developer = |args: &[&str]| {
        let all = [args, &["-n", ns.name.as_str()][..]].concat();
        workstation.plugin_ok(&cluster, plugin, &all)
    };
    let as_admin = |args: &[&str]| {
        let all = [args, &["-n", ns.name.as_str(), "--kubeconfig", &admin][..]].concat();
        workstation.plugin_ok(&cluster, plugin, &all)
    };
    let admins_network = || {
        let status: Value =
            serde_json::from_str(&as_admin(&["status", "-o", "json"])).expect("status");
        status["network"].clone()
    };
    as_developer(&["connect", "--detach"]);
    as_admin(&["connect", "--detach", "--name", "connect-admin"]);
    let network = admins_network();
    assert!(
        network["ranges"]
            .to_string()
            .contains("another kubedev tunneld on this machine routes it"),
        "{network:#}"
    );
    let answer = workstation.run_ok(&[&probe, "tcp", "echo:7000", "through the first"]);
    assert!(answer.starts_with("echo from echo-"), "{answer}");

    as_developer(&["leave", "connect"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let network = admins_network();
        if network["state"] == "up" && !network.to_string().contains("another kubedev tunneld") {
            break;
        }
        assert!(Instant::now() < deadline, "never taken over: {network:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let answer = workstation.run_ok(&[&probe, "tcp", "echo:7000", "through the second"]);
    assert!(answer.starts_with("echo from echo-"), "{answer}");
    as_admin(&["leave", "connect-admin"]);
}
