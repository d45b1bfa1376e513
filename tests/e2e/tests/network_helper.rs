//! The network helper: started once as root for a developer, it brings the cluster's
//! network to the whole machine for their sessions, while the plugins and tunneld run as
//! the developer. Every process on the machine reaches services by name; the routes and the
//! resolver are the machine's own again once the session is over; users it does not serve
//! get nothing from it, and a developer's tunneld never takes a socket that is not root's
//! for it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::developer::Developer;
use tests_e2e::network_helper::NetworkHelper;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// The user a process runs as.
fn uid_of_process(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        .expect("a uid")
}

/// Waits until the developer's `status` says `text`.
fn wait_for_status(status: impl Fn() -> String, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let said = status();
        if said.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "no {text:?} in:\n{said}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `url` answers a program of the workstation.
fn reaches(workstation: &Workstation, url: &str) {
    let answer = workstation.run_ok(&["curl", "-sS", "--max-time", "30", url]);
    assert!(answer.contains(": GET /whole-machine"), "{answer}");
}

#[tokio::test]
async fn a_developer_gets_the_cluster_on_the_whole_machine_through_the_helper() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "helper").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let workstation = Workstation::create(&cluster);
    let before = workstation.network_seen_by_all();
    let developer = Developer::create(&cluster);
    let mut helper = NetworkHelper::start(&workstation, &[&developer.name]);
    helper.stop();
    let developer = developer.with_env("KUBEDEV_NETWORK_HELPER", helper.socket_path());
    let plugin = |args: &[&str]| {
        let mut all = vec!["intercept", "-n", ns.name.as_str()];
        all.extend_from_slice(args);
        developer.kubectl_ok(&workstation, &all)
    };
    let status = || plugin(&["status"]);
    let made_by_helper = format!("made by the network helper at {}", helper.socket_path());
    let web = format!("http://web.{}:8080/whole-machine", ns.name);
    let reaches_web = || reaches(&workstation, &web);

    // The session comes first, while the helper is down; what to run is said.
    plugin(&["connect", "--detach"]);
    let start = format!("tunneld network-helper --user {}`", developer.name);
    assert!(status().contains(&start), "{}", status());
    helper.start_again();
    wait_for_status(status, &made_by_helper);
    // Any process on the machine, outside any session: root's, and the developer's shell.
    reaches_web();
    let output = developer
        .command(&workstation, "curl", &["-sS", "--max-time", "30", &web])
        .output()
        .expect("curl runs");
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.contains(": GET /whole-machine"), "{answer}");
    let json: Value = serde_json::from_str(&plugin(&["status", "-o", "json"])).expect("json");
    let tunneld = json["pid"].as_u64().expect("tunneld's pid");
    assert_eq!(
        uid_of_process(tunneld),
        developer.uid,
        "tunneld runs as the developer"
    );
    let (routes, resolv_conf) = workstation.network_seen_by_all();
    assert!(routes.contains("dev kubedev-tun"), "{routes}");
    // The helper's devices take no IPv6 (their user could write any source), and say so.
    assert!(!routes.contains("fd4b:6b64:96::/112"), "{routes}");
    assert!(status().contains("routes IPv4 only"), "{}", status());
    assert!(
        resolv_conf.contains("nameserver 198.18.0.53"),
        "{resolv_conf}"
    );

    // The helper stops: everything is undone, and status says so; started again, the
    // network comes back to the same session.
    assert!(helper.stop().success(), "{}", helper.log());
    assert_eq!(workstation.network_seen_by_all(), before);
    wait_for_status(status, "the network helper at");
    assert!(status().contains("stopped"), "{}", status());
    helper.start_again();
    wait_for_status(status, &made_by_helper);
    reaches_web();

    plugin(&["leave", "connect"]);
    // tunneld exits once idle; its connection closing has the helper undo everything.
    helper.wait_for_log(
        "closed; its routes and resolver are undone",
        Duration::from_secs(120),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while workstation.network_seen_by_all() != before {
        assert!(
            Instant::now() < deadline,
            "the workstation changed:\n{}",
            helper.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(helper.stop().success(), "{}", helper.log());
    assert!(!helper.socket.exists(), "the helper removes its socket");
    assert_eq!(developer.files_not_own(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn where_systemd_resolved_runs_the_helper_has_it_send_only_cluster_names() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "helper-resolved").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let mut workstation = Workstation::create(&cluster);
    workstation.start_systemd_resolved(&cluster);
    let before = workstation.network_seen_by_all();
    let developer = Developer::create(&cluster);
    let helper = NetworkHelper::start(&workstation, &[&developer.name]);
    let developer = developer.with_env("KUBEDEV_NETWORK_HELPER", helper.socket_path());
    let plugin = |args: &[&str]| {
        let mut all = vec!["intercept", "-n", ns.name.as_str()];
        all.extend_from_slice(args);
        developer.kubectl_ok(&workstation, &all)
    };

    plugin(&["connect", "--detach"]);
    let status = plugin(&["status"]);
    assert!(status.contains("made by the network helper"), "{status}");
    assert!(
        status.contains("through systemd-resolved, link kubedev-tun"),
        "{status}"
    );
    // resolv.conf follows resolved's stub file, as its usual symlink does; the machine's
    // resolver file itself the helper left alone.
    assert_eq!(workstation.network_seen_by_all().1, before.1);
    workstation.follow_resolved_stub_file();
    // Through resolved's stub, as every program on the machine resolves: a short name
    // (resolved searches only for those) and a full one.
    let full = format!("http://web.{}.svc.cluster.local:8080/full", ns.name);
    for url in ["http://web:8080/full", full.as_str()] {
        let answer = workstation.run_ok(&["curl", "-sS", "--max-time", "30", url]);
        assert!(answer.contains(": GET /full"), "{url}: {answer}");
    }
    let links = workstation.resolvectl(&["status"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("198.18.0.53"), "{links}");

    plugin(&["leave", "connect"]);
    helper.wait_for_log(
        "closed; its routes and resolver are undone",
        Duration::from_secs(120),
    );
    let links = workstation.resolvectl(&["status"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("kubedev-tun"), "{links}");
    assert!(!links.contains("198.18.0.53"), "{links}");
    assert_eq!(workstation.network_seen_by_all().0, before.0, "routes");
}

#[tokio::test]
async fn the_helper_serves_only_its_users_and_tunneld_trusts_only_roots_socket() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "helper-refuses").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let other = Developer::create(&cluster);
    let helper = NetworkHelper::start(&workstation, &[&developer.name]);
    let before = workstation.network_seen_by_all();
    let session = ["ingest", "web", "-n", ns.name.as_str(), "--", "id", "-u"];

    // A user it does not serve: the session works, without the machine's network.
    let stranger = other.with_env("KUBEDEV_NETWORK_HELPER", helper.socket_path());
    let output = stranger.kubectl(&workstation, &session);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "serves {} only, not uid {}",
            developer.name, stranger.uid
        )),
        "{stderr}"
    );
    assert!(
        helper
            .log()
            .contains(&format!("refused uid {}", stranger.uid))
    );
    assert_eq!(workstation.network_seen_by_all(), before);

    // A socket another user made, where the developer was told the helper is: the
    // developer's tunneld sends it nothing.
    let fake_dir = std::env::temp_dir().join(format!("kubedev-fake-helper-{}", stranger.uid));
    let fake = fake_dir.join("network.sock");
    let received = fake_dir.join("received");
    let mut listener = stranger
        .command(&workstation, "sh", &[
            "-c",
            &format!(
                "mkdir -p {dir} && exec socat UNIX-LISTEN:{fake},fork OPEN:{received},creat,append",
                dir = fake_dir.display(),
                fake = fake.display(),
                received = received.display()
            ),
        ])
        .spawn()
        .expect("socat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.exists() {
        assert!(Instant::now() < deadline, "no fake socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fooled = developer.with_env("KUBEDEV_NETWORK_HELPER", fake.to_str().expect("utf-8"));
    let output = fooled.kubectl(&workstation, &session);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("not a socket of root's"), "{stderr}");
    assert_eq!(
        std::fs::read(&received).unwrap_or_default(),
        b"",
        "nothing sent to it"
    );
    assert_eq!(workstation.network_seen_by_all(), before);
    let _ = std::fs::remove_dir_all(&fake_dir);
}
