//! Component tests of the network helper: run as root, in a network namespace of its own
//! (`unshare --net`, so the machine's routes are never touched) with a resolver file of the
//! test's, and spoken to on its socket as a tunneld speaks to it. What it hands out (a TUN
//! device), what it does for a user it serves (routes, the resolver) and undoes when the
//! connection closes, and what it refuses (users it does not serve, routes and names no
//! user may set, running without root).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kubedev::fd_passing;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// A hang, not a slow machine, is what this catches.
const LIVENESS: Duration = Duration::from_secs(30);
const ORIGINAL: &str = "nameserver 192.0.2.53\nsearch corp.example\n";

struct Helper {
    process: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Helper {
    /// Starts the helper for `users`, in a network namespace of its own, and waits for its
    /// socket.
    fn start(name: &str, users: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("helper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("test dir");
        // The socket's directory must be one only root may change.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.join("resolv.conf"), ORIGINAL).expect("resolv.conf");
        let socket = dir.join("network.sock");
        let mut command = Command::new("unshare");
        command
            .args(["--net", "--"])
            .arg(env!("CARGO_BIN_EXE_tunneld"))
            .arg("network-helper")
            .arg("--socket")
            .arg(&socket)
            .arg("--resolv-conf")
            .arg(dir.join("resolv.conf"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stderr(std::fs::File::create(dir.join("helper.log")).expect("log"));
        for user in users {
            command.args(["--user", user]);
        }
        let process = command.spawn().expect("the helper starts");
        let helper = Self {
            process,
            dir,
            socket,
        };
        let deadline = Instant::now() + LIVENESS;
        while !helper.socket.exists() {
            assert!(Instant::now() < deadline, "no socket: {}", helper.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        helper
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("helper.log")).unwrap_or_default()
    }

    fn resolv_conf(&self) -> String {
        std::fs::read_to_string(self.dir.join("resolv.conf")).expect("resolv.conf")
    }

    /// Waits until the resolver file is `expected` again.
    fn wait_for_resolv_conf(&self, expected: &str) {
        let deadline = Instant::now() + LIVENESS;
        while self.resolv_conf() != expected {
            assert!(
                Instant::now() < deadline,
                "{}\n{}",
                self.resolv_conf(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).await.expect("connect")
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One exchange, framed as tunneld frames it (a big-endian u32 length, then JSON).
async fn ask(stream: &mut UnixStream, request: Value) -> Value {
    let body = serde_json::to_vec(&request).expect("json");
    let length = u32::try_from(body.len()).expect("short");
    stream
        .write_all(&length.to_be_bytes())
        .await
        .expect("write");
    stream.write_all(&body).await.expect("write");
    read_reply(stream).await
}

async fn read_reply(stream: &mut UnixStream) -> Value {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.expect("a reply");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).await.expect("a reply");
    serde_json::from_slice(&body).expect("json")
}

fn open_request(domain: &str) -> Value {
    json!({"request": "open", "domain": domain, "search": ["shop.svc.cluster.local", "svc.cluster.local"]})
}

/// The TUN device a descriptor is attached to, as the kernel reports it.
fn tun_name(file: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd as _;
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).expect("fdinfo");
    info.lines()
        .find_map(|line| line.strip_prefix("iff:"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_served_user_gets_a_device_routes_and_dns_all_undone_when_it_leaves() {
    let helper = Helper::start("serves", &["root"]);
    let mut stream = helper.connect().await;

    let opened = ask(&mut stream, open_request("cluster.local")).await;
    assert_eq!(opened["reply"], "opened", "{opened}\n{}", helper.log());
    assert_eq!(opened["upstream"], "192.0.2.53:53", "{opened}");
    let device = opened["device"].as_str().expect("a device name").to_owned();
    assert!(device.starts_with("kubedev-tun"), "{opened}");
    let mut byte = [0u8; 1];
    let (_, files) = fd_passing::receive_on(&stream, &mut byte)
        .await
        .expect("the device");
    assert_eq!(files.len(), 1);
    assert_eq!(
        tun_name(&files[0]),
        device,
        "the descriptor is that TUN device"
    );
    let pointed = helper.resolv_conf();
    assert!(
        pointed.lines().find(|line| line.starts_with("nameserver"))
            == Some("nameserver 198.18.0.53")
            && pointed.contains("search shop.svc.cluster.local svc.cluster.local"),
        "{pointed}"
    );

    let routed = ask(
        &mut stream,
        json!({"request": "route", "routes": ["10.96.0.0/16", "198.18.0.53/32", "0.0.0.0/0", "127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(routed["reply"], "routed", "{routed}");
    assert_eq!(
        routed["added"],
        json!(["10.96.0.0/16", "198.18.0.53/32"]),
        "{routed}"
    );
    let refused: Vec<&str> = routed["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .filter_map(|pair| pair[0].as_str())
        .collect();
    assert_eq!(refused, ["0.0.0.0/0", "127.0.0.0/8"], "{routed}");
    let again = ask(&mut stream, open_request("cluster.local")).await;
    assert_eq!(
        again["reply"], "refused",
        "one device per connection: {again}"
    );

    drop(stream);
    helper.wait_for_resolv_conf(ORIGINAL);
    // Another user may now have the resolver.
    let mut next = helper.connect().await;
    let opened = ask(&mut next, open_request("cluster.local")).await;
    assert_eq!(opened["resolver"]["via"], "resolv_conf", "{opened}");
}

#[tokio::test]
async fn names_that_could_rewrite_the_resolver_and_routes_before_a_device_are_refused() {
    let helper = Helper::start("refuses", &["root"]);
    let mut stream = helper.connect().await;
    let early = ask(
        &mut stream,
        json!({"request": "route", "routes": ["10.96.0.0/16"]}),
    )
    .await;
    assert_eq!(early["reply"], "refused", "{early}");
    for domain in ["cluster.local\nnameserver 203.0.113.9", "-d.local", "a b"] {
        let refused = ask(&mut stream, open_request(domain)).await;
        assert_eq!(refused["reply"], "refused", "{domain:?}: {refused}");
        assert!(
            refused["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("not a domain name"),
            "{refused}"
        );
    }
    assert_eq!(helper.resolv_conf(), ORIGINAL);
}

#[tokio::test]
async fn a_user_it_does_not_serve_is_told_so_and_gets_nothing() {
    let helper = Helper::start("not-served", &["nobody"]);
    let mut stream = helper.connect().await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply["reply"], "refused", "{reply}");
    assert!(
        reply["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not serve uid 0"),
        "{reply}"
    );
    assert_eq!(helper.resolv_conf(), ORIGINAL);
    assert!(helper.log().contains("refused uid 0"), "{}", helper.log());
}

#[test]
fn without_root_it_says_so_and_starts_nothing() {
    let dir = Path::new("/tmp");
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tunneld"))
        .args(["network-helper", "--user", "nobody", "--socket"])
        .arg(dir.join(format!("helper-unprivileged-{}.sock", std::process::id())))
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("needs root: run it with sudo"), "{stderr}");
}
