//! The trampoline: this plugin started again with [`TRAMPOLINE_ARG`] and the user's
//! command, single-threaded (a process with threads cannot make a user namespace). It
//! makes a user, network and mount namespace of its own, unprivileged; maps the user's
//! own uid and gid to themselves in it; brings up `lo` and a TUN device that everything is
//! routed into; hands the device and the namespaces to the plugin (on its standard input,
//! a Unix socket), which has tunneld serve them; gives the command tunneld's resolver file
//! as /etc/resolv.conf; and becomes the command. Its capabilities in the namespaces end
//! there: a non-root user's exec drops them.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use anyhow::Context as _;
use kubedev::fd_passing;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid};

use super::{MAX_MESSAGE, Report, interfaces};

/// The first argument that makes a plugin the trampoline; the command follows it.
const TRAMPOLINE_ARG: &str = "__command-netns";

/// Where the resolver file is made, on a filesystem only this namespace sees, before it
/// is bound over /etc/resolv.conf.
const SCRATCH: &str = "/tmp";

/// Runs the trampoline if this process was started as one (before anything starts a
/// thread); its exit status is the command's, once it became the command.
pub fn trampoline_if_asked() -> Option<ExitCode> {
    let command = command_in(std::env::args_os().skip(1))?;
    Some(trampoline(&command))
}

/// The arguments that start the trampoline for `program` with `arguments`.
pub(super) fn arguments(program: &str, arguments: &[String]) -> Vec<OsString> {
    let mut all = vec![OsString::from(TRAMPOLINE_ARG), OsString::from(program)];
    all.extend(arguments.iter().map(OsString::from));
    all
}

/// The command a trampoline is to become, if `args` (without the program's name) start
/// one.
fn command_in(mut args: impl Iterator<Item = OsString>) -> Option<Vec<OsString>> {
    if args.next().is_none_or(|arg| arg != TRAMPOLINE_ARG) {
        return None;
    }
    Some(args.collect())
}

fn trampoline(command: &[OsString]) -> ExitCode {
    // The plugin, until the command starts (then close-on-exec closes it: the plugin's
    // sign that it started).
    let Ok(plugin) = nix::unistd::dup(std::io::stdin()) else {
        return ExitCode::FAILURE;
    };
    if fcntl(&plugin, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_err() {
        return ExitCode::FAILURE;
    }
    let files = match make_namespace() {
        Ok(files) => files,
        Err(err) => {
            let reason = format!("{err:#}");
            let _ = report(&plugin, &Report::Unavailable { reason }, &[]);
            return ExitCode::SUCCESS;
        }
    };
    if report(&plugin, &Report::Prepared, &files.as_sent()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(files);
    let mut message = vec![0u8; MAX_MESSAGE];
    let (len, stdin) = match fd_passing::receive(&plugin, &mut message) {
        // Nothing: the plugin gave up on the namespace, and runs the command itself.
        Ok((0, _)) | Err(_) => return ExitCode::SUCCESS,
        Ok(received) => received,
    };
    if let Err(err) = show_resolver(&message[..len]) {
        eprintln!("note: the command runs without the cluster's names: {err:#}");
    }
    let err = become_command(command, stdin);
    let reason = err.to_string();
    let _ = report(&plugin, &Report::NotStarted { reason }, &[]);
    ExitCode::from(127)
}

/// What tunneld needs of the namespace: see [`kubedev::control::NamespaceFiles`].
struct Namespace {
    tun: tun::Device,
    user: File,
    network: File,
}

impl Namespace {
    fn as_sent(&self) -> [RawFd; 3] {
        [
            self.tun.as_raw_fd(),
            self.user.as_raw_fd(),
            self.network.as_raw_fd(),
        ]
    }
}

/// Makes the namespaces, with `lo` and a TUN device up, and opens what tunneld needs.
fn make_namespace() -> anyhow::Result<Namespace> {
    let (uid, gid) = (Uid::current(), Gid::current());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|err| {
            anyhow::anyhow!(
                "this machine does not let users make a user namespace ({err}){}",
                apparmor_hint()
            )
        })?;
    map_own_ids(uid, gid)?;
    let tun = interfaces::set_up().map_err(|err| anyhow::anyhow!("{err:#}{}", apparmor_hint()))?;
    let open = |path: &str| File::open(path).with_context(|| format!("open {path}"));
    Ok(Namespace {
        tun,
        user: open("/proc/self/ns/user")?,
        network: open("/proc/self/ns/net")?,
    })
}

/// Maps the user's own uid and gid to themselves, so the command runs as the user it
/// is (`id -u` says so); with no other id mapped, `setgroups` must be denied first.
fn map_own_ids(uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let write = |file: &str, content: String| {
        std::fs::write(file, content).with_context(|| format!("write {file}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", id_map(uid.as_raw()))?;
    write("/proc/self/gid_map", id_map(gid.as_raw()))
}

/// One id, mapped to itself.
fn id_map(id: u32) -> String {
    format!("{id} {id} 1\n")
}

/// Says so where Ubuntu's AppArmor restriction on unprivileged user namespaces applies.
fn apparmor_hint() -> &'static str {
    let restricted =
        std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    match restricted.as_deref().map(str::trim) {
        Ok("1") => {
            " (AppArmor restricts unprivileged user namespaces here: kernel.apparmor_restrict_unprivileged_userns=1)"
        }
        _ => "",
    }
}

/// Gives this namespace `content` as /etc/resolv.conf; nothing outside it sees a change.
fn show_resolver(content: &[u8]) -> anyhow::Result<()> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context("make the mounts private")?;
    mount(
        Some("tmpfs"),
        SCRATCH,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k,mode=0700"),
    )
    .context("mount a scratch filesystem")?;
    let file = format!("{SCRATCH}/resolv.conf");
    let bound = std::fs::write(&file, content)
        .with_context(|| format!("write {file}"))
        .and_then(|()| {
            mount(
                Some(file.as_str()),
                "/etc/resolv.conf",
                none,
                MsFlags::MS_BIND,
                none,
            )
            .context("bind the resolver file over /etc/resolv.conf")
        });
    // The bound file stays; the scratch filesystem leaves /tmp as it was.
    umount2(SCRATCH, MntFlags::MNT_DETACH).context("unmount the scratch filesystem")?;
    bound
}

/// Execs the command with `stdin` (the plugin's, passed along) as its standard input;
/// returns only if that failed.
fn become_command(command: &[OsString], stdin: Vec<OwnedFd>) -> std::io::Error {
    let Some((program, arguments)) = command.split_first() else {
        return std::io::Error::other("no command");
    };
    let stdin = match stdin.into_iter().next() {
        Some(stdin) => stdin,
        None => match File::open("/dev/null") {
            Ok(null) => null.into(),
            Err(err) => return err,
        },
    };
    if let Err(err) = nix::unistd::dup2_stdin(stdin.as_fd()) {
        return err.into();
    }
    std::process::Command::new(program).args(arguments).exec()
}

/// Sends the plugin `report`, with `files`.
fn report(plugin: &OwnedFd, report: &Report, files: &[RawFd]) -> std::io::Result<()> {
    let message = serde_json::to_vec(report)?;
    fd_passing::send(plugin, &message, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_reaches_the_trampoline_as_it_was_given() {
        let given: Vec<String> = ["-c", "id -u; echo \"$HOME\"", "--", TRAMPOLINE_ARG, ""]
            .map(String::from)
            .to_vec();
        let command = command_in(arguments("sh", &given).into_iter()).expect("a trampoline");
        let mut expected = vec![OsString::from("sh")];
        expected.extend(given.iter().map(OsString::from));
        assert_eq!(command, expected);
    }

    #[test]
    fn only_its_own_first_argument_starts_a_trampoline() {
        for args in [&[][..], &["web", TRAMPOLINE_ARG][..], &["__complete"][..]] {
            assert_eq!(
                command_in(args.iter().map(OsString::from)),
                None,
                "{args:?}"
            );
        }
    }

    #[test]
    fn ids_map_to_themselves() {
        assert_eq!(id_map(1000), "1000 1000 1\n");
    }
}
