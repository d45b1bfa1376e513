//! The plugins as a user gets them: `make dist`'s archives installed by krew into a
//! KREW_ROOT of the test's own, and kubectl finding them on a PATH that holds nothing else.

use std::path::PathBuf;
use std::process::Command;

use crate::TestCluster;

/// The plugins as krew names them.
pub const PLUGINS: [&str; 3] = ["intercept", "ingest", "replace-container"];

/// A KREW_ROOT and a directory with kubectl and krew (`kubectl-krew`) in it; both are
/// removed when the value drops.
#[derive(Debug)]
pub struct KrewRoot {
    dir: PathBuf,
}

impl KrewRoot {
    /// An empty KREW_ROOT, with the cluster's kubectl and krew (built from the krew Go module
    /// by `tests/cluster/cluster.sh krew-bin-dir`) beside it.
    pub fn create(cluster: &TestCluster) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kubedev-krew-{}-{}",
            std::process::id(),
            crate::unique_suffix()
        ));
        let tools = dir.join("tools");
        std::fs::create_dir_all(&tools).expect("the krew test directory");
        let krew_bin = Command::new(crate::repo_dir().join("tests/cluster/cluster.sh"))
            .arg("krew-bin-dir")
            .output()
            .expect("cluster.sh krew-bin-dir runs");
        assert!(krew_bin.status.success(), "building krew: {krew_bin:?}");
        let krew_bin = PathBuf::from(String::from_utf8_lossy(&krew_bin.stdout).trim());
        std::os::unix::fs::symlink(&cluster.kubectl, tools.join("kubectl")).expect("kubectl");
        std::os::unix::fs::symlink(krew_bin.join("kubectl-krew"), tools.join("kubectl-krew"))
            .expect("kubectl-krew");
        Self { dir }
    }

    /// KREW_ROOT.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The kubectl that finds the plugins.
    pub fn kubectl_path(&self) -> PathBuf {
        self.dir.join("tools/kubectl")
    }

    /// The environment kubectl and krew run with: PATH has krew's bin directory, kubectl,
    /// krew and the system's directories, and no other plugin; krew checks for no upgrade.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.root().join("bin").display(),
            self.dir.join("tools").display()
        );
        vec![
            ("PATH", path),
            ("KREW_ROOT", self.root().display().to_string()),
            ("KREW_NO_UPGRADE_CHECK", "1".into()),
        ]
    }

    /// `kubectl ARGS` on this machine, with [`Self::env`].
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.kubectl_path());
        command.args(args).envs(self.env());
        command
    }
}

impl Drop for KrewRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `make dist`'s output: `$KUBEDEV_DIST_DIR`, else dist/ in the repository.
pub fn dist_dir() -> PathBuf {
    std::env::var_os("KUBEDEV_DIST_DIR")
        .map_or_else(|| crate::repo_dir().join("dist"), PathBuf::from)
}

/// The archive of `plugin` for this machine, and its krew manifest.
pub fn release_of(plugin: &str) -> (PathBuf, PathBuf) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no release for {other}"),
    };
    let dist = dist_dir();
    let archive = dist.join(format!(
        "kubectl-{plugin}-v{}-linux-{arch}.tar.gz",
        env!("CARGO_PKG_VERSION")
    ));
    let manifest = dist.join("krew").join(format!("{plugin}.yaml"));
    assert!(
        archive.exists() && manifest.exists(),
        "no {} or {}: run `make dist` first (`make test-e2e` does)",
        archive.display(),
        manifest.display()
    );
    (archive, manifest)
}
