//! `kubectl intercept`, run as a developer would on a workstation: requests to the
//! intercepted service port reach a server on the workstation, everything else still
//! reaches the app, and leaving restores the workload and Service exactly.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::workstation::{LocalServer, Workstation};
use tests_e2e::{ECHO_IMAGE, TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// The parts of the echo workload and Service that a session may change, as stored.
async fn stored(ns: &TestNamespace, statefulset: bool) -> (Value, Value) {
    let template = ns.echo_template(statefulset).await;
    let service = ns.api::<Service>().get("echo").await.expect("service");
    (template, serde_json::to_value(service.spec).expect("json"))
}

fn http_from_client(ns: &TestNamespace, target: &str, path: &str) -> String {
    ns.http_get("client", target, path)
        .unwrap_or_else(|err| panic!("GET {target}{path} from the client pod: {err:#}"))
}

/// A namespace with the echo service (as `kind`, with `replicas`), a client pod, and a
/// workstation serving HTTP on `local_port`; `before` is what must come back on leave.
struct Setup {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    _server: LocalServer,
    before: (Value, Value),
}

async fn setup(prefix: &str, statefulset: bool, replicas: i32, local_port: u16) -> Setup {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    if statefulset {
        ns.deploy_echo_statefulset("echo", replicas)
            .await
            .expect("echo ready");
    } else {
        ns.deploy_echo("echo", replicas).await.expect("echo ready");
    }
    ns.start_client("client").await.expect("client pod");
    let before = stored(&ns, statefulset).await;
    let workstation = Workstation::create(&cluster);
    let server = workstation.serve_http(local_port, "laptop");
    Setup {
        cluster,
        ns,
        workstation,
        _server: server,
        before,
    }
}

/// [`setup`] for a Deployment, and a second developer, Bob, serving HTTP on port 3000 of
/// a workstation of his own.
async fn setup_with_bob(prefix: &str, replicas: i32) -> (Setup, Workstation, LocalServer) {
    let s = setup(prefix, false, replicas, 3000).await;
    let bob = Workstation::create(&s.cluster);
    let server = bob.serve_http(3000, "bob");
    (s, bob, server)
}

impl Setup {
    /// Runs the plugin in the test's namespace.
    fn plugin(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.workstation.plugin(&self.cluster, PLUGIN, &all)
    }

    fn plugin_ok(&self, args: &[&str]) -> String {
        let output = self.plugin(args);
        assert!(
            output.status.success(),
            "{PLUGIN} {args:?} failed: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every session's lease went with it.
    fn assert_no_lease_left(&self) {
        let leases = self
            .ns
            .kubectl_ok(&["get", "leases", "-o", "name"])
            .expect("leases");
        assert!(leases.trim().is_empty(), "no lease left: {leases}");
    }

    fn get(&self, path: &str) -> String {
        http_from_client(&self.ns, "echo:8080", path)
    }

    /// GETs `path` from the client pod with an extra `header` line, whatever the status;
    /// returns the body.
    fn get_with(&self, path: &str, header: Option<&str>) -> String {
        self.request(path, header).expect("request")
    }

    /// GETs `path`; a failure to connect is an empty answer.
    fn try_get(&self, path: &str) -> String {
        self.request(path, None).unwrap_or_default()
    }

    fn request(&self, path: &str, header: Option<&str>) -> anyhow::Result<String> {
        let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: echo\r\n{extra}Connection: close\r\n\r\n");
        let response = self
            .ns
            .exec("client", &["probe", "tcp", "echo:8080", &request])?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned())
            .unwrap_or(response))
    }
}

#[tokio::test]
async fn service_requests_reach_the_workstation_until_leave_restores_the_workload() {
    let s = setup("intercept", false, 1, 3000).await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);

    assert_eq!(
        s.get("/checkout").trim(),
        "local laptop: GET /checkout HTTP/1.1"
    );
    // The app keeps running and keeps its other ports.
    let other =
        s.ns.exec("client", &["probe", "tcp", "echo:7000", "still the app"])
            .expect("tcp echo");
    assert!(other.starts_with("echo from echo-"), "{other}");

    let listed: Value =
        serde_json::from_str(&s.plugin_ok(&["list", "-o", "json"])).expect("list -o json");
    // Named after the workload and the user, so that teammates' names do not collide.
    let session = kubedev::session::naming::default_name("echo");
    assert_eq!(listed[0]["name"], session.as_str());
    assert_eq!(listed[0]["mode"], "intercept");
    assert_eq!(listed[0]["workload"], "deployment/echo");
    assert_eq!(listed[0]["linkedPods"].as_array().map(Vec::len), Some(1));
    assert_eq!(s.plugin_ok(&["list", "-o", "name"]), format!("{session}\n"));
    let linked = listed[0]["linkedPods"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        s.plugin_ok(&["list", "-o", "wide"]).contains(&linked),
        "wide names the linked pod {linked}"
    );

    // The agent's control port is reachable only through the API server's port-forward:
    // another pod finds it closed on the agent pod, whose other ports answer.
    let pod_ip =
        s.ns.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "kubedev.io/session",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .expect("the agent pod's IP");
    let control = format!("{}:{}", pod_ip.trim(), kubedev_protocol::AGENT_PORT);
    let refused =
        s.ns.exec("client", &["probe", "tcp", &control, "hello"])
            .expect_err("the control port is closed to other pods");
    assert!(
        format!("{refused:#}").contains("Connection refused"),
        "{refused:#}"
    );
    let app_port = format!("{}:7000", pod_ip.trim());
    let answered =
        s.ns.exec(
            "client",
            &["probe", "tcp", &app_port, "the pod is reachable"],
        )
        .expect("the app's port");
    assert!(answered.starts_with("echo from echo-"), "{answered}");

    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
    assert!(s.get("/checkout").starts_with("echo from echo-"));
    assert_eq!(s.plugin_ok(&["list", "-o", "json"]).trim(), "[]");
}

/// Starts a pod wearing `labels` whose port 7329 (the agent's) records, in /tmp/got,
/// everything sent to it, and answers nothing.
async fn start_impostor(ns: &TestNamespace, labels: &Value) {
    let record = "printf '#!/bin/sh\\ncat >> /tmp/got\\n' > /tmp/record && chmod +x /tmp/record \
                  && touch /tmp/got && exec nc -ll -p 7329 -e /tmp/record";
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "impostor", "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "impostor",
                "image": tests_e2e::CLIENT_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", record]
            }]
        }
    });
    let manifest = std::env::temp_dir().join(format!("impostor-{}.json", ns.name));
    std::fs::write(&manifest, pod.to_string()).expect("the impostor's manifest");
    let manifest = manifest.to_str().expect("utf-8").to_owned();
    ns.kubectl_ok(&["apply", "-f", &manifest])
        .expect("the impostor");
    let _ = std::fs::remove_file(&manifest);
    ns.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/impostor",
        "--timeout=60s",
    ])
    .expect("the impostor runs");
}

#[tokio::test]
async fn a_pod_wearing_the_sessions_labels_is_never_contacted_nor_linked() {
    let s = setup("impostor", false, 1, 3000).await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);
    let agent_pod =
        s.ns.kubectl_ok(&["get", "pods", "-l", "kubedev.io/session", "-o", "json"])
            .expect("the session's pods");
    let agent_pod: Value = serde_json::from_str(&agent_pod).expect("json");
    let agent_pod = &agent_pod["items"][0];
    // The worst case: an impostor whose maker read the session's token (from its Secret;
    // no pod spec holds it).
    let tokens =
        s.ns.kubectl_ok(&[
            "get",
            "secret",
            kubedev::inject::TOKENS_SECRET,
            "-o",
            "json",
        ])
        .expect("the tokens' Secret");
    let tokens: Value = serde_json::from_str(&tokens).expect("json");
    let encoded = tokens["data"]
        .as_object()
        .and_then(|data| data.values().next())
        .and_then(Value::as_str)
        .expect("the session's token");
    let token = String::from_utf8(
        serde_json::from_value::<k8s_openapi::ByteString>(Value::from(encoded))
            .expect("base64")
            .0,
    )
    .expect("text");
    assert!(
        !agent_pod.to_string().contains(&token),
        "the pod spec holds no token"
    );

    // The session's labels, but for the ReplicaSet's own (which would have it adopt the pod
    // and delete it as one too many).
    let mut labels = agent_pod["metadata"]["labels"].clone();
    if let Some(labels) = labels.as_object_mut() {
        labels.remove("pod-template-hash");
    }
    start_impostor(&s.ns, &labels).await;
    // tunneld sees it, and leaves it alone: it is not the workload's.
    let said = "wears the session's labels but is not the workload's";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tests_e2e::workstation::logs_in(s.workstation.runtime_dir()).contains(said) {
        assert!(
            Instant::now() < deadline,
            "{}",
            tests_e2e::workstation::logs_in(s.workstation.runtime_dir())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got =
        s.ns.exec("impostor", &["cat", "/tmp/got"])
            .expect("what the impostor got");
    assert!(got.is_empty(), "the impostor was contacted: {got}");
    assert!(!got.contains(&token));
    let listed: Value =
        serde_json::from_str(&s.plugin_ok(&["list", "-o", "json"])).expect("list -o json");
    let agent_name = agent_pod["metadata"]["name"].clone();
    assert_eq!(
        listed[0]["linkedPods"],
        serde_json::json!([agent_name]),
        "{listed}"
    );
    assert_eq!(
        s.get("/still-mine").trim(),
        "local laptop: GET /still-mine HTTP/1.1"
    );

    s.ns.kubectl_ok(&["delete", "pod", "impostor", "--wait=false"])
        .expect("delete the impostor");
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn every_replica_sends_its_requests_to_the_workstation() {
    let s = setup("intercept-3", false, 3, 3000).await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);
    // Each request is a new connection, balanced over the three pods.
    for attempt in 0..12 {
        let path = format!("/r{attempt}");
        assert_eq!(
            s.get(&path).trim(),
            format!("local laptop: GET {path} HTTP/1.1")
        );
    }
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn a_statefulset_is_intercepted_and_restored() {
    let s = setup("intercept-sts", true, 2, 3000).await;
    s.plugin_ok(&["statefulset/echo", "--port", "3000:http", "--detach"]);
    assert_eq!(s.get("/sts").trim(), "local laptop: GET /sts HTTP/1.1");
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, true).await, s.before, "restored exactly");
    assert!(s.get("/sts").starts_with("echo from echo-"));
}

#[tokio::test]
async fn only_requests_matching_the_filter_reach_the_workstation() {
    let s = setup("intercept-filter", false, 1, 3000).await;
    s.plugin_ok(&[
        "echo",
        "--port",
        "3000:http",
        "--http-header",
        "x-dev=alice",
        "--http-path-prefix",
        "/api/",
        "--detach",
    ]);
    let get = |path: &str, header: Option<&str>| s.get_with(path, header);
    assert_eq!(
        get("/api/cart", Some("X-Dev: alice")),
        "local laptop: GET /api/cart HTTP/1.1"
    );
    assert!(get("/api/cart", Some("X-Dev: bob")).starts_with("echo from echo-"));
    assert!(get("/api/cart", None).starts_with("echo from echo-"));
    assert!(get("/index.html", Some("X-Dev: alice")).starts_with("echo from echo-"));

    // One keep-alive connection carries requests for both places.
    let both = "GET /api/a HTTP/1.1\r\nHost: echo\r\nX-Dev: alice\r\n\r\n\
                GET /b HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let answers =
        s.ns.exec("client", &["probe", "tcp", "echo:8080", both])
            .expect("two requests");
    assert!(
        answers.contains("local laptop: GET /api/a HTTP/1.1"),
        "{answers}"
    );
    assert!(answers.contains(": GET /b"), "{answers}");
    assert!(answers.contains("echo from echo-"), "{answers}");

    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn a_second_developer_joins_where_the_service_targets_a_port_number() {
    let (s, bob, _bob_server) = setup_with_bob("intercept-join-number", 1).await;
    s.ns.target_echo_by_number();
    let before = stored(&s.ns, false).await;
    let request = |value: &str| s.get_with("/who", Some(&format!("X-Dev: {value}")));
    let port = ["echo", "--port", "3000:8080", "--detach", "--http-header"];
    s.plugin_ok(&[&port[..], &["x-dev=alice", "--name", "alice"]].concat());
    let bobs = ["x-dev=bob", "--name", "bob", "-n", s.ns.name.as_str()];
    bob.plugin_ok(&s.cluster, PLUGIN, &[&port[..], &bobs[..]].concat());

    assert_eq!(request("alice"), "local laptop: GET /who HTTP/1.1");
    assert_eq!(request("bob"), "local bob: GET /who HTTP/1.1");
    s.plugin_ok(&["leave", "alice"]);
    bob.plugin_ok(&s.cluster, PLUGIN, &["leave", "bob", "-n", &s.ns.name]);
    assert_eq!(stored(&s.ns, false).await, before, "restored exactly");
}

#[tokio::test]
async fn two_developers_share_a_workload_by_header() {
    let (s, bob, _bob_server) = setup_with_bob("intercept-two", 2).await;
    let request = |value: &str| {
        let header = format!("X-Dev: {value}");
        s.get_with("/who", (!value.is_empty()).then_some(header.as_str()))
    };

    s.plugin_ok(&[
        "echo",
        "--port",
        "3000:http",
        "--http-header",
        "x-dev=alice",
        "--name",
        "alice",
        "--detach",
    ]);
    let bob_args = |extra: &[&'static str]| {
        let mut args = vec![
            "echo",
            "-n",
            s.ns.name.as_str(),
            "--port",
            "3000:http",
            "--detach",
        ];
        args.extend_from_slice(extra);
        args
    };
    // Bob's intercept joins without restarting the pods.
    let pods_before =
        s.ns.kubectl_ok(&["get", "pods", "-l", "kubedev.io/session", "-o", "name"])
            .expect("pods");
    bob.plugin_ok(
        &s.cluster,
        PLUGIN,
        &bob_args(&["--http-header", "x-dev=bob", "--name", "bob"]),
    );
    let pods_after =
        s.ns.kubectl_ok(&["get", "pods", "-l", "kubedev.io/session", "-o", "name"])
            .expect("pods");
    assert_eq!(pods_before, pods_after, "no restart for a second intercept");

    // Every request goes to its own developer, over either replica; the rest to the app.
    for _ in 0..4 {
        assert_eq!(request("alice"), "local laptop: GET /who HTTP/1.1");
        assert_eq!(request("bob"), "local bob: GET /who HTTP/1.1");
        assert!(request("").starts_with("echo from echo-"));
    }

    // A third intercept with a filter already taken is refused, and changes nothing.
    let carol = bob.plugin(
        &s.cluster,
        PLUGIN,
        &bob_args(&["--http-header", "x-dev=bob", "--name", "carol"]),
    );
    let stderr = String::from_utf8_lossy(&carol.stderr);
    assert!(
        stderr.contains("already takes the requests this filter matches"),
        "{stderr}"
    );

    let listed: Value =
        serde_json::from_str(&s.plugin_ok(&["list", "-o", "json"])).expect("list -o json");
    let names: Vec<&str> = listed
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    // Alice leaves first: Bob keeps his requests, and the agent stays.
    s.plugin_ok(&["leave", "alice"]);
    assert_eq!(request("bob"), "local bob: GET /who HTTP/1.1");
    assert!(request("alice").starts_with("echo from echo-"));
    bob.plugin_ok(&s.cluster, PLUGIN, &["leave", "bob", "-n", &s.ns.name]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn a_replicaset_is_intercepted_and_restored() {
    let s = setup("intercept-rs", false, 1, 3000).await;
    // A bare ReplicaSet (none controls it) beside the Deployment's, under its own labels.
    let replicaset = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "bare"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "bare"}},
            "template": s.ns.echo_template(false).await
        }
    });
    let mut replicaset = replicaset;
    replicaset["spec"]["template"]["metadata"]["labels"] = serde_json::json!({"app": "bare"});
    s.ns.apply_json(&replicaset).expect("replicaset");
    s.ns.kubectl_ok(&[
        "expose",
        "replicaset",
        "bare",
        "--port",
        "8080",
        "--target-port",
        "http",
    ])
    .expect("service");
    s.ns.kubectl_ok(&[
        "wait",
        "pods",
        "-l",
        "app=bare",
        "--for=condition=Ready",
        "--timeout=120s",
    ])
    .expect("replicaset ready");
    let before =
        s.ns.kubectl_ok(&["get", "rs", "bare", "-o", "jsonpath={.spec.template}"]);

    s.plugin_ok(&["rs/bare", "--port", "3000:8080", "--detach"]);
    // The ReplicaSet does not replace its pods by itself: they were recreated with the agent.
    let answer = http_from_client(&s.ns, "bare:8080", "/rs");
    assert_eq!(answer.trim(), "local laptop: GET /rs HTTP/1.1");
    s.plugin_ok(&["leave", "bare"]);
    let after =
        s.ns.kubectl_ok(&["get", "rs", "bare", "-o", "jsonpath={.spec.template}"]);
    assert_eq!(after.expect("rs"), before.expect("rs"), "restored exactly");
    assert!(http_from_client(&s.ns, "bare:8080", "/rs").starts_with("echo from bare-"));
}

#[tokio::test]
async fn a_numeric_target_port_is_taken_over_and_put_back() {
    let mut s = setup("intercept-num", false, 1, 3000).await;
    s.ns.target_echo_by_number();
    s.before = stored(&s.ns, false).await;

    s.plugin_ok(&["echo", "--port", "3000:8080", "--detach"]);
    assert_eq!(s.get("/n").trim(), "local laptop: GET /n HTTP/1.1");
    s.plugin_ok(&["leave", "--all"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn the_session_ends_with_the_command_and_with_its_exit_status() {
    let s = setup("intercept-cmd", false, 1, 3000).await;
    let output = s.plugin(&[
        "echo",
        "--port",
        "3000:http",
        "--",
        "sh",
        "-c",
        // The container's environment (here a service link) is there.
        "test -n \"$ECHO_SERVICE_HOST\" && exit 7",
    ]);
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

/// Starts `kubectl intercept echo` in the foreground and waits until it is live: the
/// workstation answers.
fn intercept_in_the_foreground(s: &Setup) -> std::process::Child {
    let mut plugin = s.workstation.spawn_plugin(
        &s.cluster,
        PLUGIN,
        &["echo", "-n", &s.ns.name, "--port", "3000:http"],
    );
    wait_until_local(s, &mut plugin);
    plugin
}

fn wait_until_local(s: &Setup, plugin: &mut std::process::Child) {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    // While the pods roll, the Service may have no endpoint: a refused connection is
    // "not yet".
    while !s.try_get("/live").starts_with("local laptop") {
        assert!(Instant::now() < deadline, "the session never went live");
        assert!(
            plugin.try_wait().expect("wait").is_none(),
            "the plugin exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_foreground_session_ends_on_sigterm_and_restores_the_workload() {
    let s = setup("intercept-signal", false, 1, 3000).await;
    let mut plugin = intercept_in_the_foreground(&s);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(plugin.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = plugin.wait().expect("plugin exits");
    assert!(status.success(), "{status}");
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn tunneld_restores_the_workload_when_a_foreground_session_is_killed() {
    let s = setup("intercept-kill", false, 1, 3000).await;
    let mut plugin = intercept_in_the_foreground(&s);
    // SIGKILL: the plugin cannot clean up; tunneld notices its hold end.
    plugin.kill().expect("kill");
    plugin.wait().expect("reaped");
    wait_until_restored(&s).await;
}

#[tokio::test]
async fn tunneld_restores_the_workload_when_the_plugin_is_killed_while_starting() {
    let s = setup("intercept-kill-early", false, 1, 3000).await;
    let mut plugin = s.workstation.spawn_plugin(
        &s.cluster,
        PLUGIN,
        &["echo", "-n", &s.ns.name, "--port", "3000:http"],
    );
    // Killed as soon as the workload records the session, while its pods roll out.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let recorded = [
        "get",
        "deployment",
        "echo",
        "-o",
        "jsonpath={.metadata.annotations}",
    ];
    while !s
        .ns
        .kubectl_ok(&recorded)
        .expect("annotations")
        .contains("kubedev.io/session")
    {
        assert!(Instant::now() < deadline, "nothing recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    plugin.kill().expect("kill");
    plugin.wait().expect("reaped");
    wait_until_restored(&s).await;
}

/// Waits until the workload and Service are what they were and the app answers again.
async fn wait_until_restored(s: &Setup) {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while stored(&s.ns, false).await != s.before {
        assert!(Instant::now() < deadline, "the workload was not restored");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The app answers again once its pods are back and the proxies follow.
    while !s.try_get("/after").starts_with("echo from echo-") {
        assert!(Instant::now() < deadline, "the app did not answer again");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Arguments each plugin run refuses, and what its error says.
const BAD_ARGUMENTS: [(&[&str], &str); 7] = [
    (
        &["nope", "--port", "3000"],
        "no deployment, statefulset, replicaset, daemonset or rollout named nope in namespace",
    ),
    (
        &["echo", "--port", "3000"],
        "service echo has several ports",
    ),
    (
        &["echo", "--port", "3000:grpc"],
        "service echo has no TCP port \"grpc\"",
    ),
    (
        &["echo", "-c", "db", "--port", "3000:http"],
        "has no container \"db\"",
    ),
    // An image the node cannot pull is noticed and the workload rolled back.
    (
        &[
            "echo",
            "--port",
            "3000:http",
            "--agent-image",
            "localhost:1/kubedev/none:0",
        ],
        "the agent image cannot be pulled in pod",
    ),
    // ... and the message says how to publish the image and point kubedev at it.
    (
        &[
            "echo",
            "--port",
            "3000:http",
            "--agent-image",
            "localhost:1/kubedev/none:0",
        ],
        "cannot pull the agent image localhost:1/kubedev/none:0 (from --agent-image or \
         KUBEDEV_AGENT_IMAGE). Publish it to a registry they pull from and point kubedev at \
         it:\n  make push-agent REGISTRY=",
    ),
    // An agent that exits (here: a program that is not the agent) is reported with its
    // exit, and the workload rolled back.
    (
        &["echo", "--port", "3000:http", "--agent-image", ECHO_IMAGE],
        "the agent keeps crashing in pod",
    ),
];

#[tokio::test]
async fn bad_requests_change_nothing() {
    let s = setup("intercept-bad", false, 1, 3000).await;
    let invalid = s.plugin(&["echo", "--port", "3000", "--name", "Not_A_Label"]);
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains("invalid session name \"Not_A_Label\""),
        "{stderr}"
    );
    for (args, expected) in BAD_ARGUMENTS {
        let mut all = args.to_vec();
        all.push("--detach");
        let output = s.plugin(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{all:?} should fail");
        assert!(stderr.contains(expected), "{all:?}: {stderr}");
        assert_eq!(
            stored(&s.ns, false).await,
            s.before,
            "{all:?} changed nothing"
        );
    }

    a_role_without_a_verb_changes_nothing(&s).await;

    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);
    let second = s.plugin(&[
        "echo",
        "--port",
        "3001:tcp-echo",
        "--name",
        "other",
        "--detach",
    ]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("a second intercept needs an HTTP filter"),
        "{stderr}"
    );
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

/// A Role without a verb the plugin needs: the refusal names it, and nothing changed.
async fn a_role_without_a_verb_changes_nothing(s: &Setup) {
    s.ns.revoke_from_developer(0, &["get", "list"]);
    let refused = s.plugin(&["echo", "--port", "3000:http", "--detach"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("not allowed to update deployments in namespace")
            && stderr.contains("kubectl auth can-i update deployments"),
        "{stderr}"
    );
    assert_eq!(
        stored(&s.ns, false).await,
        s.before,
        "refused: changed nothing"
    );
    s.ns.grant_developer_role();
}

/// Starts `kubectl intercept echo --lease LEASE` in the foreground, logging to `log`, and
/// waits until it is live; returns it and its tunneld's pid. The recovery tests' leases are
/// short, so that they wait seconds, not a minute.
fn leased_intercept(s: &Setup, lease: &str, log: &std::path::Path) -> (std::process::Child, u32) {
    let args = [
        "echo",
        "-n",
        &s.ns.name,
        "--port",
        "3000:http",
        "--lease",
        lease,
    ];
    let mut plugin = s
        .workstation
        .spawn_plugin_logged(&s.cluster, PLUGIN, &args, log);
    wait_until_local(s, &mut plugin);
    let tunneld = s.workstation.plugins_tunneld_pid(&s.cluster, PLUGIN);
    (plugin, tunneld)
}

/// Runs `list` until a run of it restores a session whose lease ran out; returns what it
/// said.
fn list_until_reclaimed(s: &Setup) -> String {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let listed = s.plugin(&["list"]);
        let stderr = String::from_utf8_lossy(&listed.stderr).into_owned();
        assert!(listed.status.success(), "list: {stderr}");
        if stderr.contains("its lease ran out") {
            return stderr;
        }
        assert!(Instant::now() < deadline, "never reclaimed: {stderr}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[tokio::test]
async fn a_session_whose_machine_died_is_restored_by_the_next_list_once_its_lease_ran_out() {
    let s = setup("intercept-machine-dies", false, 1, 3000).await;
    let log = s.workstation.file("plugin.log");
    // Long enough for the checks made within it, on a loaded machine.
    let (mut plugin, tunneld) = leased_intercept(&s, "20s", &log);
    let during = stored(&s.ns, false).await;

    // The machine dies: plugin and tunneld together, neither able to clean up.
    tests_e2e::freeze_then_kill(&[plugin.id(), tunneld]);
    plugin.wait().expect("reaped");
    // The intercepted port fails open: every request is answered by the app.
    for attempt in 0..10 {
        let answer = s.try_get(&format!("/through-the-kill-{attempt}"));
        assert!(
            answer.starts_with("echo from echo-"),
            "request {attempt}: {answer}"
        );
    }
    // Within the lease the session is someone's: `list` shows whose and leaves it.
    let listed = s.plugin_ok(&["list"]);
    assert!(
        listed.contains("HOLDER") && listed.contains("s left"),
        "{listed}"
    );
    assert_eq!(stored(&s.ns, false).await, during, "live lease: left alone");

    let said = list_until_reclaimed(&s);
    assert!(said.contains("deployment/echo restored"), "{said}");
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
    s.assert_no_lease_left();
}

#[tokio::test]
async fn a_machine_that_slept_past_its_lease_finds_the_session_restored_and_says_so() {
    use nix::sys::signal::{Signal, kill};
    let s = setup("intercept-sleeps", false, 1, 3000).await;
    let log = s.workstation.file("plugin.log");
    let (mut plugin, tunneld) = leased_intercept(&s, "6s", &log);
    let pids = [plugin.id(), tunneld].map(|pid| nix::unistd::Pid::from_raw(pid as i32));

    // The laptop sleeps past the lease, and a colleague's `list` restores the workload.
    for pid in pids {
        kill(pid, Signal::SIGSTOP).expect("stop");
    }
    let said = list_until_reclaimed(&s);
    assert!(said.contains("deployment/echo restored"), "{said}");
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");

    // It wakes: tunneld finds its lease taken, ends the session and tells the plugin,
    // which exits saying why, with nothing left to restore.
    for pid in pids {
        kill(pid, Signal::SIGCONT).expect("continue");
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = plugin.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the plugin kept going");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&log).expect("plugin log");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("restored its workload: the session is over"),
        "{stderr}"
    );
    assert_eq!(stored(&s.ns, false).await, s.before, "still as it was");
    assert!(s.try_get("/after-waking").starts_with("echo from echo-"));
}

#[tokio::test]
async fn an_intercept_resumes_after_the_workstation_loses_the_cluster_for_30_seconds() {
    let s = setup("intercept-cut-off", false, 1, 3000).await;
    let log = s.workstation.file("plugin.log");
    let mut plugin = s.workstation.spawn_plugin_logged(
        &s.cluster,
        PLUGIN,
        &["echo", "-n", &s.ns.name, "--port", "3000:http"],
        &log,
    );
    wait_until_local(&s, &mut plugin);

    // Requests sent all through the outage are answered: by the app while the workstation
    // does not accept them (its link is dead, not yet found dead), by the laptop once back.
    let during = std::thread::scope(|scope| {
        let requests = scope.spawn(|| {
            s.ns.exec(
                "client",
                &[
                    "probe",
                    "load",
                    "echo:8080",
                    "workers=1,seconds=25,rate=1,expect=GET /load",
                ],
            )
        });
        s.workstation
            .cut_off_from_api_server(&s.cluster, std::time::Duration::from_secs(30));
        requests.join().expect("the requests")
    });
    let during = during.expect("probe load");
    eprintln!("requests during the outage: {during}");
    assert!(during.contains(" failed=0 "), "{during}");
    // The laptop answers again, with nothing done by hand: its links to the agent lived
    // through the outage, or tunneld found them dead and linked again.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while !s.try_get("/after-the-outage").starts_with("local laptop") {
        assert!(Instant::now() < deadline, "never resumed");
        assert!(
            plugin.try_wait().expect("wait").is_none(),
            "the plugin exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Whatever the plugin said about the links, it said they came back.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let session = kubedev::session::naming::default_name("echo");
    loop {
        let said = std::fs::read_to_string(&log).expect("plugin log");
        let lost = said.find(&format!(
            "lost the links to the agents of session {session}"
        ));
        let back = said.rfind(&format!(
            "linked again to the agents of session {session} (1 linked)"
        ));
        match (lost, back) {
            (None, _) => break,
            (Some(lost), Some(back)) if back > lost => break,
            _ => assert!(Instant::now() < deadline, "not back: {said}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    let pid = nix::unistd::Pid::from_raw(i32::try_from(plugin.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = plugin.wait().expect("plugin exits");
    let said = std::fs::read_to_string(&log).expect("plugin log");
    assert!(status.success(), "{status}: {said}");
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
}

#[tokio::test]
async fn two_developers_racing_for_one_workload_one_wins_and_the_other_is_told_who() {
    let (s, bob, _bob_server) = setup_with_bob("intercept-race", 1).await;
    let developers = [("alice", &s.workstation), ("bob", &bob)];
    let (cluster, namespace) = (&s.cluster, s.ns.name.as_str());
    for round in 0..10 {
        // Each round another developer's run starts first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let outputs = std::thread::scope(|scope| {
            let runs = order.map(|i| {
                let (name, workstation) = developers[i];
                let args = [
                    "echo",
                    "-n",
                    namespace,
                    "--port",
                    "3000:http",
                    "--name",
                    name,
                    "--detach",
                ];
                scope.spawn(move || (name, workstation.plugin(cluster, PLUGIN, &args)))
            });
            runs.map(|run| run.join().expect("a plugin run"))
        });
        let won: Vec<&str> = outputs
            .iter()
            .filter(|(_, output)| output.status.success())
            .map(|(name, _)| *name)
            .collect();
        let [winner] = won[..] else {
            panic!("round {round}: not one winner: {outputs:?}");
        };
        let (_, lost) = outputs
            .iter()
            .find(|(name, _)| *name != winner)
            .expect("a loser");
        let refusal = String::from_utf8_lossy(&lost.stderr);
        assert!(
            refusal.contains(&format!("intercept \"{winner}\" is already on it"))
                && refusal.contains("(held by "),
            "round {round}: the refusal names the holder: {refusal}"
        );
        // The record is the winner's, whole: the session lists and the laptop answers.
        let listed: Value =
            serde_json::from_str(&s.plugin_ok(&["list", "-o", "json"])).expect("list -o json");
        assert_eq!(listed[0]["name"], winner, "round {round}: {listed}");
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        let local = if winner == "alice" { "laptop" } else { "bob" };
        assert_eq!(
            s.get("/race").trim(),
            format!("local {local}: GET /race HTTP/1.1")
        );

        let leaver = developers.iter().find(|(name, _)| *name == winner);
        let (_, workstation) = leaver.expect("the winner");
        workstation.plugin_ok(&s.cluster, PLUGIN, &["leave", winner, "-n", &s.ns.name]);
        assert_eq!(
            stored(&s.ns, false).await,
            s.before,
            "round {round}: restored"
        );
    }
    s.assert_no_lease_left();
}

#[tokio::test]
async fn two_filtered_intercepts_racing_both_get_in_and_the_last_to_leave_restores() {
    let (s, bob, _bob_server) = setup_with_bob("intercept-race-filtered", 1).await;
    let developers = [("alice", &s.workstation), ("bob", &bob)];
    let (cluster, namespace) = (&s.cluster, s.ns.name.as_str());
    for round in 0..3 {
        std::thread::scope(|scope| {
            let runs = developers.map(|(name, workstation)| {
                let header = format!("x-dev={name}");
                scope.spawn(move || {
                    let args = [
                        "echo",
                        "-n",
                        namespace,
                        "--port",
                        "3000:http",
                        "--http-header",
                        &header,
                        "--name",
                        name,
                        "--detach",
                    ];
                    workstation.plugin_ok(cluster, PLUGIN, &args)
                })
            });
            runs.map(|run| run.join().expect("both get in"))
        });
        assert_eq!(
            s.get_with("/who", Some("X-Dev: alice")),
            "local laptop: GET /who HTTP/1.1"
        );
        assert_eq!(
            s.get_with("/who", Some("X-Dev: bob")),
            "local bob: GET /who HTTP/1.1"
        );
        // Whoever leaves first, the other keeps the session; the last restores.
        let (first, last) = if round % 2 == 0 {
            (developers[0], developers[1])
        } else {
            (developers[1], developers[0])
        };
        first
            .1
            .plugin_ok(&s.cluster, PLUGIN, &["leave", first.0, "-n", &s.ns.name]);
        assert_ne!(
            stored(&s.ns, false).await,
            s.before,
            "round {round}: one left"
        );
        last.1
            .plugin_ok(&s.cluster, PLUGIN, &["leave", last.0, "-n", &s.ns.name]);
        assert_eq!(
            stored(&s.ns, false).await,
            s.before,
            "round {round}: restored"
        );
    }
}

#[tokio::test]
async fn list_and_leave_all_cover_every_namespace_of_this_machine_s_sessions() {
    let (s, bob, _bob_server) = setup_with_bob("intercept-all", 1).await;
    // With no session yet, list shows what a session can start on.
    let output = s.plugin(&["list"]);
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("deployment/echo")
            && listed.contains("echo: http 8080->http, tcp-echo 7000->tcp-echo"),
        "list with no session: {listed} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let other = TestNamespace::create(&s.cluster, "intercept-all-b").await;
    other.deploy_echo("echo", 1).await.expect("echo ready");
    let other_before = other.echo_template(false).await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);
    let in_other = |workstation: &Workstation, args: &[&str]| {
        let mut all = vec!["-n", other.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(&s.cluster, PLUGIN, &all)
    };
    let filtered = |name: &'static str, header: &'static str| {
        [
            "echo",
            "--port",
            "3000:http",
            "--http-header",
            header,
            "--name",
            name,
            "--detach",
        ]
    };
    in_other(&s.workstation, &filtered("mine-b", "x-dev=me"));
    in_other(&bob, &filtered("bob", "x-dev=bob"));

    let here = s.ns.name.clone();
    let there = other.name.clone();
    let session = kubedev::session::naming::default_name("echo");
    assert_eq!(
        listed_names(&s.plugin_ok(&["list", "-o", "json"])),
        [(here.clone(), session.clone())]
    );
    let mut everywhere = vec![
        (here.clone(), session.clone()),
        (there.clone(), "bob".to_owned()),
        (there.clone(), "mine-b".to_owned()),
    ];
    everywhere.sort();
    assert_eq!(
        listed_names(&s.plugin_ok(&["list", "-A", "-o", "json"])),
        everywhere
    );
    assert!(s.plugin_ok(&["list", "-A"]).starts_with("NAMESPACE "));

    gathers_every_session(&s, &here, &there);

    // leave --all ends this machine's sessions in both namespaces, and names Bob's.
    let left = s.plugin(&["leave", "--all"]);
    let said = String::from_utf8_lossy(&left.stderr);
    assert!(left.status.success(), "leave --all: {said}");
    assert!(
        said.contains(&format!(
            "left alone: session bob on deployment/echo in namespace {there}"
        )),
        "{said}"
    );
    assert_eq!(stored(&s.ns, false).await, s.before, "restored exactly");
    assert_eq!(
        listed_names(&in_other(&bob, &["list", "-o", "json"])),
        [(there.clone(), "bob".to_owned())]
    );
    in_other(&bob, &["leave", "bob"]);
    assert_eq!(other.echo_template(false).await, other_before);
}

/// The namespace and name of each row of `list -o json`, sorted.
fn listed_names(json: &str) -> Vec<(String, String)> {
    let rows: Vec<Value> = serde_json::from_str(json).expect("list JSON");
    let mut names: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            let field = |key: &str| row[key].as_str().expect("string").to_owned();
            (field("namespace"), field("name"))
        })
        .collect();
    names.sort();
    names
}

/// gather-logs: tunneld's log, every session's record, each agent's status and log.
fn gathers_every_session(s: &Setup, here: &str, there: &str) {
    let archive = s.workstation.file("report.tar.gz");
    let archive = archive.to_str().expect("utf-8 path");
    s.plugin_ok(&["gather-logs", "-A", "--output-file", archive]);
    let listing = std::process::Command::new("tar")
        .args(["tzf", archive])
        .output()
        .expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (what, wanted) in [
        ("tunneld's log", "tunneld/".to_owned()),
        (
            "a session's record",
            format!("sessions/{there}/mine-b/record.json"),
        ),
        (
            "an agent's log",
            format!(
                "sessions/{here}/{}/echo-",
                kubedev::session::naming::default_name("echo")
            ),
        ),
    ] {
        assert!(
            listing.contains(&wanted),
            "no {what} in the archive:\n{listing}"
        );
    }
    assert!(listing.contains(".agent.log\n"), "{listing}");
}

/// A DaemonSet, named bare: its pod gets the agent, the Service's requests reach the
/// workstation, and leave restores its template exactly and the app answers again.
#[tokio::test]
async fn a_daemonsets_requests_reach_the_workstation_until_leave_restores_it() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "intercept-ds").await;
    ns.deploy_echo_daemonset("echo").await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let daemonsets = ns.api::<DaemonSet>();
    let template = || async {
        let daemonset = daemonsets.get("echo").await.expect("daemonset");
        serde_json::to_value(daemonset.spec.map(|spec| spec.template)).expect("json")
    };
    let before = template().await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "laptop");
    let namespace = ["-n", ns.name.as_str()];

    let start = [&["echo", "--port", "3000:http", "--detach"], &namespace[..]].concat();
    workstation.plugin_ok(&cluster, PLUGIN, &start);
    assert_eq!(
        http_from_client(&ns, "echo:8080", "/node").trim(),
        "local laptop: GET /node HTTP/1.1"
    );
    let list = [&["list", "-o", "json"], &namespace[..]].concat();
    let listed: Value =
        serde_json::from_str(&workstation.plugin_ok(&cluster, PLUGIN, &list)).expect("JSON");
    assert_eq!(listed[0]["workload"], "daemonset/echo", "{listed}");

    workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[&["leave", "echo"], &namespace[..]].concat(),
    );
    assert_eq!(template().await, before, "restored exactly");
    ns.wait_for_the_echo_app("/after");
}
