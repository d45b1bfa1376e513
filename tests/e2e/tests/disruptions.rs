//! Events that disturb every session at once, such as the API server restarting. They have a
//! test binary of their own: cargo runs test binaries one after another, so no other test
//! runs while they happen.

use std::time::{Duration, Instant};

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

#[tokio::test]
async fn an_intercept_resumes_by_itself_after_the_api_server_restarts() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "apiserver-restart").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "laptop");
    let log = workstation.file("plugin.log");
    let mut plugin = workstation.spawn_plugin_logged(
        &cluster,
        PLUGIN,
        &["echo", "-n", &ns.name, "--port", "3000:http"],
        &log,
    );
    let reaches_laptop = |path: &str| {
        ns.http_get("client", "echo:8080", path)
            .is_ok_and(|answer| answer.starts_with("local laptop"))
    };
    let mut wait_for_laptop = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !reaches_laptop(what) {
            assert!(
                Instant::now() < deadline,
                "{what}: never reached the laptop"
            );
            assert!(
                plugin.try_wait().expect("wait").is_none(),
                "the plugin exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_for_laptop("/live");
    // The session is live (the plugin is done setting up) before the API server goes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).is_ok_and(|said| said.contains("press Ctrl-C")) {
        assert!(Instant::now() < deadline, "the session never went live");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every port-forward link goes down with the API server; tunneld links again.
    cluster.restart_apiserver();
    wait_for_laptop("/after-the-restart");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(plugin.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = plugin.wait().expect("plugin exits");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(ns.echo_template(false).await, before, "restored exactly");
}
