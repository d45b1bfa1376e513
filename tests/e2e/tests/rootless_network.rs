//! `-- CMD` with the cluster's network and no root: run by a developer as themselves, the
//! command gets a user and network namespace of its own whose TUN device tunneld serves,
//! as rootless containers get networking. Cluster names and addresses reach the cluster
//! (static binaries too: nothing is preloaded), intercepted requests reach a server on
//! the command's own localhost, where no such namespace can be made the command still
//! runs and the plugin says why, and the workstation is left exactly as it was.

use std::process::Output;
use std::time::{Duration, Instant};

use tests_e2e::developer::{Developer, TunClosedToOthers, TunOpenToAll};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// Held to read by tests that open /dev/net/tun to all, to write by the test that needs it
/// as this machine has it (0600): they run one way at a time.
static TUN_MODE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The plugin's stdout and stderr, and the developer's tunneld logs after them.
fn stdout_and_stderr(output: &Output, developer: &Developer) -> (String, String) {
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for log in std::fs::read_dir(developer.runtime_dir())
        .into_iter()
        .flatten()
    {
        let path = log.expect("a directory entry").path();
        if path.extension().is_some_and(|extension| extension == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            stderr.push_str(&format!("\n--- {}:\n{text}", path.display()));
        }
    }
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

#[tokio::test]
async fn a_developers_command_reaches_services_by_name_without_root() {
    let _mode = TUN_MODE.read().await;
    let _tun = TunOpenToAll::hold();
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "rootless").await;
    ns.deploy_echo("web", 1).await.expect("web");
    ns.make_dual_stack("web");
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let before = workstation.network_seen_by_all();

    let web = format!("web.{}", ns.name);
    let (outside, peer_rx) = serve_who_connected(&workstation);
    // curl is linked dynamically; busybox and the probe are static binaries. `curl -6`
    // asks for the Service's IPv6 address alone. The last request is for an address
    // outside the cluster.
    let script = format!(
        "id -u; curl -sS http://{web}:8080/curl; echo; curl -6 -sS http://{web}:8080/curl6; \
         echo; busybox wget -qO- http://{web}:8080/busybox; \
         echo; {probe} tcp {web}:7000 over-tcp; {probe} udp {web}:9000 over-udp; \
         curl -sS http://{outside}/",
        probe = cluster.probe()
    );
    let output = developer.kubectl(
        &workstation,
        &["ingest", "web", "-n", &ns.name, "--", "sh", "-c", &script],
    );
    let (stdout, stderr) = stdout_and_stderr(&output, &developer);
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&developer.uid.to_string().as_str()),
        "{stdout}{stderr}"
    );
    // The TCP echo greets on a line of its own, then echoes.
    for answer in [
        ": GET /curl\n",
        ": GET /curl6\n",
        ": GET /busybox\n",
        "\nover-tcp\n",
        ": over-udp\n",
    ] {
        assert!(
            stdout.contains(answer),
            "no answer {answer:?} in:\n{stdout}{stderr}"
        );
    }
    let greetings = lines
        .iter()
        .filter(|line| line.starts_with("echo from "))
        .count();
    let from_web = lines
        .iter()
        .filter(|line| line.starts_with("echo from web-"))
        .count();
    assert_eq!((greetings, from_web), (5, 5), "{stdout}{stderr}");
    assert!(!stderr.contains("no network namespace"), "{stderr}");
    // Not the cluster's: it left from the workstation itself, not from a pod.
    assert!(stdout.contains(OUTSIDE_ANSWER), "{stdout}{stderr}");
    let peer = peer_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a connection");
    assert_eq!(peer, outside.ip(), "{stdout}{stderr}");

    assert_eq!(
        workstation.network_seen_by_all(),
        before,
        "the workstation changed"
    );
    assert_eq!(developer.files_not_own(), Vec::<std::path::PathBuf>::new());
}

/// What the server outside the cluster answers.
const OUTSIDE_ANSWER: &str = "answered by a server outside the cluster";

/// A server on the workstation's own address, outside the cluster's ranges, answering one
/// request and saying who connected: the workstation itself, or (wrongly) a pod.
fn serve_who_connected(
    workstation: &Workstation,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<std::net::IpAddr>,
) {
    let addresses = workstation.run_ok(&["ip", "-4", "-o", "addr", "show", "scope", "global"]);
    let address: std::net::Ipv4Addr = addresses
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .expect("the workstation's address");
    let listener = workstation.inside(move || {
        std::net::TcpListener::bind((address, 0)).expect("bind outside the cluster")
    });
    let outside = listener.local_addr().expect("its address");
    let (peer_tx, peer_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let Ok((mut connection, peer)) = listener.accept() else {
            return;
        };
        let _ = peer_tx.send(peer.ip());
        let mut request = [0u8; 1024];
        let _ = connection.read(&mut request);
        let body = format!("{OUTSIDE_ANSWER}\n");
        let _ = write!(
            connection,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    (outside, peer_rx)
}

/// The answer the command's server gives, so the test knows who answered.
const FROM_THE_NAMESPACE: &str = "answered inside the command's namespace";

#[tokio::test]
async fn intercepted_requests_reach_a_server_on_the_commands_own_localhost() {
    let _mode = TUN_MODE.read().await;
    let _tun = TunOpenToAll::hold();
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "rootless-intercept").await;
    ns.deploy_echo("web", 1).await.expect("web");
    ns.start_client("client").await.expect("client pod");
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);

    // One connection, answered, and the server (so the command, so the session) ends.
    let response = workstation.file("response.http");
    let body = format!("{FROM_THE_NAMESPACE}\n");
    let http = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    std::fs::write(&response, http).expect("the server's response");
    // It reads the whole request (the client closes its side), then answers.
    let server = workstation.file("answer.sh");
    let script = format!("#!/bin/sh\ncat >/dev/null\ncat {}\n", response.display());
    std::fs::write(&server, script).expect("the server's script");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let answer = format!("EXEC:{}", server.display());
    let mut plugin = developer
        .command(
            &workstation,
            "kubectl",
            &[
                "intercept",
                "web",
                "-n",
                &ns.name,
                "--port",
                "3000:8080",
                "--",
                "socat",
                "TCP-LISTEN:3000,bind=127.0.0.1,reuseaddr",
                &answer,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl intercept starts");

    let request = "GET /intercepted HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(120);
    let answered = loop {
        let answer = ns
            .exec("client", &["probe", "tcp", "web:8080", request])
            .unwrap_or_default();
        if answer.contains(FROM_THE_NAMESPACE) || Instant::now() > deadline {
            break answer;
        }
        if plugin.try_wait().expect("wait").is_some() {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let output = plugin
        .wait_with_output()
        .expect("the plugin ends with its command");
    let (stdout, stderr) = stdout_and_stderr(&output, &developer);
    assert!(
        answered.contains(FROM_THE_NAMESPACE),
        "the request never reached the command's server: {answered}\n{stdout}{stderr}"
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    // Nothing listened on the workstation's own localhost: only the namespace's server
    // could answer, and it did.
    assert!(!stderr.contains("no network namespace"), "{stderr}");
}

#[tokio::test]
async fn without_an_open_tun_device_the_command_runs_and_the_plugin_says_why() {
    let _mode = TUN_MODE.write().await;
    let _closed = TunClosedToOthers::hold();
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "rootless-fallback").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);
    let before = workstation.network_seen_by_all();

    let output = developer.kubectl(
        &workstation,
        &[
            "ingest",
            "web",
            "-n",
            &ns.name,
            "--",
            "sh",
            "-c",
            "id -u; echo ran",
        ],
    );
    let (stdout, stderr) = stdout_and_stderr(&output, &developer);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("{}\nran\n", developer.uid),
        "the command ran as the developer: {stderr}"
    );
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("no network namespace of its own here"))
        .collect();
    assert_eq!(notes.len(), 1, "one line says why:\n{stderr}");
    assert!(
        notes[0].contains("/dev/net/tun") && notes[0].contains("through tunneld's proxy"),
        "it names what is missing (is /dev/net/tun 0600 on this machine?) and that the proxy \
         carries the command's connections instead: {}",
        notes[0]
    );
    assert_eq!(
        workstation.network_seen_by_all(),
        before,
        "the workstation changed"
    );
    assert_eq!(developer.files_not_own(), Vec::<std::path::PathBuf>::new());
}
