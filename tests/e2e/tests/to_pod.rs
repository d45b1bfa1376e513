//! `--to-pod PORT[/udp]` in every mode: a port of the workstation's localhost reaches the
//! same port of the pod's own localhost (here a sidecar that listens nowhere else) for as
//! long as the session lasts.

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

#[tokio::test]
async fn to_pod_reaches_the_pods_localhost_in_every_mode() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "to-pod").await;
    ns.deploy_echo_with_admin_sidecar("echo")
        .await
        .expect("echo ready");
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let probe = cluster.probe();
    let admin_get = "GET /admin HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let session = |extra: &[&'static str]| {
        let mut args = vec!["-n", ns.name.as_str(), "echo", "--detach"];
        args.extend_from_slice(extra);
        args.extend(["--to-pod", "9901", "--to-pod", "9902/udp"]);
        args
    };

    // A port taken on this machine is refused before anything changes.
    let taken = workstation.serve_http(9901, "taken");
    let refused = workstation.plugin(
        &cluster,
        "kubectl-intercept",
        &session(&["--port", "3000:http"]),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("is taken on this machine"), "{stderr}");
    assert_eq!(ns.echo_template(false).await, before, "nothing changed");
    drop(taken);

    for (plugin, extra) in [
        ("kubectl-intercept", ["--port", "3000:http"]),
        ("kubectl-replace_container", ["-c", "echo"]),
        ("kubectl-ingest", ["-c", "echo"]),
    ] {
        workstation.plugin_ok(&cluster, plugin, &session(&extra));
        let http = workstation.run_ok(&[&probe, "tcp", "127.0.0.1:9901", admin_get]);
        assert!(
            http.contains("echo from echo-") && http.contains(": GET /admin"),
            "{plugin}: {http}"
        );
        let udp = workstation.run_ok(&[&probe, "udp", "127.0.0.1:9902", "ping"]);
        assert!(
            udp.starts_with("echo from echo-") && udp.trim_end().ends_with(": ping"),
            "{plugin}: {udp}"
        );
        workstation.plugin_ok(&cluster, plugin, &["-n", &ns.name, "leave", "echo"]);
        let closed = workstation.run(&[&probe, "tcp", "127.0.0.1:9901", admin_get]);
        assert!(!closed.status.success(), "{plugin}: closed after leave");
        assert_eq!(
            ns.echo_template(false).await,
            before,
            "{plugin}: restored exactly"
        );
    }
}
