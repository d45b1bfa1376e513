//! Another user of the workstation against a developer's kubedev: what they could plant
//! where the plugins and tunneld keep their files (the runtime directory, a mount point,
//! tunneld's socket), a process of theirs standing in for tunneld, a workload whose
//! environment tries to choose what runs on the workstation, and sudo. Each is refused with
//! an error that says what to do; nothing is written outside what the developer owns, and
//! no token or environment goes to the wrong process.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kubedev::control::{ControlReply, ControlRequest, SessionKey};
use kubedev_protocol::codec::{read_message, write_message};
use serde_json::json;
use tests_e2e::developer::Developer;
use tests_e2e::workstation::{ORIGINAL_RESOLV_CONF, Workstation};
use tests_e2e::{ECHO_IMAGE, TestCluster, TestNamespace};

/// Asserts that `output` is a failure whose stderr says each of `said`; returns stderr.
fn refused(output: &Output, said: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "not refused:\n{stderr}");
    for words in said {
        assert!(stderr.contains(words), "no {words:?} in:\n{stderr}");
    }
    stderr
}

/// Runs `script` with sh as `user` inside `workstation`, failing the test if it fails.
fn as_user(user: &Developer, workstation: &Workstation, script: &str) {
    let output = user
        .command(workstation, "sh", &["-c", script])
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Removes what the attacker planted at `path` (as root, as an administrator would).
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).expect("remove"),
        Ok(_) => std::fs::remove_file(path).expect("remove"),
        Err(_) => {}
    }
}

/// What one victim's attempts share: who, where, and the command's trace.
struct Victim<'a> {
    developer: &'a Developer,
    workstation: &'a Workstation,
    namespace: &'a str,
    /// Made by `-- CMD` only if it ran.
    marker: PathBuf,
}

impl Victim<'_> {
    /// `kubectl ingest web` with `extra` flags, whose command leaves the marker.
    fn ingest(&self, extra: &[&str]) -> Output {
        let marker = self.marker.display().to_string();
        let mut args = vec!["ingest", "web", "-n", self.namespace];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "touch", &marker]);
        self.developer.kubectl(self.workstation, &args)
    }

    fn command_ran(&self) -> bool {
        self.marker.exists()
    }
}

#[tokio::test]
async fn another_user_can_neither_plant_kubedevs_files_nor_stand_in_for_its_tunneld() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "local-security").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let before = ns.stored_deployment_and_service("web").await;
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let attacker = Developer::create(&cluster);
    let victim = Victim {
        developer: &developer,
        workstation: &workstation,
        namespace: &ns.name,
        marker: developer.home.join("command-ran"),
    };

    planted_runtime_dirs_and_mount_points_are_refused(&victim, &attacker);
    sudo_is_refused_before_anything_is_made(&victim, &cluster);
    assert_eq!(ns.stored_deployment_and_service("web").await, before);

    // The developer's own session: everything it made is theirs, the directory private.
    let output = victim.ingest(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(victim.command_ran());
    std::fs::remove_file(&victim.marker).expect("marker");
    let runtime = developer.runtime_dir();
    let mode = std::fs::metadata(&runtime)
        .expect("runtime dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(developer.files_not_own(), Vec::<PathBuf>::new());

    let socket = tunneld_socket(&runtime);
    tunneld_serves_no_other_user(&socket).await;
    stop_tunneld(&victim, &socket);
    roots_leftovers_are_named_not_used(&victim, &socket);
    a_stand_in_for_tunneld_is_sent_nothing(&victim, &attacker, &socket);
    assert_eq!(ns.stored_deployment_and_service("web").await, before);
}

fn planted_runtime_dirs_and_mount_points_are_refused(victim: &Victim<'_>, attacker: &Developer) {
    let runtime = victim.developer.runtime_dir();
    let runtime_text = runtime.display().to_string();
    let attacker_uid = format!("belongs to uid {}", attacker.uid);
    let plants = [
        (
            format!("mkdir -m 777 {runtime_text}"),
            attacker_uid.as_str(),
        ),
        (
            format!("mkdir -p ~/bait && chmod 700 ~/bait && ln -s ~/bait {runtime_text}"),
            "is a symbolic link",
        ),
    ];
    for (plant, why) in plants {
        as_user(attacker, victim.workstation, &plant);
        refused(
            &victim.ingest(&[]),
            &[&runtime_text, why, "remove it", "KUBEDEV_RUNTIME_DIR"],
        );
        assert!(!victim.command_ran());
        clear(&runtime);
    }

    let mount = std::env::temp_dir().join(format!("kd-mount-{}", attacker.uid));
    let mount_text = mount.display().to_string();
    as_user(
        attacker,
        victim.workstation,
        &format!("mkdir -m 777 {mount_text}"),
    );
    refused(
        &victim.ingest(&["--mount", &mount_text]),
        &[&mount_text, &attacker_uid, "choose a directory of your own"],
    );
    assert!(!victim.command_ran());
    clear(&mount);
}

/// A plugin run as root through sudo stops before it makes anything, here or in the
/// invoking developer's places.
fn sudo_is_refused_before_anything_is_made(victim: &Victim<'_>, cluster: &TestCluster) {
    let developer = victim.developer;
    let root_runtime = Path::new("/run/kubedev");
    let root_runtime_there = root_runtime.exists();
    let mut sudo = victim.workstation.long_lived();
    sudo.arg(developer.home.join(".krew/bin/kubectl-ingest"))
        .args(["web", "-n", victim.namespace, "--", "touch"])
        .arg(&victim.marker)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", &developer.home)
        .env("SUDO_UID", developer.uid.to_string())
        .env("SUDO_USER", &developer.name)
        .env("XDG_RUNTIME_DIR", developer.home.join("xdg"))
        .env("KUBECONFIG", &cluster.dev_kubeconfig);
    let output = sudo.output().expect("the plugin runs");
    refused(
        &output,
        &[
            "without sudo",
            "namespace of its own",
            "KUBEDEV_ALLOW_ROOT=1",
        ],
    );
    assert!(!victim.command_ran());
    assert_eq!(root_runtime.exists(), root_runtime_there);
    assert!(!developer.runtime_dir().exists());
    assert_eq!(developer.files_not_own(), Vec::<PathBuf>::new());
}

/// The socket of the one tunneld in `runtime`.
fn tunneld_socket(runtime: &Path) -> PathBuf {
    std::fs::read_dir(runtime)
        .expect("runtime dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .expect("a tunneld socket")
}

/// root, who can reach any socket, gets no answer from the developer's tunneld, which logs
/// who it refused.
async fn tunneld_serves_no_other_user(socket: &Path) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("root reaches the socket");
    let asked = ControlRequest::Environment {
        session: SessionKey::new("default", "web"),
    };
    let _ = write_message(&mut stream, &asked).await;
    let answer: Result<ControlReply, _> = read_message(&mut stream).await;
    assert!(answer.is_err(), "{answer:?}");
    let log = std::fs::read_to_string(socket.with_extension("log")).expect("tunneld's log");
    assert!(
        log.contains("refused a control connection from uid 0"),
        "{log}"
    );
    assert!(log.contains("---- tunneld"), "each start is marked:\n{log}");
}

/// Stops the developer's tunneld, which takes its socket with it.
fn stop_tunneld(victim: &Victim<'_>, socket: &Path) {
    let status = victim
        .developer
        .kubectl_ok(victim.workstation, &["ingest", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let pid = status["pid"].as_i64().expect("a running tunneld");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal tunneld");
    wait_until("tunneld removes its socket", || !socket.exists());
}

/// A log and a socket root left in the developer's directory (an earlier run with sudo)
/// are refused, saying whose they are and what to do, not written to or connected to.
fn roots_leftovers_are_named_not_used(victim: &Victim<'_>, socket: &Path) {
    let log = socket.with_extension("log");
    clear(&log);
    std::fs::write(&log, "root's\n").expect("root's log");
    refused(
        &victim.ingest(&[]),
        &["tunneld's log", "belongs to uid 0", "sudo", "remove it"],
    );
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "root's\n");
    clear(&log);

    let roots = std::os::unix::net::UnixListener::bind(socket).expect("root's socket");
    refused(
        &victim.ingest(&[]),
        &[
            "belongs to uid 0 (started with sudo?)",
            "remove it or stop that tunneld",
        ],
    );
    assert!(!victim.command_ran());
    drop(roots);
    clear(socket);
}

/// The attacker's process listens where the developer's tunneld did, recording whatever it
/// is sent: as another user's socket, then as the developer's own file with the attacker's
/// process behind it, it is refused before a byte (the session's token) is sent.
fn a_stand_in_for_tunneld_is_sent_nothing(
    victim: &Victim<'_>,
    attacker: &Developer,
    socket: &Path,
) {
    let runtime = socket.parent().expect("runtime dir");
    let received = attacker.home.join("received");
    // Only an administrator could open the developer's directory to others: as if it were.
    std::fs::set_permissions(runtime, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let listen = format!("UNIX-LISTEN:{},fork", socket.display());
    let record = format!("OPEN:{},creat,append", received.display());
    let mut stand_in = attacker
        .command(victim.workstation, "socat", &["-u", &listen, &record])
        .spawn()
        .expect("socat runs");
    wait_until("the stand-in listens", || socket.exists());
    std::fs::set_permissions(runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    let socket_text = socket.display().to_string();
    let attacker_uid = format!("uid {}", attacker.uid);
    refused(
        &victim.ingest(&[]),
        &[
            &socket_text,
            &format!("belongs to {attacker_uid}"),
            "remove it or stop that tunneld",
        ],
    );
    std::os::unix::fs::chown(
        socket,
        Some(victim.developer.uid),
        Some(victim.developer.gid),
    )
    .expect("chown");
    refused(
        &victim.ingest(&[]),
        &[
            "is not your tunneld",
            &attacker_uid,
            "pid ",
            "nothing was sent to it",
        ],
    );
    assert!(!victim.command_ran());
    let got = std::fs::read(&received).unwrap_or_default();
    assert!(got.is_empty(), "the stand-in was sent {got:?}");
    let _ = stand_in.kill();
    let _ = stand_in.wait();
    clear(socket);
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Deployment `name` of the echo server whose container has `env`.
async fn deploy_with_env(ns: &TestNamespace, name: &str, env: serde_json::Value) {
    let labels = json!({"app": name});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": ECHO_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["--http", "8080"],
                        "env": env
                    }]
                }
            }
        }
    }))
    .expect("deployment");
    ns.api::<Deployment>()
        .create(&Default::default(), &deployment)
        .await
        .expect("create the deployment");
}

#[tokio::test]
async fn the_workloads_environment_cannot_choose_what_runs_on_the_workstation() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "hostile-env").await;
    let hostile = json!([
        {"name": "GREETING", "value": "hello"},
        {"name": "LD_PRELOAD", "value": "/nonexistent/evil.so"},
        {"name": "PATH", "value": "/evil/bin:/usr/bin:/bin"},
        {"name": "HOME", "value": "/evil"},
        {"name": "BASH_ENV", "value": "/evil/env.sh"}
    ]);
    deploy_with_env(&ns, "hostile", hostile).await;
    let function = json!([{"name": "BASH_FUNC_greet%%", "value": "() { touch /tmp/pwned; }"}]);
    deploy_with_env(&ns, "badname", function).await;
    for name in ["hostile", "badname"] {
        ns.wait_deployment_ready(name).await.expect("ready");
    }
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let env_file = developer.home.join("hostile.env");
    let env_file_text = env_file.display().to_string();

    let shown = "printf '%s|%s|%s|%s|%s' \"$GREETING\" \"$HOME\" \"$PATH\" \
                 \"${LD_PRELOAD-none}\" \"${BASH_ENV-none}\"";
    let output = developer.kubectl(
        &workstation,
        &[
            "ingest",
            "hostile",
            "-n",
            &ns.name,
            "--env-file",
            &env_file_text,
            "--env-syntax",
            "sh",
            "--",
            "sh",
            "-c",
            shown,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let home = developer.home.display().to_string();
    assert!(
        stdout.starts_with(&format!("hello|{home}|{home}/.krew/bin:")),
        "{stdout}"
    );
    assert!(stdout.ends_with("|none|none"), "{stdout}");
    assert!(
        stderr.contains("keeps this machine's BASH_ENV, HOME, LD_PRELOAD, PATH"),
        "{stderr}"
    );
    let written = std::fs::read_to_string(&env_file).expect("the env file");
    assert!(
        written.contains("LD_PRELOAD='/nonexistent/evil.so'"),
        "{written}"
    );
    assert!(written.contains("HOME='/evil'"), "{written}");

    a_name_bash_would_import_as_a_function_is_refused(&ns, &workstation, &developer).await;
    assert_eq!(developer.files_not_own(), Vec::<PathBuf>::new());
}

/// The workload `badname` has a variable bash would import as a function: its `-- CMD` is
/// refused before it runs, and the session ends with the workload restored.
async fn a_name_bash_would_import_as_a_function_is_refused(
    ns: &TestNamespace,
    workstation: &Workstation,
    developer: &Developer,
) {
    let template = |deployment: Deployment| {
        serde_json::to_value(deployment.spec.map(|spec| spec.template)).expect("json")
    };
    let before = template(ns.api::<Deployment>().get("badname").await.expect("get"));
    let marker = developer.home.join("greeted");
    let greet = format!("greet; touch {}", marker.display());
    let output = developer.kubectl(
        workstation,
        &[
            "ingest", "badname", "-n", &ns.name, "--", "bash", "-c", &greet,
        ],
    );
    refused(
        &output,
        &["\"BASH_FUNC_greet%%\"", "rename them in the workload"],
    );
    assert!(!marker.exists() && !Path::new("/tmp/pwned").exists());
    let after = template(ns.api::<Deployment>().get("badname").await.expect("get"));
    assert_eq!(
        after, before,
        "the session was ended and the workload restored"
    );
}

#[tokio::test]
async fn connect_without_root_says_what_it_lacks_and_leaves_no_pod() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "connect-user").await;
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let connect_pods = || {
        ns.kubectl_ok(&["get", "pods", "-l", "kubedev.io/connect", "-o", "name"])
            .expect("pods")
    };

    let output = developer.kubectl(
        &workstation,
        &["intercept", "connect", "-n", &ns.name, "--", "true"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("network is here"), "{stderr}");
    assert!(
        stderr.contains("not available to this whole machine without root"),
        "{stderr}"
    );
    assert!(stderr.contains("without the cluster's network"), "{stderr}");
    wait_until("the connect pod is deleted", || {
        connect_pods().trim().is_empty()
    });

    // Ended with Ctrl-C once connected.
    let log = developer.home.join("connect.log");
    let mut connected = developer
        .command(
            &workstation,
            "kubectl",
            &["intercept", "connect", "-n", &ns.name],
        )
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("connect runs");
    wait_until("connect is connected", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("connected to pod"))
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(connected.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("Ctrl-C");
    let status = connected.wait().expect("connect exits");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "{said}");
    wait_until("the connect pod is deleted", || {
        connect_pods().trim().is_empty()
    });
    std::fs::remove_file(&log).expect("log");
    assert_eq!(developer.files_not_own(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_root_tunneld_never_writes_back_a_resolver_file_it_did_not_save() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "planted-state").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let workstation = Workstation::create(&cluster);
    let developer = kubedev::cluster::ClusterArgs {
        kubeconfig: Some(cluster.dev_kubeconfig.clone()),
        ..Default::default()
    }
    .connect()
    .await
    .expect("the developer's kubeconfig");
    let socket = kubedev::tunneld::socket_in(workstation.runtime_dir(), &developer);
    let state = socket.with_extension("state");
    kubedev::private_files::private_dir(&state).expect("tunneld's state dir");
    // Saved by someone else (nobody), as if tunneld had crashed with it there.
    let planted = state.join("resolv.conf.original");
    std::fs::write(&planted, "nameserver 203.0.113.66\n").expect("plant");
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).expect("chown");

    let output = workstation.plugin(
        &cluster,
        "kubectl-ingest",
        &["web", "-n", &ns.name, "--", "cat", "/etc/resolv.conf"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("resolv.conf.original"), "{stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("203.0.113.66"));
    assert_eq!(workstation.resolv_conf(), ORIGINAL_RESOLV_CONF);
    assert_eq!(
        std::fs::read_to_string(&planted).expect("still there"),
        "nameserver 203.0.113.66\n"
    );
}
