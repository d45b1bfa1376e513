//! The network helper, started as root in a workstation for the users named, the way an
//! administrator starts it once: its socket in a directory only root may change (the
//! developers are pointed at it with `KUBEDEV_NETWORK_HELPER`), its log beside it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::workstation::Workstation;

#[derive(Debug)]
pub struct NetworkHelper {
    /// How it is started.
    command: Command,
    process: Option<Child>,
    dir: PathBuf,
    /// Where it listens.
    pub socket: PathBuf,
}

impl NetworkHelper {
    /// Starts it inside `workstation` for `users`, and waits for its socket.
    pub fn start(workstation: &Workstation, users: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kubedev-helper-{}-{}",
            std::process::id(),
            crate::unique_suffix()
        ));
        std::fs::create_dir(&dir).expect("the helper's directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.join("network.sock");
        let mut command = workstation.long_lived();
        command
            .arg(crate::repo_dir().join("target/debug/tunneld"))
            .arg("network-helper")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .envs(workstation.resolved_env().iter().map(|(k, v)| (k, v)));
        for user in users {
            command.args(["--user", user]);
        }
        let mut helper = Self {
            command,
            process: None,
            dir,
            socket,
        };
        helper.start_again();
        helper
    }

    /// Starts it (again, once stopped) as it was started first, and waits for its socket;
    /// its log goes on.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("helper.log"))
            .expect("its log");
        self.command.stderr(log);
        self.process = Some(self.command.spawn().expect("the helper starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "no socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The socket's path, as a developer's setting takes it.
    pub fn socket_path(&self) -> &str {
        self.socket.to_str().expect("a UTF-8 path")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("helper.log")).unwrap_or_default()
    }

    /// Waits until its log says `text`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops it as a service manager does (SIGTERM) and waits for it.
    pub fn stop(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("the helper runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        process.wait().expect("the helper exits")
    }
}

impl Drop for NetworkHelper {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
