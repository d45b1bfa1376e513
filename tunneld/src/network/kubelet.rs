//! Whether a kubelet runs on this machine (k3s, minikube --driver=none, kubeadm on a
//! laptop), and which resolver file it hands to pods: the file a pod with `dnsPolicy:
//! Default` gets a copy of, whose search domains every other pod gets too. tunneld never
//! changes that file: a pod started meanwhile would keep an address that only tunneld
//! serves, long after tunneld is gone. Only a kubelet no local user could fake counts: one
//! that runs as root from an executable root owns and no one else may change; a process
//! any user can start under that name is ignored.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The kubelet's own default, and where k3s looks when that holds only a loopback
/// resolver (systemd-resolved's stub).
const DEFAULT_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// A kubelet on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kubelet {
    pub(crate) pid: u32,
    /// The files it may hand to pods, as the kubelet names them.
    pub(crate) resolv_confs: Vec<PathBuf>,
}

impl Kubelet {
    /// Whether `file` is (the same file as) one this kubelet hands to pods; a path seen
    /// through the kubelet's own root, so a kubelet in a container (kind) is told apart.
    pub(crate) fn hands_out(&self, file: &Path) -> Option<&Path> {
        let ours = std::fs::metadata(file).ok()?;
        self.resolv_confs
            .iter()
            .find(|theirs| {
                std::fs::metadata(through_root(self.pid, theirs))
                    .is_ok_and(|meta| meta.dev() == ours.dev() && meta.ino() == ours.ino())
            })
            .map(PathBuf::as_path)
    }
}

/// The kubelets running on this machine.
pub(crate) fn find() -> Vec<Kubelet> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let args = command_line(pid)?;
            let program = Path::new(args.first()?).file_name()?;
            if program != "kubelet" && program != "k3s" {
                return None;
            }
            // Before anything it names is read: any user can start a process so named.
            if !runs_as_root_from_roots_file(pid) {
                tracing::info!(
                    "process {pid} is named like a kubelet, but does not run as root from an \
                     executable only root may change: not taken for one"
                );
                return None;
            }
            let read_config = |path: &Path| read_config(&through_root(pid, path));
            let resolv_confs = resolver_files(&args, read_config)?;
            Some(Kubelet { pid, resolv_confs })
        })
        .collect()
}

/// The most of a kubelet's configuration file read.
const CONFIG_LIMIT: u64 = 1024 * 1024;

/// A kubelet's configuration file, if it is a regular file (not a pipe or a device).
fn read_config(path: &Path) -> Option<String> {
    use std::io::Read as _;
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut config = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(CONFIG_LIMIT)
        .read_to_string(&mut config)
        .ok()?;
    Some(config)
}

/// The arguments process `pid` runs with, its program first.
fn command_line(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// What matters of a process's executable.
#[derive(Debug, Clone, Copy)]
struct Executable {
    regular: bool,
    owner: u32,
    mode: u32,
}

/// Whether process `pid` runs as root from an executable root owns and only root may
/// change. Where this cannot be read (another user's process, for a tunneld without root),
/// it is not.
fn runs_as_root_from_roots_file(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let executable = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|meta| Executable {
            regular: meta.is_file(),
            owner: meta.uid(),
            mode: meta.mode(),
        });
    trusted(status.as_deref(), executable)
}

/// Whether a process with `status` (its /proc status) and `executable` is root's: every
/// one of its user ids is 0, and its executable is a regular file of root's that neither
/// its group nor others may write.
fn trusted(status: Option<&str>, executable: Option<Executable>) -> bool {
    let root_only = status.is_some_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                !ids.is_empty() && ids.iter().all(|id| *id == "0")
            })
    });
    let roots_file =
        executable.is_some_and(|exe| exe.regular && exe.owner == 0 && exe.mode & 0o022 == 0);
    root_only && roots_file
}

/// `path` as process `pid` sees it, through its own root (a container's, say).
fn through_root(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// The resolver files of the kubelet run by `args`, if it is one: the kubelet itself, or
/// k3s (which runs it inside its own process).
fn resolver_files(
    args: &[String],
    read_config: impl Fn(&Path) -> Option<String>,
) -> Option<Vec<PathBuf>> {
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    let flags = &args[1..];
    let named = match program {
        "kubelet" => flag(flags, "resolv-conf").or_else(|| {
            let config = read_config(Path::new(&flag(flags, "config")?))?;
            config_resolv_conf(&config)
        }),
        "k3s" if matches!(flags.first().map(String::as_str), Some("server" | "agent")) => {
            flag(flags, "resolv-conf").or_else(|| {
                flags
                    .iter()
                    .zip(flags.iter().skip(1).map(Some).chain([None]))
                    .find_map(|(arg, next)| {
                        let value = match arg.strip_prefix("--kubelet-arg") {
                            Some("") => next?.as_str(),
                            Some(rest) => rest.strip_prefix('=')?,
                            None => return None,
                        };
                        value.strip_prefix("resolv-conf=").map(str::to_owned)
                    })
            })
        }
        _ => return None,
    };
    Some(match named {
        Some(file) if file.is_empty() => Vec::new(),
        Some(file) => vec![PathBuf::from(file)],
        None => DEFAULT_FILES.iter().map(PathBuf::from).collect(),
    })
}

/// The value of `--NAME=V` or `--NAME V`.
fn flag(flags: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    flags.iter().enumerate().find_map(|(at, arg)| {
        if *arg == long {
            flags.get(at + 1).cloned()
        } else {
            arg.strip_prefix(&long)?
                .strip_prefix('=')
                .map(str::to_owned)
        }
    })
}

/// `resolvConf` of a KubeletConfiguration file.
fn config_resolv_conf(config: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct KubeletConfiguration {
        #[serde(rename = "resolvConf")]
        resolv_conf: Option<String>,
    }
    serde_saphyr::from_str::<KubeletConfiguration>(config)
        .ok()?
        .resolv_conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn no_config(_: &Path) -> Option<String> {
        None
    }

    #[test]
    fn reads_the_kubelets_flag_or_its_configuration_file() {
        assert_eq!(
            resolver_files(
                &args("/usr/bin/kubelet --resolv-conf=/etc/k8s-resolv.conf"),
                no_config
            ),
            Some(vec![PathBuf::from("/etc/k8s-resolv.conf")])
        );
        let config = |path: &Path| {
            (path == Path::new("/var/lib/kubelet/config.yaml")).then(|| {
                "kind: KubeletConfiguration\nresolvConf: /run/systemd/resolve/resolv.conf\n"
                    .to_owned()
            })
        };
        assert_eq!(
            resolver_files(
                &args("kubelet --config /var/lib/kubelet/config.yaml"),
                config
            ),
            Some(vec![PathBuf::from("/run/systemd/resolve/resolv.conf")])
        );
        // Neither: the kubelet's default (and k3s's second choice), to be safe.
        assert_eq!(
            resolver_files(&args("kubelet --v=2"), no_config).map(|files| files.len()),
            Some(2)
        );
        assert_eq!(
            resolver_files(&args("kubelet --resolv-conf="), no_config),
            Some(Vec::new())
        );
    }

    #[test]
    fn k3s_runs_a_kubelet_and_other_programs_do_not() {
        assert_eq!(
            resolver_files(
                &args("/usr/local/bin/k3s server --resolv-conf /etc/k3s-resolv.conf"),
                no_config
            ),
            Some(vec![PathBuf::from("/etc/k3s-resolv.conf")])
        );
        assert_eq!(
            resolver_files(
                &args("k3s agent --kubelet-arg resolv-conf=/etc/r.conf"),
                no_config
            ),
            Some(vec![PathBuf::from("/etc/r.conf")])
        );
        assert_eq!(
            resolver_files(
                &args("k3s server --kubelet-arg=resolv-conf=/etc/r.conf"),
                no_config
            ),
            Some(vec![PathBuf::from("/etc/r.conf")])
        );
        assert_eq!(
            resolver_files(&args("k3s kubectl get pods"), no_config),
            None
        );
        assert_eq!(
            resolver_files(&args("/usr/bin/containerd"), no_config),
            None
        );
        assert_eq!(resolver_files(&[], no_config), None);
    }

    #[test]
    fn the_same_file_is_recognised_through_another_path() {
        let dir = std::env::temp_dir().join(format!("kubedev-kubelet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("resolv.conf");
        std::fs::write(&file, "nameserver 192.0.2.53\n").expect("write");
        let link = dir.join("link.conf");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let kubelet = Kubelet {
            pid: std::process::id(),
            resolv_confs: vec![file.clone()],
        };
        assert_eq!(kubelet.hands_out(&link), Some(file.as_path()));
        assert_eq!(kubelet.hands_out(Path::new("/proc/self/status")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_kubelet_run_by_root_from_roots_file_counts() {
        let root = "Name:\tkubelet\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        let user = "Name:\tkubelet\nUid:\t1000\t1000\t1000\t1000\n";
        let setuid_by_user = "Uid:\t1000\t0\t0\t0\n";
        let roots = Executable {
            regular: true,
            owner: 0,
            mode: 0o100_755,
        };
        assert!(trusted(Some(root), Some(roots)));
        assert!(!trusted(Some(user), Some(roots)));
        assert!(!trusted(Some(setuid_by_user), Some(roots)));
        assert!(
            !trusted(Some(root), None),
            "an executable that cannot be read"
        );
        assert!(!trusted(None, Some(roots)));
        let users = Executable {
            owner: 1000,
            ..roots
        };
        assert!(!trusted(Some(root), Some(users)));
        let group_writable = Executable {
            mode: 0o100_775,
            ..roots
        };
        assert!(!trusted(Some(root), Some(group_writable)));
    }

    #[test]
    fn a_kubelet_any_user_could_start_is_ignored() {
        let dir = std::env::temp_dir().join(format!("kubedev-fake-kubelet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fake = dir.join("kubelet");
        std::fs::copy("/bin/sleep", &fake).expect("copy sleep");
        // Writable by anyone: whoever runs it, anyone could have put anything there.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let mut running = std::process::Command::new(&fake)
            .arg("30")
            .spawn()
            .expect("run the fake kubelet");
        let pid = running.id();
        // The kernel sets a new program's arguments a moment after spawn returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let named = loop {
            let named = command_line(pid).expect("it runs");
            if !named.is_empty() || std::time::Instant::now() > deadline {
                break named;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(
            resolver_files(&named, no_config).is_some(),
            "named like a kubelet: {named:?}"
        );
        let found = find();
        running.kill().ok();
        running.wait().ok();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(found.iter().all(|kubelet| kubelet.pid != pid), "{found:?}");
    }
}
