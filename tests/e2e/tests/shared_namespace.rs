//! A namespace shared with teammates: what they change on a workload during a session
//! stays after it ends.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use tests_e2e::developer::Developer;
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
    /// Runs the plugin in the test's namespace.
    fn plugin(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        self.workstation.plugin(&self.cluster, PLUGIN, &all)
    }

    /// Runs the plugin, which must succeed; its stdout and stderr.
    fn plugin_ok(&self, args: &[&str]) -> String {
        let output = self.plugin(args);
        assert!(output.status.success(), "{PLUGIN} {args:?}: {output:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// The workload's template and the Service's spec, as stored.
    async fn stored(&self) -> (Value, Value) {
        self.ns.stored_deployment_and_service("echo").await
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
            let linked = listed[0]["linkedPods"].as_array().map_or(0, Vec::len);
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
            && left.contains("spec.template.spec.containers[echo].env")
            && left.contains("spec.replicas (1 -> 3)"),
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

#[tokio::test]
async fn a_start_the_namespaces_quota_refuses_says_why_within_seconds_and_changes_nothing() {
    let s = setup("quota").await;
    let before = s.stored().await;
    // The echo pod and the client pod: no room for the agent's pod during the rollout.
    let quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}
    });
    s.ns.apply_json(&quota).expect("quota");
    s.ns.kubectl_ok(&[
        "wait",
        "resourcequota/pods",
        "--for=jsonpath={.status.used.pods}=2",
        "--timeout=60s",
    ])
    .expect("the quota counts the pods");

    let asked = Instant::now();
    let output = s.plugin(&["echo", "--port", "3000:http", "--detach", "--timeout", "3m"]);
    let waited = asked.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.contains("cannot be created: FailedCreate") && stderr.contains("exceeded quota"),
        "the quota is named: {stderr}"
    );
    eprintln!("the quota's refusal was shown {waited:?} after the command started: {stderr}");
    assert!(
        waited < Duration::from_secs(90),
        "told long before the 3 min timeout: {waited:?}"
    );
    assert_eq!(s.stored().await, before, "rolled back exactly");
}

/// Requests the echo Service from the client pod every 0.25 s until [`stop_probing`];
/// the thread returns a line `ok` or `fail` for each request.
fn start_probing(ns: &TestNamespace) -> std::thread::JoinHandle<String> {
    let namespace = ns.name.clone();
    let probing = std::thread::spawn(move || {
        // The request ends in an empty line, which `$(...)` would strip: hence the X.
        let probe = "rm -f /tmp/stop; \
            req=$(printf 'GET /probe HTTP/1.1\\r\\nHost: echo\\r\\nConnection: close\\r\\n\\r\\nX'); \
            req=${req%X}; \
            while [ ! -e /tmp/stop ]; do \
            if out=$(probe tcp echo:8080 \"$req\" 2>&1); then echo ok; else echo fail: $out; fi; \
            sleep 0.25; done";
        let args = ["-n", &namespace, "exec", "client", "--", "sh", "-c", probe];
        let output = TestCluster::get().kubectl(&args);
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_secs(2));
    probing
}

/// Stops [`start_probing`]; the requests that succeeded and those that failed.
fn stop_probing(ns: &TestNamespace, probing: std::thread::JoinHandle<String>) -> (usize, usize) {
    ns.exec("client", &["touch", "/tmp/stop"]).expect("stop");
    let log = probing.join().expect("the probe's output");
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("fail"))
        .collect();
    if let Some(first) = failures.first() {
        eprintln!("first failed request: {first}");
    }
    let ok = log.lines().filter(|line| line.trim() == "ok").count();
    (ok, failures.len())
}

#[tokio::test]
async fn the_service_never_fails_a_request_across_a_failed_start_a_session_and_leave() {
    let s = setup("no-gap").await;
    // Two replicas with readiness probes and the default grace period: a plain rollout
    // of this workload fails no request.
    s.ns.kubectl_ok(&[
        "patch",
        "deployment",
        "echo",
        "--type=merge",
        "-p",
        r#"{"spec": {"replicas": 2, "template": {"spec": {"terminationGracePeriodSeconds": 30}}}}"#,
    ])
    .expect("two replicas");
    s.ns.target_echo_by_number();
    s.ns.wait_deployment_ready("echo").await.expect("ready");
    let before = s.stored().await;
    let probing = start_probing(&s.ns);

    let unpullable = "127.0.0.1:1/kubedev/no-such-agent:0";
    let failed = s.plugin(&[
        "echo",
        "--port",
        "3000:8080",
        "--agent-image",
        unpullable,
        "--detach",
    ]);
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("cannot be pulled"),
        "{failed:?}"
    );
    assert_eq!(s.stored().await, before, "rolled back exactly");

    s.plugin_ok(&["echo", "--port", "3000:8080", "--detach"]);
    let answer =
        s.ns.http_get("client", "echo:8080", "/during")
            .expect("GET");
    assert_eq!(answer.trim(), "local laptop: GET /during HTTP/1.1");
    std::thread::sleep(Duration::from_secs(3));
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(s.stored().await, before, "restored exactly");
    std::thread::sleep(Duration::from_secs(3));

    let (ok, failed) = stop_probing(&s.ns, probing);
    eprintln!("probe across a failed start, a session and leave: {ok} ok, {failed} failed");
    assert!(ok > 40, "the probe ran: {ok} requests");
    assert_eq!(failed, 0, "no request failed ({ok} succeeded)");
}

#[tokio::test]
async fn a_lease_renewed_by_a_clock_far_behind_is_not_reclaimed_by_a_teammate() {
    let s = setup("skewed-lease").await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach"]);
    let during = s.stored().await;
    let lease =
        s.ns.kubectl_ok(&[
            "get",
            "leases",
            "-l",
            "app.kubernetes.io/managed-by=kubedev",
            "-o",
            "name",
        ])
        .expect("the session's lease");
    // As a holder whose clock is an hour (here: years) behind the teammate's writes it.
    s.ns.kubectl_ok(&[
        "patch",
        lease.trim(),
        "--type=merge",
        "-p",
        r#"{"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}}"#,
    ])
    .expect("skew the lease");

    let teammate = Workstation::create(&s.cluster);
    for _ in 0..2 {
        let args = ["-n", s.ns.name.as_str(), "list"];
        let listed = teammate.plugin(&s.cluster, PLUGIN, &args);
        let said = String::from_utf8_lossy(&listed.stderr);
        assert!(listed.status.success(), "{listed:?}");
        assert!(!said.contains("lease ran out"), "nothing reclaimed: {said}");
        std::thread::sleep(Duration::from_secs(3));
    }
    assert_eq!(s.stored().await, during, "still intercepted");
    let answer = s.ns.http_get("client", "echo:8080", "/still").expect("GET");
    assert_eq!(answer.trim(), "local laptop: GET /still HTTP/1.1");
    s.plugin_ok(&["leave", "echo"]);
}

#[tokio::test]
async fn a_teammates_live_session_is_left_alone_unless_forced() {
    let s = setup("leave-teammate").await;
    let before = s.stored().await;
    s.plugin_ok(&["echo", "--port", "3000:http", "--detach", "--lease", "1m"]);
    let teammate = Developer::create(&s.cluster);
    let session = kubedev::session::naming::default_name("echo");
    // The workload's name ends only one's own session: others' are named, and kept.
    let by_workload = ["intercept", "leave", "echo", "-n", s.ns.name.as_str()];
    let refused = teammate.kubectl(&s.workstation, &by_workload);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(&format!("others' are: {session} (end one by its name)")),
        "{said}"
    );
    let leave = [
        "intercept",
        "leave",
        session.as_str(),
        "-n",
        s.ns.name.as_str(),
    ];
    let refused = teammate.kubectl(&s.workstation, &leave);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("is held by root@") && said.contains("--force"),
        "{said}"
    );
    let answer = s.ns.http_get("client", "echo:8080", "/still").expect("GET");
    assert_eq!(answer.trim(), "local laptop: GET /still HTTP/1.1");

    teammate.kubectl_ok(&s.workstation, &[&leave[..], &["--force"]].concat());
    assert_eq!(s.stored().await, before, "restored exactly");
}

/// Two developers intercept the same workload with their own filters and no `--name`: each
/// session is named after its developer, neither refuses the other, and each `leave echo`
/// ends its own.
#[tokio::test]
async fn teammates_intercepting_one_workload_by_default_names_do_not_collide() {
    let s = setup("teammates").await;
    let before = s.stored().await;
    let teammate = Developer::create(&s.cluster);
    let _teammates_server = s.workstation.serve_http(3001, "teammate");
    let namespace = ["-n", s.ns.name.as_str()];
    s.plugin_ok(&[
        "echo",
        "--port",
        "3000:http",
        "--http-header",
        "x-dev=root",
        "--detach",
    ]);
    let theirs = ["intercept", "echo", "--port", "3001:http", "--detach"];
    let filter = ["--http-header", "x-dev=teammate"];
    teammate.kubectl_ok(&s.workstation, &[&theirs[..], &filter, &namespace].concat());

    let listed = s.plugin_ok(&["list", "-o", "name"]);
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort_unstable();
    let mut expected = vec!["echo-root".to_owned(), format!("echo-{}", teammate.name)];
    expected.sort_unstable();
    assert_eq!(names, expected, "{listed}");
    let get = |who: &str| {
        let request =
            format!("GET /who HTTP/1.1\r\nHost: echo\r\nX-Dev: {who}\r\nConnection: close\r\n\r\n");
        let response = (s
            .ns
            .exec("client", &["probe", "tcp", "echo:8080", &request]))
        .expect("a response");
        let (_, body) = response.split_once("\r\n\r\n").expect("a body");
        body.to_owned()
    };
    assert_eq!(get("root").trim(), "local laptop: GET /who HTTP/1.1");
    assert_eq!(get("teammate").trim(), "local teammate: GET /who HTTP/1.1");

    teammate.kubectl_ok(
        &s.workstation,
        &[&["intercept", "leave", "echo"], &namespace[..]].concat(),
    );
    assert_eq!(s.plugin_ok(&["list", "-o", "name"]).trim(), "echo-root");
    s.plugin_ok(&["leave", "echo"]);
    assert_eq!(s.stored().await, before, "restored exactly");
}
