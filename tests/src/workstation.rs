//! A "developer workstation" for e2e tests: a network namespace whose only route leads to
//! the API server, so cluster addresses are reachable there only through kubedev's tunnel,
//! as on a laptop. tunneld runs inside it; everything is removed when the value drops.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kubedev::control::{self, ControlReply, ControlRequest, DaemonStatus};

use crate::TestCluster;

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);

/// What the workstation's resolv.conf holds before tunneld: a nameserver with nothing
/// behind it, so names outside the cluster fail at once and nothing leaves the machine.
pub const ORIGINAL_RESOLV_CONF: &str = "nameserver 127.0.0.1\n";

#[derive(Debug)]
pub struct Workstation {
    pub netns: String,
    host_link: String,
    state_dir: PathBuf,
    socket: PathBuf,
    pub tunneld_log: PathBuf,
    tunneld_pid: Option<u32>,
}

/// The name of the session the tests add.
const SESSION: &str = "e2e";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Workstation {
    pub fn create(cluster: &TestCluster) -> Self {
        remove_abandoned();
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let netns = format!("kdws-{pid}-{index}");
        let host_link = format!("kdh{pid}x{index}");
        let ns_link = format!("kdn{pid}x{index}");
        let subnet = format!("10.202.{}", (pid % 41 * 6 + index) % 250);
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link, "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{subnet}.1/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{subnet}.2/30"),
            "dev",
            &ns_link,
        ]);
        ip(&["-n", &netns, "link", "set", &ns_link, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let api_server = cluster.api_server_ip();
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            &format!("{api_server}/32"),
            "via",
            &format!("{subnet}.1"),
        ]);
        let etc = PathBuf::from("/etc/netns").join(&netns);
        fs::create_dir_all(&etc).expect("create /etc/netns/NS");
        fs::write(etc.join("resolv.conf"), ORIGINAL_RESOLV_CONF).expect("write resolv.conf");
        let state_dir = std::env::temp_dir().join(format!("kubedev-{netns}"));
        fs::create_dir_all(&state_dir).expect("state dir");
        Self {
            tunneld_log: state_dir.join("tunneld.log"),
            socket: state_dir.join("tunneld.sock"),
            netns,
            host_link,
            state_dir,
            tunneld_pid: None,
        }
    }

    /// Runs a command inside the workstation.
    pub fn run(&self, command: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(command)
            .output()
            .expect("ip netns exec runs")
    }

    /// Runs a command inside the workstation and returns its stdout, panicking on failure.
    pub fn run_ok(&self, command: &[&str]) -> String {
        let output = self.run(command);
        assert!(
            output.status.success(),
            "{} failed: {}{}",
            command.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// The workstation's /etc/resolv.conf.
    pub fn resolv_conf(&self) -> String {
        fs::read_to_string(
            PathBuf::from("/etc/netns")
                .join(&self.netns)
                .join("resolv.conf"),
        )
        .expect("read")
    }

    /// Starts tunneld in the workstation the way the plugins do (on demand, through the
    /// control socket), adds a session for the agents matching `selector` in `namespace`,
    /// and waits until the network is up and an agent is linked.
    pub async fn start_tunneld(
        &mut self,
        cluster: &TestCluster,
        namespace: &str,
        selector: &str,
        token: &str,
    ) {
        let mut start = Command::new("ip");
        start
            .args(["netns", "exec", &self.netns])
            .arg(tunneld_binary())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--kubeconfig")
            .arg(&cluster.admin_kubeconfig)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--idle-exit-secs", "1"])
            .env("KUBEDEV_LOG", "info");
        control::ensure_running(&self.socket, start, &self.tunneld_log)
            .await
            .expect("tunneld starts");
        let add = ControlRequest::AddSession {
            name: SESSION.into(),
            namespace: namespace.into(),
            agents: selector.into(),
            token: token.into(),
        };
        control::request(&self.socket, &add)
            .await
            .expect("session added");
        self.tunneld_pid = Some(self.status().await.pid);
        self.wait_for_log("cluster network on", Duration::from_secs(60));
        self.wait_for_log("linked to", Duration::from_secs(60));
    }

    /// tunneld's status, through its control socket.
    pub async fn status(&self) -> DaemonStatus {
        match control::request(&self.socket, &ControlRequest::Status).await {
            Ok(ControlReply::Status(status)) => status,
            other => panic!("no status from tunneld: {other:?}"),
        }
    }

    /// Ends the session, as a plugin does on leave; tunneld then exits by itself.
    pub async fn remove_session(&self) {
        let remove = ControlRequest::RemoveSession {
            name: SESSION.into(),
        };
        control::request(&self.socket, &remove)
            .await
            .expect("session removed");
    }

    /// Waits until the tunneld process has exited.
    pub fn wait_for_tunneld_exit(&mut self, limit: Duration) {
        let pid = self.tunneld_pid.take().expect("tunneld was started");
        let deadline = Instant::now() + limit;
        // An exited child of this process stays a zombie ('Z') until reaped.
        while fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(
                Instant::now() < deadline,
                "tunneld is still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until tunneld's log contains `text`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tunneld never logged {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.tunneld_log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs `work` on a thread inside the workstation's network namespace: every socket it
    /// opens is the workstation's.
    pub fn inside<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = fs::File::open(format!("/run/netns/{}", self.netns)).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            work()
        })
        .join()
        .expect("work inside the workstation")
    }
}

impl Drop for Workstation {
    fn drop(&mut self) {
        if let Some(pid) = self.tunneld_pid.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.netns));
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// Removes the workstations of test processes that died without cleaning up (their
/// links would collide with new ones).
fn remove_abandoned() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name
            .strip_prefix("kdws-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if owner
            .parse::<u32>()
            .is_ok_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
}

/// The tunneld binary under test (`make test-e2e` builds it first).
fn tunneld_binary() -> PathBuf {
    let path = std::env::var_os("KUBEDEV_TUNNELD").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tunneld"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no tunneld at {}: run `cargo build -p tunneld` first",
        path.display()
    );
    path
}
