//! Pointing the workstation's resolver at tunneld where systemd-resolved is not running:
//! /etc/resolv.conf gets tunneld's DNS address and the cluster's search domains, and gets
//! its original content back when tunneld exits. The original is also kept in tunneld's
//! state directory, so a run after a crash restores it first. Where the machine's resolver
//! must stay as it is, the same content goes to a file of tunneld's own instead, for
//! commands given their own view of /etc/resolv.conf. The state directory and its files
//! are tunneld's own (see [`private_files`]): a saved original planted by someone else is
//! never written back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kubedev::private_files;

const MARKER: &str = "# kubedev tunneld: the original is restored when tunneld exits";

/// The installed configuration; dropping it restores the original file.
#[derive(Debug)]
pub(crate) struct ResolvConf {
    path: PathBuf,
    backup: PathBuf,
    original: String,
    /// What was written: the original goes back only over this, never over a later change.
    written: String,
}

impl ResolvConf {
    /// Installs tunneld as the resolver at `path`; returns the guard and the nameserver
    /// that was configured before (where non-cluster names are forwarded).
    pub(crate) fn install(
        path: &Path,
        state_dir: &Path,
        dns: Ipv4Addr,
        search: &[String],
    ) -> anyhow::Result<(Self, Option<SocketAddr>)> {
        let backup = restore_left_behind(path, state_dir)?;
        let original =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        private_files::write_own(&backup, &original)?;
        let written = rewritten(&original, dns, search);
        write_in_place(path, &written)?;
        let upstream = upstream_of(&original);
        Ok((
            Self {
                path: path.to_owned(),
                backup,
                original,
                written,
            },
            upstream,
        ))
    }
}

/// Puts back the original of `path` that a run which crashed left in `state_dir`, if any;
/// returns where the original is kept.
pub(crate) fn restore_left_behind(path: &Path, state_dir: &Path) -> anyhow::Result<PathBuf> {
    private_files::private_dir(state_dir).context("tunneld's state directory")?;
    let backup = state_dir.join("resolv.conf.original");
    // Written back into the machine's resolver: only if tunneld itself saved it.
    let left_behind = private_files::read_own(&backup)
        .context("the resolver configuration an earlier run saved")?;
    if let Some(left_behind) = left_behind {
        // Changed since by someone else (a DHCP client after a reboot): theirs stays.
        if carries_marker(path) {
            tracing::info!(
                "restoring {} left changed by an earlier run",
                path.display()
            );
            write_in_place(path, &left_behind)?;
        } else {
            tracing::info!(
                "{} was changed since an earlier run pointed it at tunneld: left as it is",
                path.display()
            );
        }
        std::fs::remove_file(&backup).with_context(|| format!("remove {}", backup.display()))?;
    }
    Ok(backup)
}

/// Whether `path` points at a tunneld now (this one's, or another's).
pub(crate) fn carries_marker(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|conf| conf.lines().any(|line| line == MARKER))
}

impl ResolvConf {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// A resolver file pointing at tunneld, beside the machine's untouched one; removed when
/// dropped.
#[derive(Debug)]
pub(crate) struct CommandResolvConf {
    path: PathBuf,
}

impl CommandResolvConf {
    /// Writes what [`ResolvConf::install`] would make of `system` into `state_dir`;
    /// returns it and the nameserver `system` names (where other names are forwarded).
    pub(crate) fn write(
        system: &Path,
        state_dir: &Path,
        dns: Ipv4Addr,
        search: &[String],
    ) -> anyhow::Result<(Self, Option<SocketAddr>)> {
        let (content, upstream) = for_commands(system, dns, search)?;
        private_files::private_dir(state_dir).context("tunneld's state directory")?;
        let path = state_dir.join("resolv.conf.for-commands");
        private_files::write_own(&path, &content)?;
        Ok((Self { path }, upstream))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CommandResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let now = std::fs::read_to_string(&self.path).unwrap_or_default();
        if now != self.written {
            tracing::warn!(
                "{} was changed since tunneld pointed it at itself: left as it is",
                self.path.display()
            );
            let _ = std::fs::remove_file(&self.backup);
            return;
        }
        match write_in_place(&self.path, &self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.backup);
            }
            Err(err) => tracing::error!(
                "could not restore {}: {err:#}; its original is in {}",
                self.path.display(),
                self.backup.display()
            ),
        }
    }
}

/// What [`ResolvConf::install`] would make of `system`, for a command given a view of its
/// own of /etc/resolv.conf; and the nameserver `system` names (where other names are
/// forwarded).
pub(crate) fn for_commands(
    system: &Path,
    dns: Ipv4Addr,
    search: &[String],
) -> anyhow::Result<(String, Option<SocketAddr>)> {
    let original =
        std::fs::read_to_string(system).with_context(|| format!("read {}", system.display()))?;
    Ok((rewritten(&original, dns, search), upstream_of(&original)))
}

/// Overwrites the file's content without replacing the file: resolv.conf is often a
/// bind mount (containers, `ip netns exec`), which a rename would fail on.
fn write_in_place(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))
}

/// Where `conf` sends queries: its first nameserver, on port 53.
fn upstream_of(conf: &str) -> Option<SocketAddr> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The original with tunneld as the only nameserver and the cluster's search domains
/// first; every other line (options, sortlist) is kept.
fn rewritten(original: &str, dns: Ipv4Addr, search: &[String]) -> String {
    let mut domains: Vec<String> = search.to_vec();
    let mut kept = Vec::new();
    for line in original.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed
            .strip_prefix("search")
            .or_else(|| trimmed.strip_prefix("domain"))
        {
            domains.extend(
                rest.split_whitespace()
                    .map(str::to_owned)
                    .filter(|d| !search.contains(d)),
            );
        } else if !trimmed.starts_with("nameserver") && trimmed != MARKER {
            kept.push(line);
        }
    }
    let mut conf = format!("{MARKER}\nnameserver {dns}\nsearch {}\n", domains.join(" "));
    for line in kept {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "# from DHCP\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0\n";

    #[test]
    fn tunneld_comes_first_and_the_rest_is_kept() {
        let search = vec![
            "shop.svc.cluster.local".to_owned(),
            "svc.cluster.local".to_owned(),
        ];
        let conf = rewritten(ORIGINAL, Ipv4Addr::new(198, 18, 0, 53), &search);
        assert_eq!(
            conf,
            format!(
                "{MARKER}\nnameserver 198.18.0.53\nsearch shop.svc.cluster.local svc.cluster.local corp.example\n\
                 # from DHCP\noptions edns0\n"
            )
        );
        assert_eq!(
            upstream_of(ORIGINAL),
            Some("192.0.2.53:53".parse().expect("address"))
        );
    }

    #[test]
    fn a_file_for_commands_leaves_the_machines_alone() {
        let dir = std::env::temp_dir().join(format!("kubedev-for-commands-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let system = dir.join("resolv.conf");
        std::fs::write(&system, ORIGINAL).expect("write");
        let search = vec!["shop.svc.cluster.local".to_owned()];
        let state = dir.join("state");
        let (file, upstream) =
            CommandResolvConf::write(&system, &state, Ipv4Addr::new(198, 18, 0, 53), &search)
                .expect("write");
        assert_eq!(upstream, Some("192.0.2.53:53".parse().expect("addr")));
        let content = std::fs::read_to_string(file.path()).expect("read");
        assert!(content.contains("nameserver 198.18.0.53\nsearch shop.svc.cluster.local"));
        assert_eq!(std::fs::read_to_string(&system).expect("read"), ORIGINAL);
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commands_own_resolver_file_names_tunneld_and_the_sessions_namespace_first() {
        let dir = std::env::temp_dir().join(format!("kubedev-namespace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let system = dir.join("resolv.conf");
        std::fs::write(&system, ORIGINAL).expect("write");
        let search = crate::network::dns::search_path("cluster.local", "shop");
        let (content, upstream) =
            for_commands(&system, Ipv4Addr::new(198, 18, 0, 53), &search).expect("read");
        assert_eq!(
            content,
            format!(
                "{MARKER}\nnameserver 198.18.0.53\n\
                 search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
                 # from DHCP\noptions edns0\n"
            )
        );
        assert_eq!(upstream, Some("192.0.2.53:53".parse().expect("addr")));
        assert_eq!(std::fs::read_to_string(&system).expect("read"), ORIGINAL);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn install_then_drop_restores_the_file_and_a_crash_is_repaired() {
        let dir = std::env::temp_dir().join(format!("kubedev-resolv-{}", std::process::id()));
        let state = dir.join("state");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, ORIGINAL).expect("write");

        let (guard, upstream) =
            ResolvConf::install(&path, &state, Ipv4Addr::new(198, 18, 0, 53), &[])
                .expect("install");
        assert_eq!(upstream, Some("192.0.2.53:53".parse().expect("addr")));
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains("nameserver 198.18.0.53")
        );
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), ORIGINAL);

        // A run that died without restoring: the next one puts the original back first.
        let (crashed, _) = ResolvConf::install(&path, &state, Ipv4Addr::new(198, 18, 0, 53), &[])
            .expect("install");
        std::mem::forget(crashed);
        let (guard, upstream) =
            ResolvConf::install(&path, &state, Ipv4Addr::new(198, 18, 0, 53), &[])
                .expect("install");
        assert_eq!(
            upstream,
            Some("192.0.2.53:53".parse().expect("addr")),
            "not our own address"
        );
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), ORIGINAL);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_change_made_meanwhile_is_never_overwritten_with_the_original() {
        let dir = std::env::temp_dir().join(format!("kubedev-meanwhile-{}", std::process::id()));
        let state = dir.join("state");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, ORIGINAL).expect("write");
        let dns = Ipv4Addr::new(198, 18, 0, 53);
        let (guard, _) = ResolvConf::install(&path, &state, dns, &[]).expect("install");
        std::fs::write(&path, "nameserver 192.0.2.99\n").expect("a DHCP client");
        drop(guard);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "nameserver 192.0.2.99\n"
        );

        // Nor after a crash: the next run finds the file changed (a reboot's DHCP).
        let (crashed, _) = ResolvConf::install(&path, &state, dns, &[]).expect("install");
        std::mem::forget(crashed);
        std::fs::write(&path, "nameserver 192.0.2.77\n").expect("after a reboot");
        restore_left_behind(&path, &state).expect("restore");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "nameserver 192.0.2.77\n"
        );
        assert!(!state.join("resolv.conf.original").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_saved_original_planted_through_a_link_is_never_written_back() {
        let dir = std::env::temp_dir().join(format!("kubedev-planted-{}", std::process::id()));
        let state = dir.join("state");
        private_files::private_dir(&state).expect("state dir");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, ORIGINAL).expect("write");
        let planted = dir.join("attacker's");
        std::fs::write(&planted, "nameserver 203.0.113.66\n").expect("write");
        std::os::unix::fs::symlink(&planted, state.join("resolv.conf.original")).expect("link");
        let err = ResolvConf::install(&path, &state, Ipv4Addr::new(198, 18, 0, 53), &[])
            .expect_err("refused");
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), ORIGINAL);

        // A state directory others can write to is refused before anything is saved there.
        std::fs::remove_file(state.join("resolv.conf.original")).expect("remove");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ResolvConf::install(&path, &state, Ipv4Addr::new(198, 18, 0, 53), &[])
            .expect_err("refused");
        assert!(
            format!("{err:#}").contains("open to other users"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), ORIGINAL);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
