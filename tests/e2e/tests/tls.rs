//! Filters on an app that terminates TLS itself (`--tls-secret`): a client that verifies the
//! app's certificate gets its matching requests answered by the workstation's HTTPS server
//! and the others by the app, in TLS all the way; leave restores the workload exactly; a
//! Secret or a flag that cannot work is refused before anything changes.

use tests_e2e::tls::{Certificates, issue};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// A namespace with the HTTPS echo app `web` (a certificate from a test CA, in Secret
/// `web-tls`) and a client pod; the app's template and Service as stored.
async fn setup(
    prefix: &str,
) -> (
    TestCluster,
    TestNamespace,
    Certificates,
    (serde_json::Value, serde_json::Value),
) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    let names = ["web".to_owned(), format!("web.{}.svc", ns.name)];
    let certificates = issue(&names);
    ns.deploy_echo_https("web", &certificates).await;
    ns.start_client("client").await.expect("client pod");
    let before = ns.stored_deployment_and_service("web").await;
    (cluster, ns, certificates, before)
}

#[tokio::test]
async fn an_https_apps_filtered_requests_reach_the_workstation_in_tls() {
    let (cluster, ns, certificates, before) = setup("tls").await;
    let workstation = Workstation::create(&cluster);
    // The workstation's server has a development certificate of its own.
    let local = issue(&["localhost".to_owned()]);
    let _server = workstation.serve_https(3443, "laptop", &local.cert, &local.key);
    let start = [
        "web",
        "--port",
        "3443:https",
        "--http-header",
        "x-dev=alice",
        "--tls-secret",
        "web-tls",
        "--detach",
        "-n",
        &ns.name,
    ];
    workstation.plugin_ok(&cluster, PLUGIN, &start);

    let web = ("web:8443", "web");
    let get = |path, headers: &[(&str, &str)]| {
        ns.https_get("client", web, &certificates.ca, path, headers)
            .expect("an HTTPS answer from a verified certificate")
    };
    assert_eq!(
        get("/mine", &[("x-dev", "alice")]).trim(),
        "local laptop: GET /mine HTTP/1.1",
        "a matching request reaches the workstation's HTTPS server"
    );
    assert!(
        get("/theirs", &[("x-dev", "bob")]).starts_with("echo from web-"),
        "the others reach the app, in TLS"
    );
    // The name the client asked for is the app's: another name fails verification.
    let wrong_name = ns.https_get("client", ("web:8443", "api"), &certificates.ca, "/", &[]);
    assert!(wrong_name.is_err(), "{wrong_name:?}");

    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "web", "-n", &ns.name]);
    assert_eq!(
        ns.stored_deployment_and_service("web").await,
        before,
        "restored exactly"
    );
    assert!(get("/after", &[("x-dev", "alice")]).starts_with("echo from web-"));

    // Without the Secret, the filters cannot read the requests: the app keeps answering.
    let without = [
        "web",
        "--port",
        "3443:https",
        "--http-header",
        "x-dev=alice",
        "--detach",
        "-n",
        &ns.name,
    ];
    workstation.plugin_ok(&cluster, PLUGIN, &without);
    assert!(get("/plain", &[("x-dev", "alice")]).starts_with("echo from web-"));
    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "web", "-n", &ns.name]);
    assert_eq!(ns.stored_deployment_and_service("web").await, before);
}

#[tokio::test]
async fn a_tls_secret_that_cannot_work_is_refused_before_anything_changes() {
    let (cluster, ns, _, before) = setup("tls-bad").await;
    let workstation = Workstation::create(&cluster);
    let refused = |args: &[&str], said: &str| {
        let args = [args, &["-n", &ns.name, "--timeout", "30s"]].concat();
        let output = workstation.plugin(&cluster, PLUGIN, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    };
    refused(
        &["web", "--port", "3443:https", "--tls-secret", "web-tls"],
        "--tls-secret is for intercepts with --http-header or --http-path-prefix",
    );
    refused(
        &[
            "web",
            "--port",
            "3443:https",
            "--port",
            "3444:https",
            "--http-path-prefix",
            "/a",
            "--tls-secret",
            "web-tls",
        ],
        "give one --port",
    );
    refused(
        &[
            "web",
            "--port",
            "3443:https",
            "--http-path-prefix",
            "/a",
            "--tls-secret",
            "web-tls",
            "--address",
            "10.0.0.5",
        ],
        "to this machine's loopback only",
    );
    // The developer's Role may not read Secrets: the agent says it has none, at once.
    let missing = [
        "web",
        "--port",
        "3443:https",
        "--http-path-prefix",
        "/api",
        "--tls-secret",
        "no-such-secret",
    ];
    refused(&missing, "--tls-secret: the app's certificate and key");
    assert_eq!(ns.stored_deployment_and_service("web").await, before);
    // A role that may read it has the Secret checked before anything changes.
    let admin = cluster.admin_kubeconfig.display().to_string();
    let as_admin = [&missing[..], &["--kubeconfig", &admin]].concat();
    refused(&as_admin, "secret no-such-secret not found");
    assert_eq!(ns.stored_deployment_and_service("web").await, before);
}
