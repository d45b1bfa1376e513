//! Running `-- CMD` with tunneld's DNS where the machine's resolver was left as it is (a
//! node whose kubelet hands that file to its pods): the command gets a mount namespace of
//! its own in which /etc/resolv.conf is tunneld's file. Nothing else on the machine sees
//! it, and it ends with the command.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where the kernel has the network namespaces of the node's pods mounted.
const NETNS_DIR: &str = "/run/netns";

/// Spawns `command` seeing `resolv_conf` as /etc/resolv.conf. Needs root (or
/// CAP_SYS_ADMIN); the caller's own view never changes.
pub(super) fn spawn(
    command: &mut tokio::process::Command,
    resolv_conf: &Path,
) -> Result<tokio::process::Child, std::io::Error> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        // The namespace is this thread's alone (with CLONE_FS, its own root and working
        // directory too), and the child inherits it.
        scope
            .spawn(|| {
                let _runtime = runtime.enter();
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)?;
                // Private first: nothing mounted here may propagate back to the machine.
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                unpin_pod_namespaces();
                mount(
                    Some(resolv_conf),
                    "/etc/resolv.conf",
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                command.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// Drops this namespace's copies of the pods' network namespace mounts: a copy that lives
/// as long as the command would keep the container runtime from removing a pod's.
fn unpin_pod_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let _ = umount2(&entry.path(), MntFlags::MNT_DETACH);
    }
}
