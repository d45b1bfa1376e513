//! The release as a user meets it: `make dist`'s archives installed with
//! `kubectl krew install --manifest --archive`, each plugin reached through kubectl's own
//! plugin dispatch, and an intercept through the krew-installed plugin, whose tunneld is
//! the one krew put beside it and whose agent image the nodes pull from the registry.

use tests_e2e::krew::{KrewRoot, PLUGINS, release_of};
use tests_e2e::workstation::Workstation;
use tests_e2e::{AGENT_IMAGE, TestCluster, TestNamespace};

fn succeeded(what: &str, output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn krew_installs_the_release_and_its_intercept_works() {
    let cluster = TestCluster::get();
    let krew = KrewRoot::create(&cluster);
    install_and_list(&krew);

    // A real intercept through the installed plugin, from a workstation, as a user runs it.
    let ns = TestNamespace::create(&cluster, "krew").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.echo_template(false).await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_http(3000, "laptop");
    let kubectl = |args: &[&str]| {
        let mut command = workstation.as_user(&cluster, &krew.kubectl_path(), args);
        command.envs(krew.env());
        command.output().expect("kubectl runs in the workstation")
    };
    succeeded(
        "kubectl intercept config set-agent-image",
        &kubectl(&["intercept", "config", "set-agent-image", AGENT_IMAGE]),
    );
    succeeded(
        "kubectl intercept --detach",
        &kubectl(&[
            "intercept",
            "-n",
            &ns.name,
            "echo",
            "--port",
            "3000:http",
            "--detach",
        ]),
    );
    let answer = ns
        .http_get("client", "echo:8080", "/through-krew")
        .expect("GET from the client pod");
    assert!(
        answer.contains("local laptop") && answer.contains("GET /through-krew"),
        "the workstation answered: {answer}"
    );
    completes_through_kubectl(&cluster, &krew, &ns);

    // The tunneld that carries it is the one krew installed beside the plugin.
    let status = succeeded(
        "kubectl intercept status",
        &kubectl(&["intercept", "status", "-o", "json"]),
    );
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let pid = status["pid"].as_u64().expect("tunneld's pid");
    let tunneld = std::fs::read_link(format!("/proc/{pid}/exe")).expect("tunneld's binary");
    let store = krew.root().join("store/intercept");
    assert!(
        tunneld.starts_with(&store) && tunneld.file_name() == Some("tunneld".as_ref()),
        "tunneld runs from {}, not from krew's {}",
        tunneld.display(),
        store.display()
    );

    version_names_the_running_tunneld(&kubectl, &tunneld);

    succeeded(
        "kubectl intercept leave",
        &kubectl(&["intercept", "leave", "-n", &ns.name, "echo"]),
    );
    assert_eq!(
        ns.echo_template(false).await,
        before,
        "the workload is exactly as before"
    );

    the_next_session_runs_the_pinned_image(&kubectl, &ns, &before).await;
}

/// `version` names the tunneld that runs, of the plugin's version, and the context's image.
fn version_names_the_running_tunneld(
    kubectl: &dyn Fn(&[&str]) -> std::process::Output,
    tunneld: &std::path::Path,
) {
    let versions = succeeded(
        "kubectl intercept version",
        &kubectl(&["intercept", "version", "-o", "json"]),
    );
    let versions: serde_json::Value = serde_json::from_str(&versions).expect("version JSON");
    assert_eq!(versions["plugin"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions["tunneld"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        versions["tunneld"]["path"]
            .as_str()
            .map(std::path::Path::new),
        Some(tunneld)
    );
    assert_eq!(versions["agentImage"], AGENT_IMAGE);
}

/// The tag the first session ran was pinned to its digest: the next session runs that very
/// image, whatever the tag points at by then.
async fn the_next_session_runs_the_pinned_image(
    kubectl: &dyn Fn(&[&str]) -> std::process::Output,
    ns: &TestNamespace,
    before: &serde_json::Value,
) {
    let view = succeeded(
        "kubectl intercept config view",
        &kubectl(&["intercept", "config", "view"]),
    );
    assert!(
        view.contains("pinnedImages") && view.contains("@sha256:"),
        "{view}"
    );
    let intercept = [
        "intercept",
        "-n",
        &ns.name,
        "echo",
        "--port",
        "3000:http",
        "--detach",
    ];
    succeeded("kubectl intercept again", &kubectl(&intercept));
    let template = ns.echo_template(false).await.to_string();
    assert!(template.contains("kubedev-agent@sha256:"), "{template}");
    succeeded(
        "kubectl intercept leave",
        &kubectl(&["intercept", "leave", "-n", &ns.name, "echo"]),
    );
    assert_eq!(&ns.echo_template(false).await, before);
}

/// Installs the three plugins from the release; kubectl then sees exactly them and krew,
/// with nothing to warn about, and each one's help through kubectl's plugin dispatch.
fn install_and_list(krew: &KrewRoot) {
    for plugin in PLUGINS {
        let (archive, manifest) = release_of(plugin);
        let install = krew
            .kubectl(&["krew", "install"])
            .arg(format!("--manifest={}", manifest.display()))
            .arg(format!("--archive={}", archive.display()))
            .output()
            .expect("kubectl krew install runs");
        succeeded(&format!("kubectl krew install {plugin}"), &install);
    }
    let list = krew
        .kubectl(&["plugin", "list", "--name-only"])
        .output()
        .expect("kubectl plugin list runs");
    let listed = succeeded("kubectl plugin list", &list);
    let mut names: Vec<&str> = listed
        .lines()
        .filter(|line| line.starts_with("kubectl-"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "kubectl-ingest",
            "kubectl-intercept",
            "kubectl-krew",
            "kubectl-replace_container"
        ]
    );
    let warnings = String::from_utf8_lossy(&list.stderr);
    assert!(warnings.trim().is_empty(), "plugin list warned: {warnings}");
    for plugin in PLUGINS {
        let help = krew
            .kubectl(&[plugin, "--help"])
            .output()
            .expect("kubectl PLUGIN --help runs");
        let help = succeeded(&format!("kubectl {plugin} --help"), &help);
        assert!(
            help.contains(&format!("Usage: kubectl {plugin}")) && help.contains("Examples:"),
            "kubectl {plugin} --help: {help}"
        );
    }
}

/// Completion through kubectl, once the archive's completer is on PATH as the caveats say.
fn completes_through_kubectl(cluster: &TestCluster, krew: &KrewRoot, ns: &TestNamespace) {
    // As the README has it: krew's own link under the completer's name, no version in it.
    std::os::unix::fs::symlink(
        "kubectl-intercept",
        krew.root().join("bin/kubectl_complete-intercept"),
    )
    .expect("the completer on PATH");
    let complete = |words: &[&str]| -> Vec<String> {
        let output = krew
            .kubectl(&["__complete", "intercept", "-n", &ns.name])
            .args(words)
            .env("KUBECONFIG", &cluster.dev_kubeconfig)
            .output()
            .expect("kubectl __complete runs");
        succeeded("kubectl __complete intercept", &output)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let session = kubedev::session::naming::default_name("echo");
    for (words, wanted) in [
        (&[""][..], "deployment/"),
        (&[""], "echo"),
        (&["deploy/"], "deploy/echo"),
        (&["echo", "-c", ""], "echo"),
        (&["echo", "--port", "3000:"], "3000:http"),
        (&["leave", ""], session.as_str()),
        (&["--cont"], "--container"),
    ] {
        let offered = complete(words);
        assert!(
            offered.iter().any(|line| line == wanted),
            "kubectl intercept {words:?}<TAB> offered {offered:?}, not {wanted}"
        );
    }
}
