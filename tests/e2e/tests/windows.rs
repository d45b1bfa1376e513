//! The Windows plugins, run under Wine on a workstation against the test cluster, as a
//! developer on Windows uses them: `list`, an intercept from a client pod to a server on
//! the workstation, the environment in `cmd` and PowerShell syntax, and `leave`, each
//! workload put back exactly. The machine's network is not there on Windows: `status`
//! says so.

use k8s_openapi::api::core::v1::Service;
use serde_json::Value;
use tests_e2e::wine::{WindowsWorkstation, windows_path};
use tests_e2e::{TestCluster, TestNamespace};

const INTERCEPT: &str = "kubectl-intercept";
const INGEST: &str = "kubectl-ingest";

/// The parts of the echo Deployment and Service a session may change, as stored.
async fn stored(ns: &TestNamespace) -> (Value, Value) {
    let template = ns.echo_template(false).await;
    let service = ns.api::<Service>().get("echo").await.expect("service");
    (template, serde_json::to_value(service.spec).expect("json"))
}

#[tokio::test]
async fn a_windows_developer_intercepts_a_service_lists_it_and_leaves() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "windows").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = stored(&ns).await;
    let windows = WindowsWorkstation::create(&cluster);
    let _server = windows.workstation.serve_http(3000, "windows");
    let plugin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", &ns.name]);
        windows.plugin_ok(&cluster, INTERCEPT, &all)
    };

    assert_eq!(plugin(&["list", "-o", "json"]).trim(), "[]");
    // Windows mounts nothing: a mount asked for is refused before anything changes.
    let mount = windows_path(&windows.workstation.file("volumes"));
    let refused = windows.plugin(
        &cluster,
        INTERCEPT,
        &[
            "echo",
            "-n",
            &ns.name,
            "--port",
            "3000:http",
            "--mount",
            &mount,
        ],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("not available on Windows"), "{said}");
    assert_eq!(stored(&ns).await, before, "nothing changed");

    plugin(&["echo", "--port", "3000:http", "--detach"]);
    let answer = ns
        .http_get("client", "echo:8080", "/from-a-pod")
        .expect("GET from the client pod");
    assert_eq!(answer.trim(), "local windows: GET /from-a-pod HTTP/1.1");

    let listed: Value = serde_json::from_str(&plugin(&["list", "-o", "json"])).expect("list");
    // Wine's USERNAME is the Linux user's name.
    let name = kubedev::session::naming::default_name("echo");
    assert_eq!(listed[0]["name"], name.as_str());
    assert_eq!(listed[0]["mode"], "intercept");
    let status: Value =
        serde_json::from_str(&plugin(&["status", "-o", "json"])).expect("status -o json");
    let network = status["network"].to_string();
    assert!(
        network.contains("not available on this system"),
        "status names the missing machine network: {network}"
    );
    assert!(
        status["proxy"]["address"]
            .as_str()
            .is_some_and(|address| address.starts_with("127.0.0.1:")),
        "the proxy serves: {status}"
    );

    plugin(&["leave", "echo"]);
    assert_eq!(stored(&ns).await, before, "restored exactly");
    let answer = ns
        .http_get("client", "echo:8080", "/after")
        .expect("GET after leave");
    assert!(answer.starts_with("echo from echo-"), "{answer}");
    assert_eq!(plugin(&["list", "-o", "json"]).trim(), "[]");
}

#[tokio::test]
async fn a_windows_developer_gets_the_environment_for_cmd_and_powershell() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "windows-env").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.kubectl_ok(&["set", "env", "deployment/echo", "GREETING=it's 100% here"])
        .expect("set env");
    ns.wait_deployment_ready("echo").await.expect("echo ready");
    let before = stored(&ns).await;
    let windows = WindowsWorkstation::create(&cluster);

    for (syntax, line) in [
        ("cmd", "@set GREETING=it's 100%% here"),
        ("ps", "$Env:GREETING='it''s 100% here'"),
    ] {
        let file = windows.workstation.file(&format!("env.{syntax}"));
        let seen = windows.workstation.file(&format!("seen-{syntax}.txt"));
        let record = format!("set > {}", windows_path(&seen));
        let output = windows.plugin(
            &cluster,
            INGEST,
            &[
                "echo",
                "-n",
                &ns.name,
                "--env-file",
                &windows_path(&file),
                "--env-syntax",
                syntax,
                "--",
                "cmd",
                "/c",
                &record,
            ],
        );
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{syntax}: {said}");
        // The command got the container's environment, and tunneld's proxy for the
        // cluster's network, and was told so.
        let seen = std::fs::read_to_string(&seen).expect("what the command saw");
        assert!(seen.contains("GREETING=it's 100% here"), "{seen}");
        assert!(seen.contains("ALL_PROXY=socks5h://"), "{seen}");
        assert!(said.contains("tunneld's proxy"), "{said}");
        let written = std::fs::read_to_string(&file).expect("the env file");
        assert!(
            written.lines().any(|found| found == line),
            "{syntax}: no `{line}` in\n{written}"
        );
        assert_eq!(stored(&ns).await, before, "restored exactly after {syntax}");
    }
}
