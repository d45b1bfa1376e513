//! The Windows plugins (`x86_64-pc-windows-gnu`, as `make dist-test` builds them) run
//! under Wine on a workstation, against the test cluster, as the test developer. Wine
//! runs each test's programs in a prefix of its own (its own `C:`, its own wineserver),
//! inside the workstation's network namespace; Linux paths reach them as `Z:\...`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::TestCluster;
use crate::workstation::Workstation;

/// The plugins a Windows test runs.
const INTERCEPT: &str = "kubectl-intercept";
const INGEST: &str = "kubectl-ingest";

/// Debian's Wine for 64-bit programs.
const WINE: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver";

/// A Wine prefix on a workstation; its wineserver, and every Windows program it runs,
/// stop when the value drops.
#[derive(Debug)]
pub struct WindowsWorkstation {
    pub workstation: Workstation,
    prefix: PathBuf,
}

impl WindowsWorkstation {
    /// A workstation with a new Wine prefix, initialised.
    pub fn create(cluster: &TestCluster) -> Self {
        let workstation = Workstation::create(cluster);
        let prefix = workstation.file("wine");
        let windows = Self {
            workstation,
            prefix,
        };
        // Without pipes: the wineserver and Wine's services it starts stay up, holding
        // whatever they were started with.
        let status = windows
            .wine()
            .args(["wineboot", "--init"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("wineboot runs");
        assert!(status.success(), "wineboot --init failed: {status}");
        windows.add_process_prng();
        windows.install_as_krew_does();
        windows
    }

    /// The profile of the prefix's Windows user (Wine names it after the Unix user).
    fn profile(&self) -> PathBuf {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        self.prefix.join("drive_c/users").join(user)
    }

    /// Installs the plugins as krew does on Windows without the right to make links: each
    /// plugin copied alone into `%USERPROFILE%\.krew\bin`, its tunneld left in krew's store.
    fn install_as_krew_does(&self) {
        let krew = self.profile().join(".krew");
        let bin = krew.join("bin");
        let store = krew
            .join("store/intercept")
            .join(concat!("v", env!("CARGO_PKG_VERSION")));
        for dir in [&bin, &store] {
            std::fs::create_dir_all(dir).expect("krew's directories");
        }
        let place = |name: &str, dir: &Path| {
            let installed = dir.join(format!("{name}.exe"));
            // Linked, not copied: debug builds are hundreds of megabytes.
            std::fs::hard_link(windows_binary(name), &installed)
                .or_else(|_| std::fs::copy(windows_binary(name), &installed).map(|_| ()))
                .expect("install a plugin");
        };
        for plugin in [INTERCEPT, INGEST] {
            place(plugin, &bin);
        }
        place("tunneld", &store);
    }

    /// Builds `tests/wine/bcryptprimitives.c` into the prefix's system32: Wine 8 lacks
    /// the DLL, which Rust programs need on Windows (every Windows 10 has it).
    fn add_process_prng(&self) {
        let source = crate::repo_dir().join("tests/wine/bcryptprimitives.c");
        let dll = self
            .prefix
            .join("drive_c/windows/system32/bcryptprimitives.dll");
        let output = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-O2", "-shared", "-o"])
            .arg(&dll)
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .expect("MinGW's gcc runs (`make dist-test` installs it)");
        assert!(
            output.status.success(),
            "building {}: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `wine64`, in the workstation, in this prefix, without Wine's chatter or its offers
    /// to install .NET and a browser engine.
    fn wine(&self) -> Command {
        let mut command = self.workstation.long_lived();
        command
            .arg(WINE)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY");
        command
    }

    /// A Windows plugin (`kubectl-intercept` or `kubectl-ingest`) with `args`, as the test
    /// developer (the kubedev Role only), installed as krew installs it, its runtime
    /// directory where Windows users have it (`%LOCALAPPDATA%\kubedev`, in the prefix), run
    /// from the user's profile.
    pub fn plugin_command(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> Command {
        let mut command = self.wine();
        command
            .arg(windows_path(
                &self
                    .profile()
                    .join(".krew/bin")
                    .join(format!("{plugin}.exe")),
            ))
            .args(args)
            .env("KUBECONFIG", windows_path(&cluster.dev_kubeconfig))
            .env(
                "KUBEDEV_CONFIG",
                windows_path(&self.workstation.file("windows-config.yaml")),
            )
            .env("KUBEDEV_AGENT_IMAGE", crate::AGENT_IMAGE)
            .env("KUBEDEV_LOG", "info")
            .env_remove("KUBEDEV_TUNNELD")
            .env_remove("KUBEDEV_RUNTIME_DIR")
            // On drive C:, as a Windows user's shell is: a Unix path (`/dev/urandom`) in
            // the plugins would otherwise reach the Linux file it names through drive Z:.
            .current_dir(self.profile());
        command
    }

    /// Runs a Windows plugin and returns its output. Its output goes through files, not
    /// pipes: Wine's own processes, and a tunneld the plugin starts, keep the pipes they
    /// were started with open, so their end would never come.
    pub fn plugin(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> Output {
        let file = |name: &str| {
            let path = self.workstation.file(&format!("{plugin}.{name}"));
            (std::fs::File::create(&path).expect("an output file"), path)
        };
        let ((stdout, stdout_path), (stderr, stderr_path)) = (file("stdout"), file("stderr"));
        let status = self
            .plugin_command(cluster, plugin, args)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .expect("wine runs");
        let read = |path: &Path| std::fs::read(path).expect("the output file");
        Output {
            status,
            stdout: read(&stdout_path),
            stderr: read(&stderr_path),
        }
    }

    /// Runs a Windows plugin and returns its stdout, panicking with its output and its
    /// tunneld's log on failure.
    pub fn plugin_ok(&self, cluster: &TestCluster, plugin: &str, args: &[&str]) -> String {
        let output = self.plugin(cluster, plugin, args);
        assert!(
            output.status.success(),
            "{plugin}.exe {} failed ({}):\n{}{}\ntunneld's log:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.tunneld_logs()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every tunneld log in the Windows runtime directory, in each Windows user's
    /// `%LOCALAPPDATA%\kubedev`.
    pub fn tunneld_logs(&self) -> String {
        std::fs::read_dir(self.prefix.join("drive_c/users"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|user| crate::workstation::logs_in(&user.path().join("AppData/Local/kubedev")))
            .collect()
    }
}

impl Drop for WindowsWorkstation {
    fn drop(&mut self) {
        let _ = Command::new(WINESERVER)
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .status();
    }
}

/// `path` as a Windows program under Wine names it: on drive `Z:`, which is `/`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display().to_string().replace('/', "\\"))
}

/// A Windows binary of the workspace.
fn windows_binary(name: &str) -> PathBuf {
    let path = crate::repo_dir()
        .join("target/x86_64-pc-windows-gnu/debug")
        .join(format!("{name}.exe"));
    assert!(
        path.exists(),
        "no {}: run `make dist-test` first",
        path.display()
    );
    path
}
