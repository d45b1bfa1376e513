//! Sessions as a file (`-f kubedev.yaml`): the file's sessions start together, one after
//! the other, and end together when one session's command exits; `--detach` leaves them
//! live until `leave -f`; a mistake anywhere in the file changes nothing. Each workload is
//! restored exactly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// A namespace with Deployments `echo` and `api` (the echo app, a Service each) and a
/// client pod; their pod templates and Services as stored; a workstation serving HTTP as
/// `laptop` on port 3000.
struct Setup {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    before: [(Value, Value); 2],
}

async fn setup(prefix: &str) -> Setup {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    for name in ["echo", "api"] {
        ns.deploy_echo(name, 1).await.expect("echo app ready");
    }
    ns.start_client("client").await.expect("client pod");
    let before = [
        ns.stored_deployment_and_service("echo").await,
        ns.stored_deployment_and_service("api").await,
    ];
    let workstation = Workstation::create(&cluster);
    Setup {
        cluster,
        ns,
        workstation,
        before,
    }
}

impl Setup {
    /// Writes `text` as `repo/kubedev.yaml` in the workstation's directory.
    fn write_file(&self, text: &str) -> PathBuf {
        let repo = self.workstation.file("repo");
        std::fs::create_dir_all(&repo).expect("repo directory");
        allow_the_developer(&repo);
        let path = repo.join("kubedev.yaml");
        std::fs::write(&path, text).expect("the sessions file");
        path
    }

    async fn assert_restored(&self) {
        let after = [
            self.ns.stored_deployment_and_service("echo").await,
            self.ns.stored_deployment_and_service("api").await,
        ];
        assert_eq!(after, self.before, "both workloads restored exactly");
        self.ns.wait_for_the_echo_app("/after");
    }

    fn sessions_listed(&self) -> Vec<String> {
        let list = ["list", "-o", "name", "-n", &self.ns.name];
        let listed = self.workstation.plugin_ok(&self.cluster, PLUGIN, &list);
        let mut names: Vec<String> = listed.lines().map(str::to_owned).collect();
        names.sort();
        names
    }
}

/// The plugins run as the test developer: it writes the env files beside the file.
fn allow_the_developer(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

fn wait_until(what: &str, plugin: &mut std::process::Child, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 180 s");
        assert!(
            plugin.try_wait().expect("wait").is_none(),
            "the plugin exited before {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test]
async fn a_files_sessions_start_together_and_end_together_when_one_command_exits() {
    let s = setup("file").await;
    let _server = s.workstation.serve_http(3000, "laptop");
    let running = s.workstation.file("repo/running");
    let stop = s.workstation.file("repo/stop");
    // The ingest session's command runs until told to stop, then fails with 3.
    let command = format!(
        "touch {running}; while [ ! -e {stop} ]; do sleep 0.2; done; exit 3",
        running = running.display(),
        stop = stop.display()
    );
    let file = s.write_file(&format!(
        "sessions:\n\
         \x20 - workload: echo\n\
         \x20   ports: ['3000:http']\n\
         \x20 - workload: deploy/api\n\
         \x20   mode: ingest\n\
         \x20   envFile: api.env\n\
         \x20   mount: false\n\
         \x20   command: [sh, -c, {command:?}]\n"
    ));
    let log = s.workstation.file("plugin.log");
    let file_arg = file.display().to_string();
    let args = ["-f", file_arg.as_str(), "-n", s.ns.name.as_str()];
    let mut plugin = s
        .workstation
        .spawn_plugin_logged(&s.cluster, PLUGIN, &args, &log);

    wait_until("the intercept is live", &mut plugin, || {
        (s.ns.http_get("client", "echo:8080", "/file"))
            .unwrap_or_default()
            .starts_with("local laptop")
    });
    wait_until("the ingest's command runs", &mut plugin, || {
        running.exists()
    });
    let env = std::fs::read_to_string(s.workstation.file("repo/api.env")).expect("api.env");
    assert!(
        env.contains("API_SERVICE_PORT_HTTP=8080"),
        "the api container's env: {env}"
    );
    let default_name = |workload| kubedev::session::naming::default_name(workload);
    assert_eq!(
        s.sessions_listed(),
        [default_name("api"), default_name("echo")]
    );

    std::fs::write(&stop, "").expect("stop the command");
    let status = plugin.wait().expect("the plugin exits");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(3), "the command's status: {said}");
    s.assert_restored().await;
    assert!(s.sessions_listed().is_empty(), "{said}");
}

#[tokio::test]
async fn leaving_one_of_a_files_sessions_from_another_command_ends_them_all() {
    let s = setup("file-leave").await;
    let _server = s.workstation.serve_http(3000, "laptop");
    let file = s.write_file(
        "sessions:\n\
         \x20 - workload: echo\n\
         \x20   ports: ['3000:http']\n\
         \x20 - workload: api\n\
         \x20   mode: ingest\n\
         \x20   mount: false\n",
    );
    let log = s.workstation.file("plugin.log");
    let file = file.display().to_string();
    let args = ["-f", file.as_str(), "-n", s.ns.name.as_str()];
    let mut plugin = s
        .workstation
        .spawn_plugin_logged(&s.cluster, PLUGIN, &args, &log);
    wait_until("both sessions are live", &mut plugin, || {
        std::fs::read_to_string(&log).is_ok_and(|said| said.contains("sessions are live"))
    });

    let echo = kubedev::session::naming::default_name("echo");
    let leave = ["leave", echo.as_str(), "-n", s.ns.name.as_str()];
    s.workstation.plugin_ok(&s.cluster, PLUGIN, &leave);
    let status = plugin.wait().expect("the plugin exits");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("`leave` ended it from another command"),
        "{said}"
    );
    s.assert_restored().await;
    assert!(s.sessions_listed().is_empty(), "{said}");
}

#[tokio::test]
async fn detached_sessions_of_a_file_end_with_leave_f() {
    let s = setup("file-detach").await;
    let _server = s.workstation.serve_http(3000, "laptop");
    let file = s.write_file(
        "sessions:\n\
         \x20 - workload: echo\n\
         \x20   name: echo-file\n\
         \x20   ports: ['3000:http']\n\
         \x20 - workload: api\n\
         \x20   mode: replace-container\n\
         \x20   name: api-file\n\
         \x20   ports: ['3000:http']\n",
    );
    let file = file.display().to_string();
    let namespace = ["-n", s.ns.name.as_str()];
    let start = [&["-f", file.as_str(), "--detach"], &namespace[..]].concat();
    s.workstation.plugin_ok(&s.cluster, PLUGIN, &start);
    for service in ["echo:8080", "api:8080"] {
        let answer = s.ns.http_get("client", service, "/detached").expect("GET");
        assert!(answer.starts_with("local laptop"), "{service}: {answer}");
    }
    assert_eq!(s.sessions_listed(), ["api-file", "echo-file"]);
    // The same file again is refused, and ends nothing of the first run's.
    let again = s.workstation.plugin(&s.cluster, PLUGIN, &start);
    assert!(!again.status.success(), "the sessions are there already");
    for service in ["echo:8080", "api:8080"] {
        let answer = s.ns.http_get("client", service, "/still").expect("GET");
        assert!(answer.starts_with("local laptop"), "{service}: {answer}");
    }
    assert_eq!(s.sessions_listed(), ["api-file", "echo-file"]);

    let leave = [&["leave", "-f", file.as_str()], &namespace[..]].concat();
    s.workstation.plugin_ok(&s.cluster, PLUGIN, &leave);
    s.assert_restored().await;
    assert!(s.sessions_listed().is_empty());
    // Once they are gone, leave -f has nothing left to end, and says so.
    let left = s.workstation.plugin(&s.cluster, PLUGIN, &leave);
    let stderr = String::from_utf8_lossy(&left.stderr);
    assert!(!left.status.success(), "{stderr}");
    assert!(
        stderr.contains("session echo-file: not running"),
        "{stderr}"
    );
    assert!(stderr.contains("none of the sessions of"), "{stderr}");
}

#[tokio::test]
async fn a_mistake_in_the_file_changes_nothing() {
    let s = setup("file-bad").await;
    let file = s.write_file(
        "sessions:\n\
         \x20 - workload: echo\n\
         \x20   ports: [3000]\n\
         \x20 - workload: api\n\
         \x20   mode: ingest\n\
         \x20   httpPathPrefix: /api\n",
    );
    let file = file.display().to_string();
    let refused = s.workstation.plugin(
        &s.cluster,
        PLUGIN,
        &["-f", file.as_str(), "-n", s.ns.name.as_str()],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("session 2 (api): httpPathPrefix is for intercept sessions only"),
        "{stderr}"
    );
    s.assert_restored().await;

    let both = s.workstation.plugin(
        &s.cluster,
        PLUGIN,
        &[
            "-f",
            file.as_str(),
            "--port",
            "3000",
            "-n",
            s.ns.name.as_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(
        stderr.contains("--port goes in the sessions file"),
        "{stderr}"
    );
}
