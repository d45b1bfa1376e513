//! The cluster's network on the workstation: a TUN device with routes for the cluster's
//! pod and service ranges (where the machine has no route of its own for them), a
//! userspace TCP/IP stack on it (smoltcp), and every flow it accepts carried through an
//! agent; DNS for the cluster's names answered at [`DNS_IP`].

//!
//! Only the DNS answerer is used on every system (by the proxy); the device, routes and
//! resolver settings are Linux's.

#[cfg(target_os = "linux")]
mod device;
pub(crate) mod dns;
#[cfg(target_os = "linux")]
pub(crate) mod kubelet;
#[cfg(target_os = "linux")]
pub(crate) mod machine_routes;
#[cfg(target_os = "linux")]
pub(crate) mod pointing;
#[cfg(target_os = "linux")]
pub(crate) mod resolv_conf;
#[cfg(target_os = "linux")]
pub(crate) mod route_plan;
#[cfg(target_os = "linux")]
pub(crate) mod systemd_resolved;
#[cfg(target_os = "linux")]
pub(crate) mod tun_routes;
#[cfg(target_os = "linux")]
mod udp;

use std::net::Ipv4Addr;

#[cfg(target_os = "linux")]
pub(crate) use device::{Network, Routed, create_machine_device};

/// Where the workstation's resolver sends queries (routed into the TUN, answered by tunneld).
pub(crate) const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);

/// Runs root's `program` (as `what`, for the error) with `args`; its error output says why
/// it failed. PATH is root's own where this runs as root (its own environment or the
/// helper's), never a user's.
pub(crate) fn run_tool(program: &str, what: &str, args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
