//! A developer's own account on the workstation, as on a laptop: an unprivileged user with
//! kubectl and the plugins on its PATH where krew puts them (`~/.krew/bin`), its own
//! kubeconfig (the kubedev Role only), no `XDG_RUNTIME_DIR` (no login session) and nothing
//! of root's. The account, its processes and its files are removed when the value drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::TestCluster;
use crate::workstation::Workstation;

/// The plugins' binaries, and tunneld beside them, as a krew install has them.
const INSTALLED: [&str; 4] = [
    "kubectl-intercept",
    "kubectl-ingest",
    "kubectl-replace_container",
    "tunneld",
];

/// An unprivileged account made for one test.
#[derive(Debug)]
pub struct Developer {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Settings of the developer's own, given to every command (`NAME=VALUE`).
    env: Vec<String>,
}

impl Developer {
    /// Makes the account, with the plugins in `~/.krew/bin` (links into this build, as krew
    /// links into its store), kubectl in `~/.local/bin`, and the test developer's
    /// kubeconfig as `~/.kube/config`.
    pub fn create(cluster: &TestCluster) -> Self {
        let name = format!("kd{}x{}", std::process::id(), crate::unique_suffix());
        run_ok(
            Command::new("useradd")
                .args(["--create-home", "--user-group", "--shell"])
                .args(["/bin/sh", &name]),
        );
        let id = |flag: &str| -> u32 {
            let output = run_ok(Command::new("id").args([flag, &name]));
            output.trim().parse().expect("a numeric id")
        };
        let developer = Self {
            uid: id("-u"),
            gid: id("-g"),
            home: PathBuf::from("/home").join(&name),
            name,
            env: Vec::new(),
        };
        developer.install(cluster);
        developer
    }

    fn install(&self, cluster: &TestCluster) {
        let krew_bin = self.home.join(".krew/bin");
        let local_bin = self.home.join(".local/bin");
        let kube = self.home.join(".kube");
        for dir in [&krew_bin, &local_bin, &kube] {
            std::fs::create_dir_all(dir).expect("the developer's directories");
        }
        let build = crate::build_dir();
        for binary in INSTALLED {
            let built = build.join(binary);
            assert!(
                built.exists(),
                "no {}: run `cargo build` first",
                built.display()
            );
            std::os::unix::fs::symlink(&built, krew_bin.join(binary)).expect("link a plugin");
        }
        std::fs::copy(&cluster.kubectl, local_bin.join("kubectl")).expect("kubectl");
        std::fs::copy(&cluster.dev_kubeconfig, kube.join("config")).expect("kubeconfig");
        run_ok(
            Command::new("chown")
                .args(["-R", "-h", &format!("{0}:{0}", self.name)])
                .arg(&self.home),
        );
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(kube.join("config"), std::fs::Permissions::from_mode(0o600))
            .expect("kubeconfig mode");
    }

    /// Gives every command of this developer `name=value` too, as a setting in their
    /// shell's profile would.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push(format!("{name}={value}"));
        self
    }

    /// `program ARGS` as this developer inside `workstation`, with the environment a login
    /// shell would give: HOME, USER, a PATH with `~/.krew/bin` first, and nothing else but
    /// the agent image of the test cluster (a setting users make once).
    pub fn command(&self, workstation: &Workstation, program: &str, args: &[&str]) -> Command {
        let path = format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin",
            self.home.join(".krew/bin").display(),
            self.home.join(".local/bin").display()
        );
        let mut command = workstation.long_lived();
        command
            .arg("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--init-groups", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!("LOGNAME={}", self.name))
            .arg(format!("PATH={path}"))
            .arg(format!("KUBEDEV_AGENT_IMAGE={}", crate::AGENT_IMAGE))
            .arg("KUBEDEV_LOG=info")
            .args(&self.env)
            .current_dir(&self.home)
            .arg(program)
            .args(args);
        command
    }

    /// `kubectl ARGS` as this developer inside `workstation`: kubectl finds the plugins on
    /// PATH, as it does for a krew user.
    pub fn kubectl(&self, workstation: &Workstation, args: &[&str]) -> Output {
        self.command(workstation, "kubectl", args)
            .output()
            .expect("kubectl runs")
    }

    /// Like [`Self::kubectl`], panicking with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, workstation: &Workstation, args: &[&str]) -> String {
        let output = self.kubectl(workstation, args);
        assert!(
            output.status.success(),
            "kubectl {} as {} failed ({}):\n{}{}",
            args.join(" "),
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Where kubedev keeps this developer's tunnelds when there is no `XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("kubedev-{}", self.uid))
    }

    /// Every file under the developer's home and kubedev's runtime directory that is not
    /// the developer's own: a plugin must never leave root's files (or anyone else's)
    /// where the developer works.
    pub fn files_not_own(&self) -> Vec<PathBuf> {
        let mut search = Command::new("find");
        search.arg(&self.home);
        if self.runtime_dir().exists() {
            search.arg(self.runtime_dir());
        }
        let found = run_ok(search.args(["!", "-user", &self.name]));
        found.lines().map(PathBuf::from).collect()
    }

    fn stop_processes(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let killed = Command::new("pkill")
                .args(["-KILL", "-U", &self.uid.to_string()])
                .status()
                .expect("pkill runs");
            // pkill exits 1 when no process matched.
            if killed.code() == Some(1) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Developer {
    fn drop(&mut self) {
        self.stop_processes();
        let _ = Command::new("find")
            .arg(std::env::temp_dir())
            .args([
                "-maxdepth",
                "1",
                "-user",
                &self.name,
                "-exec",
                "rm",
                "-rf",
                "{}",
                "+",
            ])
            .status();
        let _ = std::fs::remove_dir_all(self.runtime_dir());
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
    }
}

/// `/dev/net/tun` open to every user while held, as distributions ship it (udev makes it
/// 0666; this machine has it 0600): unprivileged users can then make a TUN device in a
/// network namespace of their own. Put back as it was when the last holder drops.
#[derive(Debug)]
pub struct TunOpenToAll {
    _device: OpenToAll,
}

impl TunOpenToAll {
    pub fn hold() -> Self {
        Self {
            _device: OpenToAll::hold("/dev/net/tun"),
        }
    }
}

/// `/dev/net/tun` closed to other users while held (0600, as on this machine and on
/// hardened ones), whatever a run killed before it could put it back left: what a developer
/// without the device meets. Put back as it was when dropped; hold it alone.
#[derive(Debug)]
pub struct TunClosedToOthers {
    mode: u32,
}

impl TunClosedToOthers {
    pub fn hold() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let device = Path::new("/dev/net/tun");
        let mode = std::fs::metadata(device)
            .expect("/dev/net/tun")
            .permissions()
            .mode();
        set_mode(device, 0o600);
        Self {
            mode: mode & 0o7777,
        }
    }
}

impl Drop for TunClosedToOthers {
    fn drop(&mut self) {
        set_mode(Path::new("/dev/net/tun"), self.mode);
    }
}

/// `/dev/fuse` open to every user while held, as distributions ship it (0666; this machine
/// has it 0600): unprivileged users can then mount with sshfs (through the setuid
/// `fusermount3`). Put back as it was when the last holder drops.
#[derive(Debug)]
pub struct FuseOpenToAll {
    _device: OpenToAll,
}

impl FuseOpenToAll {
    pub fn hold() -> Self {
        Self {
            _device: OpenToAll::hold("/dev/fuse"),
        }
    }
}

/// A device open to every user while held; how many hold each, and the mode to put back.
static DEVICE_HOLDERS: Mutex<Vec<(&str, usize, u32)>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct OpenToAll {
    device: &'static str,
}

impl OpenToAll {
    fn hold(device: &'static str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let mut holders = DEVICE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        match holders.iter_mut().find(|(held, ..)| *held == device) {
            Some((_, count, _)) => *count += 1,
            None => {
                let mode = std::fs::metadata(device)
                    .expect(device)
                    .permissions()
                    .mode();
                set_mode(Path::new(device), 0o666);
                holders.push((device, 1, mode & 0o7777));
            }
        }
        Self { device }
    }
}

impl Drop for OpenToAll {
    fn drop(&mut self) {
        let mut holders = DEVICE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = holders.iter().position(|(held, ..)| *held == self.device) {
            holders[at].1 -= 1;
            if holders[at].1 == 0 {
                let (device, _, mode) = holders.remove(at);
                set_mode(Path::new(device), mode);
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {mode:o} {}: {err}", path.display()));
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
