//! Component tests: tunneld runs as a local process (without the cluster network) and is
//! driven through its control socket as the plugins drive it. Its kubeconfig names either a
//! port on loopback where nothing listens, so every call it makes to the cluster fails at
//! once (the daemon's own promises: status, sessions, holds, exiting by itself, and what it
//! says when the cluster cannot be reached), or a fake API server on loopback (restoring a
//! workload whose plugin died).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use kubedev::control::{AgentOwner, ControlReply, ControlRequest, Held, NetworkStatus, SessionKey};
use kubedev::inject::AGENT_CONTAINER;
use kubedev::mode::Mode;
use kubedev::session::lease::{self, Holder};
use kubedev::session::{self, Plan};
use kubedev::tunneld::{self, HoldNews, TunneldError};
use tests_fake_api::{FakeApi, NAMESPACE};

/// Nothing listens here (the discard port), on this machine only.
const NO_CLUSTER: &str = "https://127.0.0.1:9";
/// A hang, not a slow machine, is what this catches.
const LIVENESS: Duration = Duration::from_secs(30);
/// The sessions' leases: renewed every second.
const LEASE: Duration = Duration::from_secs(3);

struct Tunneld {
    process: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Tunneld {
    /// Starts tunneld, idle-exiting after 1 s, and waits until its socket answers.
    async fn start(name: &str) -> Self {
        Self::start_for(name, NO_CLUSTER).await
    }

    /// Starts tunneld with the API server at `server`.
    async fn start_for(name: &str, server: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tunneld-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // tunneld serves a socket only in a directory of its user's own, closed to others.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .expect("test dir");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for(server)).expect("kubeconfig");
        let socket = dir.join("tunneld.sock");
        let process = tunneld_command(&dir, &socket)
            .spawn()
            .expect("tunneld starts");
        let tunneld = Self {
            process,
            dir,
            socket,
        };
        let deadline = Instant::now() + LIVENESS;
        while tunneld::request(&tunneld.socket, &ControlRequest::Status)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "tunneld never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tunneld
    }

    async fn request(&self, request: &ControlRequest) -> Result<ControlReply, TunneldError> {
        tunneld::request(&self.socket, request).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tunneld.log")).unwrap_or_default()
    }

    /// Waits for tunneld to exit by itself.
    fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tunneld is still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&mut self) -> bool {
        self.process.try_wait().expect("wait").is_none()
    }
}

impl Drop for Tunneld {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tunneld_command(dir: &Path, socket: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunneld"));
    command
        .arg("--socket")
        .arg(socket)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-network", "--idle-exit-secs", "1"])
        .env("KUBEDEV_LOG", "info")
        .stderr(std::fs::File::create(dir.join("tunneld.log")).expect("log file"));
    command
}

fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: test\n  user:\n    token: test\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: shop\n"
    )
}

fn add_session(name: &str) -> ControlRequest {
    add_session_in("shop", name)
}

fn add_session_in(namespace: &str, name: &str) -> ControlRequest {
    ControlRequest::AddSession {
        name: name.into(),
        namespace: namespace.into(),
        agents: "app=web".into(),
        token: "token".into(),
        forwards: Vec::new(),
        proxy: Default::default(),
        to_pod: Vec::new(),
        owner: Some(owner_of("web")),
    }
}

/// The agents of deployment `name`.
fn owner_of(name: &str) -> AgentOwner {
    AgentOwner::Workload {
        workload: name.parse().expect("workload"),
    }
}

fn held(name: &str) -> Held {
    Held {
        name: name.into(),
        owner: "run-1".into(),
        namespace: "shop".into(),
        workload: Some("deployment/web".parse().expect("workload")),
        timeout: Duration::from_secs(5),
        lease: Some(LEASE),
    }
}

#[tokio::test]
async fn status_answers_only_this_user_and_one_tunneld_serves_a_socket() {
    let mut tunneld = Tunneld::start("status").await;
    let Ok(ControlReply::Status(status)) = tunneld.request(&ControlRequest::Status).await else {
        panic!("a status");
    };
    assert_eq!(status.pid, tunneld.process.id());
    assert_eq!(
        status.network,
        NetworkStatus::Off,
        "started with --no-network"
    );
    assert!(status.sessions.is_empty());
    let mode = std::fs::metadata(&tunneld.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only this user may connect");

    let second = tunneld_command(&tunneld.dir, &tunneld.socket)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("second tunneld runs");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another tunneld is already serving"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(tunneld.running(), "the first one is unharmed");

    // A socket in a directory others may write to (they could swap the socket) is refused.
    let open = tunneld.dir.join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let refused = tunneld_command(&tunneld.dir, &open.join("tunneld.sock"))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("tunneld runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("open to other users"), "{stderr}");
    assert!(!open.join("tunneld.sock").exists());
}

#[tokio::test]
async fn sessions_are_added_and_removed_once_and_the_last_one_ends_tunneld() {
    let mut tunneld = Tunneld::start("sessions").await;
    assert_eq!(
        tunneld.request(&add_session("web")).await.expect("added"),
        ControlReply::Done
    );
    let refused = tunneld.request(&add_session("web")).await;
    assert!(
        matches!(&refused, Err(TunneldError::Failed(reason)) if reason.contains("already exists")),
        "{refused:?}"
    );
    let Ok(ControlReply::Status(status)) = tunneld.request(&ControlRequest::Status).await else {
        panic!("a status");
    };
    assert_eq!(status.sessions.len(), 1);
    assert_eq!(status.sessions[0].name, "web");
    assert_eq!(status.sessions[0].namespace, "shop");
    assert!(status.sessions[0].linked_pods.is_empty(), "no cluster here");
    // A namesake in another namespace is another session.
    let elsewhere = add_session_in("stock", "web");
    assert_eq!(
        tunneld.request(&elsewhere).await.expect("added"),
        ControlReply::Done
    );
    let Ok(ControlReply::Status(status)) = tunneld.request(&ControlRequest::Status).await else {
        panic!("a status");
    };
    let kept: Vec<String> = status
        .sessions
        .iter()
        .map(|s| s.key().to_string())
        .collect();
    assert_eq!(kept, ["shop/web", "stock/web"]);
    let remove_elsewhere = ControlRequest::RemoveSession {
        session: SessionKey::new("stock", "web"),
        owner: None,
        by_leave: false,
    };
    assert_eq!(
        tunneld.request(&remove_elsewhere).await.expect("removed"),
        ControlReply::Done
    );

    // A session lasts while tunneld has one: past the idle time, it is still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tunneld.running(), "{}", tunneld.log());
    // A run whose own start failed does not drop the namesake another run added.
    let namesakes = ControlRequest::RemoveSession {
        session: SessionKey::new("shop", "web"),
        owner: Some(owner_of("other")),
        by_leave: false,
    };
    assert_eq!(
        tunneld.request(&namesakes).await.expect("left"),
        ControlReply::Done
    );
    assert!(tunneld.running(), "{}", tunneld.log());
    let remove = ControlRequest::RemoveSession {
        session: SessionKey::new("shop", "web"),
        owner: Some(owner_of("web")),
        by_leave: false,
    };
    assert_eq!(
        tunneld.request(&remove).await.expect("removed"),
        ControlReply::Done
    );
    let again = tunneld.request(&remove).await;
    assert!(
        matches!(&again, Err(TunneldError::Failed(reason)) if reason.contains("no session named")),
        "{again:?}"
    );
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    assert!(tunneld.log().contains("no session left: exiting"));
    assert!(!tunneld.socket.exists(), "the socket goes with it");
}

#[tokio::test]
async fn a_released_hold_ends_quietly_and_keeps_tunneld_up_until_then() {
    let mut tunneld = Tunneld::start("release").await;
    let hold = tunneld::hold(&tunneld.socket, held("web"))
        .await
        .expect("held");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tunneld.running(), "a hold keeps tunneld up");
    hold.release().await.expect("released");
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    assert!(!tunneld.log().contains("is gone"), "{}", tunneld.log());
}

/// A second run may not hold a session this tunneld holds or keeps: its lease, and its
/// end, would otherwise end the first run's session.
#[tokio::test]
async fn a_second_run_cannot_hold_a_session_this_tunneld_holds_or_keeps() {
    let tunneld = Tunneld::start("second-hold").await;
    let hold = tunneld::hold(&tunneld.socket, held("web"))
        .await
        .expect("held");
    let second = Held {
        owner: "run-2".into(),
        ..held("web")
    };
    let refused_while_held = tunneld::hold(&tunneld.socket, second.clone()).await;
    let refused = |answer: &Result<tunneld::Hold, TunneldError>| {
        matches!(answer, Err(TunneldError::Failed(reason))
            if reason.contains("a session named \"web\" already runs in namespace shop"))
    };
    assert!(refused(&refused_while_held), "{refused_while_held:?}");
    assert_eq!(
        tunneld.request(&add_session("web")).await.expect("added"),
        ControlReply::Done
    );
    hold.release()
        .await
        .expect("released: the session lives on, detached");
    let refused_while_kept = tunneld::hold(&tunneld.socket, second).await;
    assert!(refused(&refused_while_kept), "{refused_while_kept:?}");
    let Ok(ControlReply::Status(status)) = tunneld.request(&ControlRequest::Status).await else {
        panic!("a status");
    };
    assert_eq!(
        status.sessions.len(),
        1,
        "the first run's session is untouched"
    );
    // Another namespace's session of that name is another session.
    let elsewhere = Held {
        namespace: "stock".into(),
        ..held("web")
    };
    let other = tunneld::hold(&tunneld.socket, elsewhere)
        .await
        .expect("held");
    other.release().await.expect("released");
}

/// `leave` from another command ends a session a run holds: that run is told, and ends
/// too; a run ending its own session is told nothing.
#[tokio::test]
async fn a_held_session_left_from_another_command_tells_its_run() {
    let tunneld = Tunneld::start("left-elsewhere").await;
    let removal = |by_leave| ControlRequest::RemoveSession {
        session: SessionKey::new("shop", "web"),
        owner: None,
        by_leave,
    };
    // A namesake's `leave` (other agent pods) leaves the held session, and its run, alone.
    let mut hold = tunneld::hold(&tunneld.socket, held("web"))
        .await
        .expect("held");
    let added = tunneld.request(&add_session("web")).await.expect("added");
    assert_eq!(added, ControlReply::Done);
    let namesake = ControlRequest::RemoveSession {
        session: SessionKey::new("shop", "web"),
        owner: Some(owner_of("other")),
        by_leave: true,
    };
    let left = tunneld.request(&namesake).await.expect("left");
    assert_eq!(left, ControlReply::Done);
    let told = tokio::time::timeout(Duration::from_millis(300), hold.news()).await;
    assert!(told.is_err(), "the run was told: {told:?}");
    let removed = tunneld.request(&removal(false)).await.expect("removed");
    assert_eq!(removed, ControlReply::Done);
    hold.release().await.expect("released");
    for (by_leave, told) in [
        (false, None),
        (true, Some("`leave` ended it from another command")),
    ] {
        let mut hold = tunneld::hold(&tunneld.socket, held("web"))
            .await
            .expect("held");
        assert_eq!(
            tunneld.request(&add_session("web")).await.expect("added"),
            ControlReply::Done
        );
        assert_eq!(
            tunneld.request(&removal(by_leave)).await.expect("removed"),
            ControlReply::Done
        );
        match told {
            Some(reason) => {
                let news = tokio::time::timeout(LIVENESS, hold.news()).await;
                assert_eq!(
                    news.expect("told in time"),
                    tunneld::HoldNews::Ended(reason.into())
                );
            }
            None => hold.release().await.expect("its own end: released"),
        }
    }
}

#[tokio::test]
async fn a_dead_plugins_session_is_restored_or_the_user_is_told_how() {
    let mut tunneld = Tunneld::start("dead-plugin").await;
    let hold = tunneld::hold(&tunneld.socket, held("web"))
        .await
        .expect("held");
    // The plugin dies: its end of the connection closes without a release.
    drop(hold);
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    let log = tunneld.log();
    assert!(
        log.contains(
            "the plugin running session web is gone: ending it and restoring deployment/web"
        ),
        "{log}"
    );
    assert!(
        log.contains("could not restore deployment/web")
            && log.contains("the next kubedev command in namespace shop restores it")
            && log.contains("run `leave web`"),
        "with the API server unreachable, after retrying for the lease's lifetime, the log \
         says what happens next: {log}"
    );
}

/// A session of run `run-1` on the fake cluster's `web`, live as a plugin leaves it.
async fn started_session(fake: &FakeApi) -> Held {
    let plan = Plan {
        mode: Mode::Intercept,
        name: "web".into(),
        workload: "deployment/web".parse().expect("workload"),
        container: None,
        agent_image: "kubedev-agent:test".into(),
        ports: vec!["3000".parse().expect("port")],
        service: None,
        address: "127.0.0.1".into(),
        filter: None,
        wiretap: false,
        tls_secret: None,
        timeout: Duration::from_secs(5),
        owner: "run-1".into(),
        agent_resources: kubedev::inject::default_agent_resources(),
        pause_flux: false,
    };
    lease::take_lease(
        &fake.client(),
        NAMESPACE,
        &Holder::here("run-1"),
        "web",
        "deployment/web",
        LEASE,
    )
    .await
    .expect("lease");
    session::start(&fake.client(), NAMESPACE, &plan, |_| {})
        .await
        .expect("session starts");
    held("web")
}

fn renewed_at(fake: &FakeApi) -> serde_json::Value {
    fake.lease("kubedev-run-1").expect("the lease")["spec"]["renewTime"].clone()
}

fn containers(fake: &FakeApi) -> serde_json::Value {
    fake.deployment("web")["spec"]["template"]["spec"]["containers"].clone()
}

// Multi-threaded: the fake API server answers tunneld while the test waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_plugins_workload_is_restored_exactly_by_tunneld() {
    let fake = FakeApi::with_web_app(serde_json::json!(8080));
    let original = fake.deployment("web");
    let original_service = fake.service("web");
    let held = started_session(&fake).await;
    assert_ne!(
        containers(&fake),
        original["spec"]["template"]["spec"]["containers"]
    );
    let server = format!("http://{}", fake.serve().await.expect("fake API server"));
    let mut tunneld = Tunneld::start_for("restores", &server).await;

    drop(tunneld::hold(&tunneld.socket, held).await.expect("held"));
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    let log = tunneld.log();
    assert!(log.contains("deployment/web restored"), "{log}");
    assert!(
        fake.lease("kubedev-run-1").is_none(),
        "the lease ends with it"
    );
    let restored = fake.deployment("web");
    assert_eq!(restored["spec"]["template"], original["spec"]["template"]);
    assert!(
        restored["metadata"]["annotations"]
            .get("kubedev.io/session")
            .is_none()
    );
    assert_eq!(fake.service("web")["spec"], original_service["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_hold_leaves_the_workload_to_its_plugin() {
    let fake = FakeApi::with_web_app(serde_json::json!("http"));
    let held = started_session(&fake).await;
    let server = format!("http://{}", fake.serve().await.expect("fake API server"));
    let mut tunneld = Tunneld::start_for("leaves-alone", &server).await;
    let writes = fake.write_count();

    let hold = tunneld::hold(&tunneld.socket, held).await.expect("held");
    hold.release().await.expect("released");
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    assert_eq!(fake.write_count(), writes, "tunneld changed nothing");
    let containers = containers(&fake);
    let names: Vec<&str> = containers
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["web", AGENT_CONTAINER]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_has_its_lease_renewed_until_it_is_released() {
    let fake = FakeApi::with_web_app(serde_json::json!("http"));
    let held = started_session(&fake).await;
    let server = format!("http://{}", fake.serve().await.expect("fake API server"));
    let mut tunneld = Tunneld::start_for("renews", &server).await;
    let taken = renewed_at(&fake);

    let hold = tunneld::hold(&tunneld.socket, held).await.expect("held");
    // Three lifetimes: it would have run out twice over.
    tokio::time::sleep(LEASE * 3).await;
    let renewed = renewed_at(&fake);
    assert_ne!(renewed, taken, "{}", tunneld.log());
    assert!(tunneld.running());
    hold.release().await.expect("released");
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    assert!(!tunneld.log().contains("WARN"), "{}", tunneld.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reclaimed_by_another_run_is_ended_here_and_its_plugin_told_who() {
    let fake = FakeApi::with_web_app(serde_json::json!("http"));
    let held = started_session(&fake).await;
    let server = format!("http://{}", fake.serve().await.expect("fake API server"));
    let mut tunneld = Tunneld::start_for("lost", &server).await;
    let mut hold = tunneld::hold(&tunneld.socket, held).await.expect("held");
    tunneld
        .request(&add_session("web"))
        .await
        .expect("session added");

    // This machine slept past the lease; bob's run took it over to restore the session.
    let mut lease = fake.lease("kubedev-run-1").expect("the lease");
    lease["spec"]["holderIdentity"] = "run-bob".into();
    lease["metadata"]["annotations"]["kubedev.io/reclaimed-by"] = "bob@desk".into();
    fake.put_lease(lease);
    let news = tokio::time::timeout(LIVENESS, hold.news())
        .await
        .expect("told in time");
    let HoldNews::Ended(reason) = news else {
        panic!("ended: {news:?}");
    };
    assert!(
        reason.contains("bob@desk restored its workload"),
        "{reason}"
    );
    let Ok(ControlReply::Status(status)) = tunneld.request(&ControlRequest::Status).await else {
        panic!("a status");
    };
    assert!(status.sessions.is_empty(), "ended here: {status:?}");
    drop(hold);
    assert!(tunneld.exited(LIVENESS).success(), "{}", tunneld.log());
    assert!(
        !tunneld.log().contains("is gone"),
        "nothing left for tunneld to restore: {}",
        tunneld.log()
    );
}

/// A one-page HTTP server on this machine's loopback, answering `hello` to every request.
fn hello_server() -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = connection.read(&mut request);
            let _ = connection.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    address
}

/// `curl URL` through `proxy`: its exit status and what it printed.
fn curl(proxy: &str, url: &str, more: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "20",
            "--noproxy",
            "",
            "--proxy",
            proxy,
        ])
        .args(more)
        .arg(url)
        .output()
        .expect("curl runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), printed)
}

#[tokio::test]
async fn the_proxy_in_status_takes_only_its_own_credentials() {
    let tunneld = Tunneld::start("proxy").await;
    // A session keeps tunneld up; with no cluster, every destination is this machine's.
    tunneld.request(&add_session("web")).await.expect("added");
    let status = tunneld::status(&tunneld.socket).await.expect("status");
    let proxy = status.proxy.expect("a proxy");
    assert_eq!(proxy.address.ip(), std::net::Ipv4Addr::LOCALHOST);
    let url = format!("http://localhost:{}/", hello_server().port());

    for through in [&proxy.socks_url, &proxy.http_url] {
        assert_eq!(
            curl(through, &url, &[]),
            (true, "hello".into()),
            "{through}"
        );
    }
    let anonymous = format!("http://{}", proxy.address);
    let status_code = ["--output", "/dev/null", "--write-out", "%{http_code}"];
    assert_eq!(curl(&anonymous, &url, &status_code).1, "407");
    let guessed = format!("http://kubedev:guess@{}", proxy.address);
    assert_eq!(curl(&guessed, &url, &status_code).1, "407");
    for refused in [
        format!("socks5h://{}", proxy.address),
        format!("socks5h://kubedev:guess@{}", proxy.address),
    ] {
        assert_eq!(
            curl(&refused, &url, &[]),
            (false, String::new()),
            "{refused}"
        );
    }
}
