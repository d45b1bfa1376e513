//! What is mounted where, and unmounting it, as each system tells and does it: Linux's
//! `/proc/self/mountinfo` and `fusermount`, macOS's `mount` listing and `umount`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directories where `source` (`kubedev-NAME:/`) is mounted.
#[cfg(target_os = "linux")]
pub(super) fn mounted_at(source: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let (fields, described) = line.split_once(" - ")?;
            (described.split(' ').nth(1) == Some(source)).then_some(())?;
            fields.split(' ').nth(4).map(PathBuf::from)
        })
        .collect()
}

/// Whether something is mounted at `dir`.
#[cfg(target_os = "linux")]
pub(super) fn is_mounted(dir: &Path) -> bool {
    let target = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split(' ').nth(4) == Some(target.as_ref()))
    })
}

/// Unmounts the FUSE mount at `dir` (lazily, if it is busy).
#[cfg(target_os = "linux")]
pub(super) fn unmount(dir: &Path) {
    let unmounted = Command::new("fusermount3")
        .arg("-u")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !unmounted {
        let _ = Command::new("fusermount")
            .arg("-uz")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// The mounts `mount` lists, as `(source, directory)`: lines read
/// `SOURCE on DIR (TYPE, OPTIONS...)`. Only this user's own mounts are ever unmounted from
/// it: macOS refuses to unmount another user's.
#[cfg(target_os = "macos")]
fn listed() -> Vec<(String, PathBuf)> {
    let output = Command::new("/sbin/mount")
        .stderr(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    parse_listing(&output)
}

#[cfg(any(target_os = "macos", test))]
fn parse_listing(listing: &str) -> Vec<(String, PathBuf)> {
    listing
        .lines()
        .filter_map(|line| {
            let (source, rest) = line.split_once(" on ")?;
            let (dir, _) = rest.rsplit_once(" (")?;
            Some((source.to_owned(), PathBuf::from(dir)))
        })
        .collect()
}

/// The directories where `source` (`kubedev-NAME:/`) is mounted.
#[cfg(target_os = "macos")]
pub(super) fn mounted_at(source: &str) -> Vec<PathBuf> {
    listed()
        .into_iter()
        .filter_map(|(mounted, dir)| (mounted == source).then_some(dir))
        .collect()
}

/// Whether something is mounted at `dir`: it is on another device than its parent. (Not
/// from the `mount` listing, where another user's mount point named with a line break could
/// forge a line.)
#[cfg(target_os = "macos")]
pub(super) fn is_mounted(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let device = |path: &Path| std::fs::metadata(path).map(|meta| meta.dev());
    match (device(dir), dir.parent().map(device)) {
        (Ok(mounted), Some(Ok(parent))) => mounted != parent,
        _ => false,
    }
}

/// Unmounts the macFUSE mount at `dir` (forced, if it is busy).
#[cfg(target_os = "macos")]
pub(super) fn unmount(dir: &Path) {
    let unmounted = Command::new("/sbin/umount")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !unmounted {
        let _ = Command::new("/sbin/umount")
            .arg("-f")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether process `pid` runs.
pub(super) fn process_runs(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks only; EPERM means it runs as another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_macos_listing_gives_each_source_and_directory() {
        let listing = "/dev/disk1s1 on / (apfs, local, journaled)\n\
                       kubedev-web:/ on /Users/dev/my vols (macfuse, nodev, nosuid, synchronous, mounted by dev)\n";
        assert_eq!(
            parse_listing(listing),
            vec![
                ("/dev/disk1s1".to_owned(), PathBuf::from("/")),
                (
                    "kubedev-web:/".to_owned(),
                    PathBuf::from("/Users/dev/my vols")
                ),
            ]
        );
    }

    #[test]
    fn this_process_runs() {
        assert!(process_runs(std::process::id()));
    }
}
