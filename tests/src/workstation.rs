//! A "developer workstation" for e2e tests: a network namespace whose only route leads to
//! the API server, so cluster addresses are reachable there only through kubedev's tunnel,
//! as on a laptop. tunneld runs inside it; everything is removed when the value drops.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
    pub tunneld_log: PathBuf,
    tunneld: Option<Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Workstation {
    pub fn create(cluster: &TestCluster) -> Self {
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let netns = format!("kdws-{pid}-{index}");
        let host_link = format!("kdh{pid}x{index}");
        let ns_link = format!("kdn{pid}x{index}");
        let subnet = format!("10.202.{}", index % 250);
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
            netns,
            host_link,
            state_dir,
            tunneld: None,
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

    /// Starts tunneld in the workstation for the agents matching `selector` in `namespace`,
    /// and waits until its network is up and it has linked to an agent.
    pub fn start_tunneld(
        &mut self,
        cluster: &TestCluster,
        namespace: &str,
        selector: &str,
        token: &str,
    ) {
        let log = fs::File::create(&self.tunneld_log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(tunneld_binary())
            .arg("--kubeconfig")
            .arg(&cluster.admin_kubeconfig)
            .args(["-n", namespace, "--agents", selector, "--state-dir"])
            .arg(&self.state_dir)
            .env("KUBEDEV_TOKEN", token)
            .env("KUBEDEV_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tunneld starts");
        self.tunneld = Some(child);
        self.wait_for_log("cluster network on", Duration::from_secs(60));
        self.wait_for_log("linked to", Duration::from_secs(60));
    }

    /// Waits until tunneld's log contains `text`.
    pub fn wait_for_log(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(text) {
                return;
            }
            if let Some(child) = self.tunneld.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "tunneld exited ({status}) before logging {text:?}:\n{}",
                    self.log()
                );
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

    /// Stops tunneld as a user would (SIGTERM, like Ctrl-C) and waits for it to exit.
    pub fn stop_tunneld(&mut self) -> std::process::ExitStatus {
        let mut child = self.tunneld.take().expect("tunneld was started");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        // `ip netns exec` execs tunneld, so the pid is tunneld's own.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal tunneld");
        child.wait().expect("tunneld exits")
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
        if let Some(mut child) = self.tunneld.take() {
            let _ = child.kill();
            let _ = child.wait();
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
