//! Component test: the trampoline that gives `-- CMD` a network namespace of its own (the
//! plugin started again), made by an unprivileged user. The test runs as root to play the
//! machine as distributions ship it (/dev/net/tun open to all, for the while) and starts
//! the trampoline as nobody; it plays the plugin and tunneld itself: it takes the
//! namespace's files, hands back a resolver file, and reads what the command sends from the
//! TUN device. Nothing leaves the namespace: its only route leads into the test's hands.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use kubedev::fd_passing;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

const TUN_DEVICE: &str = "/dev/net/tun";
const RESOLV_CONF: &str = "nameserver 198.18.0.53\nsearch shop.svc.cluster.local\n";
/// A hang, not a slow machine, is what this catches.
const LIVENESS: Duration = Duration::from_secs(30);

/// Held while a test has /dev/net/tun in a mode of its choosing.
static TUN_CHOSEN: Mutex<()> = Mutex::new(());

/// /dev/net/tun with a mode until dropped, then as it was; one test at a time.
struct TunMode {
    before: u32,
    _chosen: MutexGuard<'static, ()>,
}

impl TunMode {
    fn set(mode: u32) -> Self {
        let chosen = TUN_CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::fs::metadata(TUN_DEVICE)
            .expect(TUN_DEVICE)
            .permissions()
            .mode();
        set_mode(mode);
        Self {
            before: before & 0o7777,
            _chosen: chosen,
        }
    }
}

impl Drop for TunMode {
    fn drop(&mut self) {
        set_mode(self.before);
    }
}

fn set_mode(mode: u32) {
    std::fs::set_permissions(TUN_DEVICE, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {mode:o} {TUN_DEVICE}: {err}"));
}

/// Starts the trampoline as nobody for `command`; returns it and the plugin's end.
fn trampoline(command: &[&str]) -> (Child, OwnedFd) {
    let (plugin, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kubectl-ingest"))
        .arg("__command-netns")
        .args(command)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    (child, plugin)
}

/// The trampoline's next report (none: it closed its end), and the files with it.
fn hear(plugin: &OwnedFd) -> (Option<serde_json::Value>, Vec<OwnedFd>) {
    let mut message = vec![0u8; 64 * 1024];
    let (len, files) = fd_passing::receive(plugin, &mut message).expect("receive");
    let report = (len > 0).then(|| serde_json::from_slice(&message[..len]).expect("JSON"));
    (report, files)
}

fn link_of(file: &OwnedFd) -> String {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()));
    link.expect("readlink").display().to_string()
}

/// Waits for a TCP SYN to 198.18.0.53 port 53 on `tun`; returns false if none comes.
fn syn_to_dns(tun: OwnedFd) -> bool {
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tun = File::from(tun);
        let mut packet = vec![0u8; 65_536];
        while let Ok(len) = tun.read(&mut packet) {
            let ipv4_tcp = len >= 40 && packet[0] >> 4 == 4 && packet[9] == 6;
            let header = usize::from(packet[0] & 0x0f) * 4;
            if ipv4_tcp
                && packet[16..20] == [198, 18, 0, 53]
                && packet[header + 2..header + 4] == 53u16.to_be_bytes()
            {
                let _ = seen_tx.send(());
                return;
            }
        }
    });
    seen_rx.recv_timeout(LIVENESS).is_ok()
}

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test runs as root: it opens /dev/net/tun to all for the while and starts the \
         trampoline as nobody"
    );
}

#[test]
fn an_unprivileged_user_gets_a_namespace_whose_traffic_goes_into_its_tun_device() {
    assert_root();
    let script = "id -u; cat /etc/resolv.conf; ip route; \
                  curl -s --max-time 2 http://198.18.0.53:53/ >/dev/null; echo done";
    let mode = TunMode::set(0o666);
    let (mut child, plugin) = trampoline(&["sh", "-c", script]);
    let (report, files) = hear(&plugin);
    assert_eq!(report, Some(serde_json::json!({"state": "prepared"})));
    let [tun, user, network] = <[OwnedFd; 3]>::try_from(files).expect("three files");
    assert_eq!(link_of(&tun), TUN_DEVICE);
    assert!(link_of(&user).starts_with("user:["), "{}", link_of(&user));
    assert!(
        link_of(&network).starts_with("net:["),
        "{}",
        link_of(&network)
    );
    assert_ne!(
        link_of(&network),
        std::fs::read_link("/proc/self/ns/net")
            .expect("ours")
            .display()
            .to_string(),
        "a namespace of its own"
    );
    let stdin = File::open("/dev/null").expect("/dev/null");
    fd_passing::send(&plugin, RESOLV_CONF.as_bytes(), &[stdin.as_raw_fd()]).expect("send");
    assert_eq!(hear(&plugin).0, None, "the command started");
    drop(mode);

    assert!(
        syn_to_dns(tun),
        "the command's connection never reached the TUN device"
    );
    let mut stdout = String::new();
    let mut output = child.stdout.take().expect("stdout");
    output.read_to_string(&mut stdout).expect("read");
    assert!(child.wait().expect("wait").success(), "{stdout}");
    assert!(
        stdout.starts_with(&format!("65534\n{RESOLV_CONF}")),
        "{stdout}"
    );
    assert!(stdout.contains("\ndefault dev kubedev0 "), "{stdout}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
}

#[test]
fn a_command_that_cannot_start_or_a_closed_tun_device_is_reported() {
    assert_root();
    let mode = TunMode::set(0o666);
    let (mut child, plugin) = trampoline(&["/nonexistent/program"]);
    assert!(matches!(hear(&plugin).0, Some(report) if report["state"] == "prepared"));
    fd_passing::send(&plugin, RESOLV_CONF.as_bytes(), &[]).expect("send");
    let report = hear(&plugin).0.expect("a report");
    assert_eq!(report["state"], "not_started", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No such file"))
    );
    assert_eq!(child.wait().expect("wait").code(), Some(127));
    drop(mode);

    let _mode = TunMode::set(0o600);
    let (mut child, plugin) = trampoline(&["true"]);
    let report = hear(&plugin).0.expect("a report");
    assert_eq!(report["state"], "unavailable", "{report}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(TUN_DEVICE) && reason.contains("0666"),
        "{reason}"
    );
    assert!(child.wait().expect("wait").success());
}
