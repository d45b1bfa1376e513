//! A GitOps controller re-applying the intercepted workload and its Service from git, as
//! Argo CD does (client-side apply) and as Flux does (server-side apply with force): the
//! session is not left taking nothing in silence. tunneld notices, ends it with what was
//! changed and by whom, and nothing of kubedev is left once the controller syncs again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::workstation::{LocalServer, Workstation};
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// How Flux's kustomize-controller applies: server-side, forcing its fields.
const AS_FLUX: &[&str] = &[
    "--server-side",
    "--force-conflicts",
    "--field-manager",
    "kustomize-controller",
];

/// How often the reconciler applies the manifests.
const SYNC_PERIOD: Duration = Duration::from_secs(2);

struct Setup {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    _server: LocalServer,
    /// The Deployment and Service as "git" has them.
    manifests: std::path::PathBuf,
}

/// The echo workload with a numeric Service targetPort, put under `apply` (`how`) from
/// manifests of its own, as a GitOps controller would have it.
async fn setup(prefix: &str, how: &[&str]) -> Setup {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    ns.target_echo_by_number();
    let workstation = Workstation::create(&cluster);
    let manifests = workstation.file("git.json");
    let mut items = Vec::new();
    for kind in ["deployment", "service"] {
        let json = ns
            .kubectl_ok(&["get", kind, "echo", "-o", "json"])
            .expect("get");
        items.push(as_in_git(serde_json::from_str(&json).expect("json")));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&manifests, list.to_string()).expect("manifests");
    let s = Setup {
        _server: workstation.serve_http(3000, "laptop"),
        cluster,
        ns,
        workstation,
        manifests,
    };
    s.sync(how);
    s.ns.wait_deployment_ready("echo").await.expect("ready");
    s
}

/// `object` without what the cluster adds: what a repository holds.
fn as_in_git(mut object: Value) -> Value {
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    metadata.retain(|key, _| key == "name" || key == "labels");
    object.as_object_mut().expect("object").remove("status");
    for field in ["clusterIP", "clusterIPs"] {
        if let Some(spec) = object["spec"].as_object_mut() {
            spec.remove(field);
        }
    }
    object
}

impl Setup {
    fn sync(&self, how: &[&str]) {
        let file = self.manifests.display().to_string();
        let mut args = vec!["apply", "-f", file.as_str()];
        args.extend_from_slice(how);
        self.ns.kubectl_ok(&args).expect("sync");
    }

    /// Syncs every [`SYNC_PERIOD`] until the returned flag is set; as Flux does, leaves
    /// the objects alone while they are annotated to pause it.
    fn reconcile(
        &self,
        how: &'static [&'static str],
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (namespace, file) = (self.ns.name.clone(), self.manifests.display().to_string());
        let looping = std::thread::spawn(move || {
            let cluster = TestCluster::get();
            // Bounded: at most two minutes of syncs.
            for _ in 0..60 {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if !paused(&cluster, &namespace) {
                    let mut args = vec!["-n", namespace.as_str(), "apply", "-f", file.as_str()];
                    args.extend_from_slice(how);
                    cluster.kubectl(&args);
                }
                std::thread::sleep(SYNC_PERIOD);
            }
        });
        (stop, looping)
    }

    /// The `kind` named echo as stored, its managed fields included.
    fn object(&self, kind: &str) -> Value {
        let json = self
            .ns
            .kubectl_ok(&["get", kind, "echo", "-o", "json", "--show-managed-fields"])
            .expect("get");
        serde_json::from_str(&json).expect("json")
    }

    fn annotations(&self, kind: &str) -> Value {
        self.object(kind)["metadata"]["annotations"].clone()
    }

    /// The fields Flux's controller manages on the `kind` named echo.
    fn fluxs_fields(&self, kind: &str) -> Value {
        let object = self.object(kind);
        let managers = object["metadata"]["managedFields"].as_array().cloned();
        let flux = managers
            .into_iter()
            .flatten()
            .find(|entry| entry["manager"] == "kustomize-controller");
        flux.map(|entry| entry["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    fn get(&self, path: &str) -> String {
        self.ns
            .http_get("client", "echo:8080", path)
            .unwrap_or_default()
    }
}

/// Whether Flux is paused on the echo Deployment or Service.
fn paused(cluster: &TestCluster, namespace: &str) -> bool {
    ["deployment", "service"].iter().any(|kind| {
        let path = r"jsonpath={.metadata.annotations.kustomize\.toolkit\.fluxcd\.io/reconcile}";
        let output = cluster.kubectl(&["-n", namespace, "get", kind, "echo", "-o", path]);
        String::from_utf8_lossy(&output.stdout).trim() == "disabled"
    })
}

/// Intercepts in the foreground while the reconciler syncs with `how`; returns what the
/// plugin said when it exited.
async fn intercept_while_reconciled(prefix: &str, how: &'static [&'static str]) -> (Setup, String) {
    let s = setup(prefix, how).await;
    let log = s.workstation.file("plugin.log");
    let args = ["echo", "-n", s.ns.name.as_str(), "--port", "3000:8080"];
    let mut plugin = s
        .workstation
        .spawn_plugin_logged(&s.cluster, PLUGIN, &args, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !s.get("/live").starts_with("local laptop") {
        assert!(
            plugin.try_wait().expect("wait").is_none(),
            "the plugin exited"
        );
        assert!(Instant::now() < deadline, "never live");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (stop, looping) = s.reconcile(how);
    let synced = Instant::now();
    let status = loop {
        if let Some(status) = plugin.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the session went on"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "the plugin ended {:?} after the reconciler started",
        synced.elapsed()
    );
    // One more sync after the session: nothing of kubedev may be left on the objects.
    std::thread::sleep(SYNC_PERIOD * 2);
    stop.store(true, Ordering::SeqCst);
    looping.join().expect("reconciler");
    let said = std::fs::read_to_string(&log).expect("log");
    eprintln!("the plugin said: {said}");
    assert!(!status.success(), "{said}");
    s.ns.wait_deployment_ready("echo").await.expect("ready");
    for kind in ["deployment", "service"] {
        let object =
            s.ns.kubectl_ok(&["get", kind, "echo", "-o", "json", "--show-managed-fields"])
                .expect("get");
        for trace in [
            "kubedev-agent",
            "kubedev.io/session",
            "\"manager\": \"kubedev\"",
        ] {
            assert!(
                !object.contains(trace),
                "{trace} left on the {kind}: {object}"
            );
        }
    }
    assert!(s.get("/after").starts_with("echo from echo-"));
    (s, said)
}

#[tokio::test]
async fn a_client_side_apply_sync_as_argo_cd_does_ends_the_session_saying_who() {
    let (_s, said) = intercept_while_reconciled("gitops-argo", &[]).await;
    assert!(
        said.contains("service/echo: port 8080 targets 8080 again")
            && said.contains("changed by kubectl-client-side-apply")
            && said.contains("the session is over"),
        "{said}"
    );
}

#[tokio::test]
async fn a_forced_server_side_apply_as_flux_does_ends_the_session_saying_who() {
    let how = AS_FLUX;
    let (_s, said) = intercept_while_reconciled("gitops-flux", how).await;
    assert!(
        said.contains("targets 8080 again")
            && said.contains("changed by kustomize-controller (Apply)")
            && said.contains("the session is over"),
        "{said}"
    );
}

#[tokio::test]
async fn a_session_that_pauses_flux_outlives_its_syncs_and_leave_resumes_them() {
    let how = AS_FLUX;
    let s = setup("gitops-pause", how).await;
    let before = s.ns.stored_deployment_and_service("echo").await;
    let fluxs_before = ["deployment", "service"].map(|kind| s.fluxs_fields(kind));
    let args = [
        "echo",
        "-n",
        s.ns.name.as_str(),
        "--port",
        "3000:8080",
        "--pause-flux",
        "--detach",
    ];
    let output = s.workstation.plugin(&s.cluster, PLUGIN, &args);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    for kind in ["deployment", "service"] {
        assert_eq!(
            s.annotations(kind)["kustomize.toolkit.fluxcd.io/reconcile"],
            "disabled"
        );
    }
    let (stop, looping) = s.reconcile(how);
    std::thread::sleep(SYNC_PERIOD * 4);
    assert_eq!(
        s.get("/paused").trim(),
        "local laptop: GET /paused HTTP/1.1",
        "{said}"
    );

    let leave = ["-n", s.ns.name.as_str(), "leave", "echo"];
    s.workstation.plugin_ok(&s.cluster, PLUGIN, &leave);
    for kind in ["deployment", "service"] {
        let annotations = s.annotations(kind);
        let pause = annotations.get("kustomize.toolkit.fluxcd.io/reconcile");
        assert!(pause.is_none(), "{annotations}");
    }
    // Flux manages every field it did: it applies only what drifted, and would not win
    // back fields kubedev took and kept.
    let fluxs_after = ["deployment", "service"].map(|kind| s.fluxs_fields(kind));
    assert_eq!(fluxs_after, fluxs_before);
    // Flux syncs again, and finds the objects as git has them.
    std::thread::sleep(SYNC_PERIOD * 2);
    stop.store(true, Ordering::SeqCst);
    looping.join().expect("reconciler");
    assert_eq!(s.ns.stored_deployment_and_service("echo").await, before);
}

#[tokio::test]
async fn a_workload_replaced_whole_during_a_session_gets_its_service_back() {
    let s = setup("gitops-replace", &[]).await;
    let before = s.ns.stored_deployment_and_service("echo").await;
    let args = [
        "echo",
        "-n",
        s.ns.name.as_str(),
        "--port",
        "3000:8080",
        "--detach",
    ];
    s.workstation.plugin_ok(&s.cluster, PLUGIN, &args);
    assert_eq!(s.get("/live").trim(), "local laptop: GET /live HTTP/1.1");
    // A replace from git (as `kubectl replace` or Argo CD's Replace=true does): the record
    // goes with the rest of kubedev's changes, but the Service is left pointed at the agent.
    let json =
        s.ns.kubectl_ok(&["get", "deployment", "echo", "-o", "json"])
            .expect("get");
    let mut deployment: Value = serde_json::from_str(&json).expect("json");
    let git: Value =
        serde_json::from_str(&std::fs::read_to_string(&s.manifests).expect("git")).expect("json");
    deployment["spec"] = git["items"][0]["spec"].clone();
    deployment["metadata"]["annotations"] = serde_json::json!({});
    let replaced = s.workstation.file("replaced.json");
    std::fs::write(&replaced, deployment.to_string()).expect("write");
    s.ns.kubectl_ok(&["replace", "-f", &replaced.display().to_string()])
        .expect("replace");

    let deadline = Instant::now() + Duration::from_secs(60);
    while s.ns.stored_deployment_and_service("echo").await != before {
        assert!(Instant::now() < deadline, "the Service never came back");
        std::thread::sleep(Duration::from_millis(500));
    }
    s.ns.wait_deployment_ready("echo").await.expect("ready");
    // The app answers again once the Service's endpoints reach the proxies.
    while !s.get("/after").starts_with("echo from echo-") {
        assert!(Instant::now() < deadline, "the app never answered again");
        std::thread::sleep(Duration::from_millis(500));
    }
    let secret =
        s.ns.kubectl_ok(&[
            "get",
            "secret",
            "kubedev-session-tokens",
            "-o",
            "jsonpath={.data}",
        ])
        .expect("the tokens' Secret");
    assert!(
        secret.trim().is_empty() || secret.trim() == "{}",
        "tokens left: {secret}"
    );
}
