//! `kubectl ingest`: the container's environment, as the kubelet resolves it (secrets,
//! fieldRefs), on the workstation, for env files and for `-- CMD`; no traffic moves.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use serde_json::{Value, json};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-ingest";

async fn deploy_app_with_env(ns: &TestNamespace) {
    ns.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=DB_PASSWORD=s3cret",
    ])
    .expect("secret");
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": tests_e2e::ECHO_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["--http", "8080"],
                        "env": [
                            {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "GREETING", "value": "hello from $(MY_POD)"}
                        ],
                        "envFrom": [{"secretRef": {"name": "creds"}}]
                    }]
                }
            }
        }
    });
    ns.apply_json(&deployment).expect("deployment");
    ns.wait_deployment_ready("app").await.expect("app ready");
}

#[tokio::test]
async fn the_environment_arrives_in_files_and_in_the_command() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "ingest").await;
    deploy_app_with_env(&ns).await;
    let before = ns.api::<Deployment>().get("app").await.expect("app").spec;
    let workstation = Workstation::create(&cluster);
    let env_json = std::env::temp_dir().join(format!("{}-env.json", ns.name));

    let output = workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[
            "app",
            "-n",
            &ns.name,
            "--env-json",
            &env_json.display().to_string(),
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$DB_PASSWORD\" \"$MY_POD\" \"$GREETING\"",
        ],
    );
    let [password, pod, greeting] = output.split('|').collect::<Vec<_>>()[..] else {
        panic!("unexpected output {output:?}");
    };
    assert_eq!(password, "s3cret", "from the secret");
    assert!(
        pod.starts_with("app-"),
        "the pod's name from a fieldRef: {pod}"
    );
    assert_eq!(greeting, format!("hello from {pod}"), "a $(VAR) reference");

    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&env_json)
        .expect("env file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&env_json).expect("read")).expect("json");
    assert_eq!(written["DB_PASSWORD"], "s3cret");
    std::fs::remove_file(&env_json).ok();

    let after = ns.api::<Deployment>().get("app").await.expect("app").spec;
    assert_eq!(
        serde_json::to_value(after.map(|s| s.template)).expect("json"),
        serde_json::to_value(before.map(|s| s.template)).expect("json"),
        "restored exactly"
    );
}

#[tokio::test]
async fn a_statefulset_named_bare_with_three_replicas_is_ingested_and_restored() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "ingest-sts").await;
    ns.deploy_echo_statefulset("echo", 3)
        .await
        .expect("echo ready");
    let before = ns.api::<StatefulSet>().get("echo").await.expect("sts").spec;
    let workstation = Workstation::create(&cluster);

    let output = workstation.plugin_ok(
        &cluster,
        PLUGIN,
        &[
            // A bare name: the one workload of that name, whatever its kind.
            "echo",
            "-n",
            &ns.name,
            "--",
            "sh",
            "-c",
            // Service links are part of the container's environment.
            "printf %s \"$ECHO_SERVICE_PORT_HTTP\"",
        ],
    );
    assert_eq!(output, "8080");
    let after = ns.api::<StatefulSet>().get("echo").await.expect("sts").spec;
    assert_eq!(
        serde_json::to_value(after.map(|s| s.template)).expect("json"),
        serde_json::to_value(before.map(|s| s.template)).expect("json"),
        "restored exactly"
    );
}

/// A workload of `kind` named `name` whose pods never start (nothing waits for them).
fn idle_workload(kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": tests_e2e::ECHO_IMAGE}]}
            }
        }
    })
}

#[tokio::test]
async fn a_bare_name_two_kinds_share_is_refused_with_the_choices_and_nothing_changes() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "ingest-twins").await;
    ns.apply_json(&idle_workload("Deployment", "twin"))
        .expect("deployment");
    ns.apply_json(&idle_workload("StatefulSet", "twin"))
        .expect("statefulset");
    let deployment = ns
        .api::<Deployment>()
        .get("twin")
        .await
        .expect("deployment");
    let statefulset = ns.api::<StatefulSet>().get("twin").await.expect("sts");
    let workstation = Workstation::create(&cluster);

    let output = workstation.plugin(&cluster, PLUGIN, &["twin", "-n", &ns.name, "--", "true"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains(&format!(
            "twin names a deployment and a statefulset in namespace {}: say which, as \
             deployment/twin or statefulset/twin",
            ns.name
        )),
        "{stderr}"
    );
    // Their controllers write their status meanwhile; nothing else may change.
    let after = ns
        .api::<Deployment>()
        .get("twin")
        .await
        .expect("deployment");
    assert_eq!(untouched(&deployment), untouched(&after), "the Deployment");
    let after = ns.api::<StatefulSet>().get("twin").await.expect("sts");
    assert_eq!(
        untouched(&statefulset),
        untouched(&after),
        "the StatefulSet"
    );
}

/// What a refused run must leave as it was: the object's spec (its generation) and
/// annotations.
fn untouched<K: kube::Resource>(object: &K) -> (Option<i64>, Value) {
    let meta = object.meta();
    let annotations = serde_json::to_value(&meta.annotations).expect("json");
    (meta.generation, annotations)
}

/// `--as` and `--as-group`, as kubectl takes them: the plugin, and the tunneld it starts,
/// act with the rights of the user named and of nobody else. The namespace's Role is bound
/// to a group: alice alone may do nothing there, alice in that group may ingest.
#[tokio::test]
async fn as_and_as_group_act_with_the_rights_of_the_user_named() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "ingest-as").await;
    deploy_app_with_env(&ns).await;
    let before = ns.api::<Deployment>().get("app").await.expect("app");
    let workstation = Workstation::create(&cluster);
    let admin = cluster.admin_kubeconfig.display().to_string();
    let namespace = ["-n", &ns.name, "--kubeconfig", &admin];
    let alice = ["--as", "alice"];
    let groups = ["--as-group", "kubedev-developers", "--as-group", "team-a"];

    let alone = [&["app"], &namespace[..], &alice, &["--", "true"]].concat();
    let refused = refusal(&workstation.plugin(&cluster, PLUGIN, &alone));
    assert!(
        refused.contains("acting as alice (--as)") && refused.contains("not allowed to get"),
        "{refused}"
    );
    let groups_alone = [&["app"], &namespace[..], &groups[..2]].concat();
    let refused = refusal(&workstation.plugin(&cluster, PLUGIN, &groups_alone));
    assert!(refused.contains("--as-group needs --as"), "{refused}");
    let after = ns.api::<Deployment>().get("app").await.expect("app");
    assert_eq!(untouched(&before), untouched(&after), "nothing changed");

    let print_password = ["--", "sh", "-c", "printf %s \"$DB_PASSWORD\""];
    let in_group = [
        &["app"],
        &namespace[..],
        &alice,
        &groups,
        &["--request-timeout", "0"],
        &print_password,
    ];
    let output = workstation.plugin_ok(&cluster, PLUGIN, &in_group.concat());
    assert_eq!(output, "s3cret");
    let status = [&namespace[..], &alice, &groups, &["status", "-o", "json"]].concat();
    let status: Value =
        serde_json::from_str(&workstation.plugin_ok(&cluster, PLUGIN, &status)).expect("JSON");
    the_only_tunneld_acts_as_alice(&workstation, &status);
    // The admin's and the developer's kubeconfigs name their context alike: each
    // identity still has a tunneld of its own, and neither is alice's.
    let admins = [&namespace[..], &["status", "-o", "json"]].concat();
    let admins = workstation.plugin_ok(&cluster, PLUGIN, &admins);
    let running =
        |status: &str| serde_json::from_str::<Value>(status).expect("JSON")["running"].clone();
    assert_eq!(
        running(&admins),
        false,
        "the admin's tunneld is not alice's"
    );
    let developers = workstation.plugin_ok(&cluster, PLUGIN, &["status", "-o", "json"]);
    assert_eq!(running(&developers), false, "nor is the developer's");
    let after = ns.api::<Deployment>().get("app").await.expect("app");
    assert_eq!(
        serde_json::to_value(&after.spec).expect("json"),
        serde_json::to_value(&before.spec).expect("json"),
        "restored exactly"
    );
}

/// What the plugin that gave `output` said on stderr, which must be a refusal.
fn refusal(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "refused: {stderr}");
    stderr
}

/// The tunneld `status` describes was started as alice in her groups, and is the only one
/// in the workstation: kept apart from the kubeconfig user's.
fn the_only_tunneld_acts_as_alice(workstation: &Workstation, status: &Value) {
    let pid = status["pid"].as_u64().expect("alice's tunneld runs");
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).expect("tunneld's command");
    let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
    assert!(
        command_line.contains("--as alice --as-group kubedev-developers --as-group team-a"),
        "tunneld acts as alice: {command_line}"
    );
    let sockets: Vec<String> = std::fs::read_dir(workstation.runtime_dir())
        .expect("runtime dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sock"))
        .collect();
    assert!(
        matches!(&sockets[..], [one] if one.starts_with("tunneld-")),
        "one tunneld, alice's own: {sockets:?}"
    );
}
