//! A shell on the test cluster's node, as a k3s or minikube user has one: root, in the
//! host's own network namespace, where the node's bridge, kube-proxy's rules and the
//! cluster's reject routes already are. Each plugin runs in a mount namespace of its own in
//! which /etc/resolv.conf is a file the test chooses: the machine's real resolver is never
//! changed, and nothing asks it anything.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kubedev::control::DaemonStatus;

use crate::TestCluster;
use crate::workstation::{ORIGINAL_RESOLV_CONF, as_developer, private_dir};

/// Drops the pods' network namespace mounts from the new mount namespace (a long-lived
/// copy would keep containerd from removing them), shows `$0` as /etc/resolv.conf, and
/// runs the rest.
const NODE_SHELL: &str = r#"for ns in /run/netns/*; do umount -l "$ns" 2>/dev/null; done
mount --bind "$0" /etc/resolv.conf && exec "$@""#;

#[derive(Debug)]
pub struct NodeShell {
    state_dir: PathBuf,
    /// What /etc/resolv.conf is for the plugins and their tunneld.
    pub resolv_conf: PathBuf,
}

impl NodeShell {
    /// A shell whose /etc/resolv.conf is `resolv_conf`, or a file of its own holding
    /// [`ORIGINAL_RESOLV_CONF`].
    pub fn create(resolv_conf: Option<PathBuf>) -> Self {
        let state_dir = std::env::temp_dir().join(format!(
            "kubedev-node-{}-{}",
            std::process::id(),
            crate::unique_suffix()
        ));
        // kubedev's runtime directory, closed to other users.
        private_dir(&state_dir);
        let resolv_conf = resolv_conf.unwrap_or_else(|| {
            let own = state_dir.join("resolv.conf");
            fs::write(&own, ORIGINAL_RESOLV_CONF).expect("write resolv.conf");
            own
        });
        Self {
            state_dir,
            resolv_conf,
        }
    }

    /// Runs a plugin as the namespace-scoped developer, with its tunneld in this shell's
    /// state directory.
    pub fn plugin(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> Output {
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                NODE_SHELL,
            ])
            .arg(&self.resolv_conf);
        as_developer(&mut command, cluster, &self.state_dir, plugin, args);
        command.output().expect("plugin runs")
    }

    /// Runs a plugin and returns its stdout and stderr, panicking on failure.
    pub fn plugin_ok(
        &self,
        cluster: &TestCluster,
        plugin: &str,
        args: &[&str],
    ) -> (String, String) {
        let output = self.plugin(cluster, plugin, args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{plugin} {} failed ({}):\n{stdout}{stderr}\ntunneld's log:\n{}",
            args.join(" "),
            output.status,
            self.tunneld_log()
        );
        (stdout, stderr)
    }

    /// tunneld's status as `PLUGIN status -o json ARGS` reports it (the tunneld of the
    /// identity `args` name, if any); `None` when it is not running.
    pub fn status(
        &self,
        cluster: &TestCluster,
        plugin: &str,
        args: &[&str],
    ) -> Option<DaemonStatus> {
        let asked = [&["status", "-o", "json"][..], args].concat();
        let (json, _) = self.plugin_ok(cluster, plugin, &asked);
        serde_json::from_str(&json).expect("status as JSON")
    }

    /// Runs a command in the mount namespace of tunneld `pid` (where /etc/resolv.conf is
    /// what tunneld made of it), in the host's network namespace.
    pub fn in_tunneld_mounts(&self, pid: u32, command: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--mount", "--"])
            .args(command)
            .output()
            .expect("nsenter runs")
    }

    pub fn resolv_conf(&self) -> String {
        fs::read_to_string(&self.resolv_conf).expect("read resolv.conf")
    }

    /// The logs of the tunnelds this shell's plugins started.
    pub fn tunneld_log(&self) -> String {
        let Ok(entries) = fs::read_dir(&self.state_dir) else {
            return String::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
            .filter_map(|entry| fs::read_to_string(entry.path()).ok())
            .collect()
    }

    /// The tunnelds serving this shell's state directory.
    fn tunnelds(&self) -> Vec<u32> {
        let dir = self.state_dir.display().to_string();
        let Ok(processes) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        processes
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.contains("tunneld") && cmdline.contains(&dir)
                })
            })
            .collect()
    }
}

impl Drop for NodeShell {
    /// A test that failed half-way must not leave a tunneld routing the host's traffic:
    /// SIGTERM (it restores what it changed), then SIGKILL.
    fn drop(&mut self) {
        for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
            let running = self.tunnelds();
            if running.is_empty() {
                break;
            }
            for pid in running {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.tunnelds().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// Waits until process `pid` (not a child of this one) has exited.
pub fn wait_for_exit(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while PathBuf::from(format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This machine's routing state as `ip` prints it: every IPv4 table and rule, and the IPv6
/// tables but for the lines of the pods' own veth devices, which come and go with the pods.
pub fn machine_routes() -> String {
    let ip = |args: &[&str]| {
        let output = Command::new("ip").args(args).output().expect("ip runs");
        assert!(output.status.success(), "ip {}", args.join(" "));
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let mut state = ip(&["-4", "route", "show", "table", "all"]);
    state += &ip(&["-4", "rule", "show"]);
    for line in ip(&["-6", "route", "show", "table", "all"]).lines() {
        if !line.contains(" dev veth") {
            state += line;
            state.push('\n');
        }
    }
    state
}

/// `state` without the lines that name `device`.
pub fn without_device(state: &str, device: &str) -> String {
    let needle = format!("dev {device}");
    state
        .lines()
        .filter(|line| !line.contains(&needle))
        .map(|line| format!("{line}\n"))
        .collect()
}
