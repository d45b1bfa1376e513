//! Mounting with `sshfs -o passive` (Linux, and macOS with macFUSE).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::given_dir::user_dir;
use super::{MountChoice, MountError, table};
use crate::control::SessionKey;
use crate::tunneld;

/// What the kernel reads ahead of a sequential reader on the mount: a bandwidth-delay
/// product (200 MB/s at 80 ms is 16 MB). FUSE holds it at the kernel's default, 128 KiB,
/// which over 20 ms reads about 6 MB/s whatever the link.
#[cfg(target_os = "linux")]
const READAHEAD_KIB: u32 = 16 * 1024;

/// How long sshfs may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);

/// Mounted volumes; dropping unmounts them (and removes a temporary directory).
#[derive(Debug)]
pub struct Mount {
    dir: PathBuf,
    sshfs: Child,
    temporary: bool,
}

impl Mount {
    /// Raises the kernel's readahead on the mount to 16 MiB (`READAHEAD_KIB`): a setting of the
    /// mount's backing device in sysfs, which needs root.
    #[cfg(target_os = "linux")]
    pub fn raise_readahead(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let device = std::fs::metadata(&self.dir)?.dev();
        let setting = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            nix::sys::stat::major(device),
            nix::sys::stat::minor(device)
        );
        std::fs::write(setting, READAHEAD_KIB.to_string())
    }

    /// Where the volumes are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Mounts the volumes of `session` as `choice` says (read-only if `read_only`).
pub async fn mount(
    socket: &Path,
    session: &SessionKey,
    choice: &MountChoice,
    read_only: bool,
) -> Result<Option<Mount>, MountError> {
    let label = label_of(session);
    let (dir, read_only, temporary) = match choice {
        MountChoice::No => return Ok(None),
        MountChoice::Temporary => (temporary_dir(&label)?, read_only, true),
        MountChoice::Dir {
            path,
            read_only: ro,
        } => (user_dir(path)?, read_only || *ro, false),
    };
    let sftp = tunneld::open_files(socket, session).await?.into_std()?;
    sftp.set_nonblocking(false)?;
    let replies = sftp.try_clone()?;
    let mut command = Command::new("sshfs");
    command
        .arg(format!("{label}:/"))
        .arg(&dir)
        .args(["-f", "-o", "passive", "-o"])
        .arg(format!("fsname={label}:/"))
        // Reads and writes of 64 KiB, not sshfs's 32 KiB: half the requests per byte.
        // sshfs takes no reply over 128 KiB.
        .args(["-o", "max_read=65536", "-o", "max_write=65536"])
        .stdin(Stdio::from(OwnedFd::from(sftp)))
        .stdout(Stdio::from(OwnedFd::from(replies)))
        .stderr(Stdio::piped());
    if read_only {
        command.args(["-o", "ro"]);
    }
    let mut sshfs = command
        .spawn()
        .map_err(|source| MountError::NoSshfs { source })?;
    let said = sshfs.stderr.take().map(read_what_it_says);
    // From here on, any error drops `mount`, which unmounts and cleans up.
    let mut mount = Mount {
        dir,
        sshfs,
        temporary,
    };
    let deadline = std::time::Instant::now() + MOUNT_TIMEOUT;
    while !table::is_mounted(&mount.dir) {
        if let Some(status) = mount.sshfs.try_wait()? {
            // It exited: its stderr ends, and the reader with it.
            let said = said.and_then(|reader| reader.join().ok());
            return Err(MountError::Failed {
                status,
                said: said.unwrap_or_default(),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(MountError::Timeout(MOUNT_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(mount))
}

/// How much of what sshfs says is kept for an error.
const SAID_AT_MOST: usize = 4096;

/// Reads sshfs's stderr until it ends, keeping its first [`SAID_AT_MOST`] bytes: a thread,
/// so that sshfs never blocks on a full pipe however long it runs.
fn read_what_it_says(stderr: std::process::ChildStderr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut kept = Vec::new();
        let mut stderr = stderr;
        let _ = (&mut stderr)
            .take(SAID_AT_MOST as u64)
            .read_to_end(&mut kept);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// What names `session`'s mounts and temporary directories: `kubedev-NAMESPACE.NAME` (a
/// namespace has no dot), so that a namesake in another namespace keeps its own.
fn label_of(session: &SessionKey) -> String {
    format!("kubedev-{}.{}", session.namespace, session.name)
}

/// Unmounts what an earlier, detached run mounted for `session`, and removes the
/// temporary directory it made.
pub fn unmount_session(session: &SessionKey) {
    let label = label_of(session);
    for dir in table::mounted_at(&format!("{label}:/")) {
        table::unmount(&dir);
    }
    // Only empty directories go, never anything the user put there, and only those whose
    // maker has exited: a running session of the same name (another namespace, or another
    // mount namespace, where its mount is invisible from here) keeps its directory, since
    // removing a mount point detaches the mount in every namespace.
    for entry in std::fs::read_dir(crate::run_as::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(maker) = maker_of(&entry.file_name().to_string_lossy(), &label) else {
            continue;
        };
        let maker_runs = maker != std::process::id() && table::process_runs(maker);
        use std::os::unix::fs::MetadataExt as _;
        let own = std::fs::symlink_metadata(entry.path())
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == crate::private_files::own_uid());
        if own && !maker_runs && !table::is_mounted(&entry.path()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// The start of the names of the temporary mount directories of the session `label`
/// names; the maker's process id and a random part follow.
fn temporary_prefix(label: &str) -> String {
    format!("{label}-")
}

/// A new directory for the volumes of the session `label` names, in the temporary
/// directory, with a name no one can make first (mkdtemp: a random part, mode 0700).
fn temporary_dir(label: &str) -> Result<PathBuf, MountError> {
    let template = crate::run_as::temp_dir().join(format!(
        "{}{}-XXXXXX",
        temporary_prefix(label),
        std::process::id()
    ));
    nix::unistd::mkdtemp(&template).map_err(|errno| MountError::CreateDir {
        dir: template,
        source: errno.into(),
    })
}

/// The process that made temporary mount directory `file_name` of the session `label`
/// names.
fn maker_of(file_name: &str, label: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(&temporary_prefix(label))?;
    let (maker, random) = rest.rsplit_once('-')?;
    (random.len() == 6).then_some(())?;
    maker.parse().ok()
}

impl Drop for Mount {
    fn drop(&mut self) {
        if table::is_mounted(&self.dir) {
            table::unmount(&self.dir);
        }
        let _ = self.sshfs.kill();
        let _ = self.sshfs.wait();
        if self.temporary {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process id of a process that has exited.
    fn exited_pid() -> u32 {
        let mut child = Command::new("true").spawn().expect("run true");
        child.wait().expect("true exits");
        child.id()
    }

    #[test]
    fn leaving_removes_the_empty_temporary_directories_of_exited_sessions_only() {
        let session = SessionKey::new("shop", &format!("unit-{}", std::process::id()));
        let namesake = SessionKey::new("stock", &session.name);
        let dir_of = |session: &SessionKey, maker: u32| {
            let prefix = temporary_prefix(&label_of(session));
            let dir = std::env::temp_dir().join(format!("{prefix}{maker}-a1B2c3"));
            std::fs::create_dir_all(&dir).expect("temporary dir");
            dir
        };
        let empty = dir_of(&session, exited_pid());
        let kept = dir_of(&session, exited_pid());
        let namesakes = dir_of(&namesake, exited_pid());
        std::fs::write(kept.join("notes.txt"), "mine").expect("file");
        let mut running = Command::new("sleep").arg("30").spawn().expect("run sleep");
        let in_use = dir_of(&session, running.id());
        unmount_session(&session);
        assert!(!empty.exists());
        assert!(
            namesakes.exists(),
            "a namesake in another namespace keeps its own"
        );
        std::fs::remove_dir(&namesakes).ok();
        assert!(kept.join("notes.txt").exists());
        assert!(in_use.exists());
        running.kill().ok();
        running.wait().ok();
        std::fs::remove_dir_all(&kept).ok();
        std::fs::remove_dir(&in_use).ok();
    }

    #[test]
    fn a_temporary_mount_point_is_new_private_and_unguessable() {
        use std::os::unix::fs::PermissionsExt as _;
        let session = format!("fresh-{}", std::process::id());
        // Whoever guesses the old name (the session and the process id) makes it first.
        let guessed = std::env::temp_dir().join(format!(
            "{}{}",
            temporary_prefix(&session),
            std::process::id()
        ));
        std::fs::create_dir_all(&guessed).expect("guessed dir");
        let made = temporary_dir(&session).expect("made");
        let again = temporary_dir(&session).expect("made");
        assert_ne!(made, guessed);
        assert_ne!(made, again);
        let mode = std::fs::metadata(&made).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let name = made
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(maker_of(&name, &session), Some(std::process::id()));
        // Another session whose name starts the same is not this one's.
        assert_eq!(maker_of(&name, "fresh"), None);
        for dir in [made, again, guessed] {
            std::fs::remove_dir(dir).ok();
        }
    }
}
