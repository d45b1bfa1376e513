//! The strict source check on a helper's device, whatever the machine's own setting. The
//! kernel checks an IPv4 packet's source with the looser of `net.ipv4.conf.all.rp_filter`
//! and the device's own: where `all` is 2 (loose, as systemd sets it on many
//! distributions), a device's user could write packets whose source any of the machine's
//! routes reaches, and its sockets would take them as from that source. There, a rule of
//! iptables' `rpfilter` match (strict) drops whatever comes in on the device from a source
//! not routed back into it, for as long as the device lives.

use anyhow::Context as _;

/// The machine-wide reverse-path setting.
const ALL_RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";
/// The value that makes every device's check loose.
const LOOSE: &str = "2";

/// The strict source check on one device: a rule of the helper's where the kernel's own
/// check is loose, deleted when this is dropped.
#[derive(Debug)]
pub(super) struct StrictSourceCheck {
    /// The device whose rule was added, if one was.
    ruled: Option<String>,
}

impl StrictSourceCheck {
    /// Makes the source check on `device` strict; fails where it cannot, so that no loose
    /// device is handed out.
    pub(super) fn enforce(device: &str) -> anyhow::Result<Self> {
        let all = std::fs::read_to_string(ALL_RP_FILTER).unwrap_or_default();
        if all.trim() != LOOSE {
            // The device's own strict setting holds.
            return Ok(Self { ruled: None });
        }
        iptables(&rule("-I", device)).with_context(|| {
            format!(
                "net.ipv4.conf.all.rp_filter is 2, which makes every device's source check \
                 loose, and the strict check for {device} could not be added with iptables; \
                 set net.ipv4.conf.all.rp_filter to 1, or install iptables"
            )
        })?;
        Ok(Self {
            ruled: Some(device.to_owned()),
        })
    }
}

impl Drop for StrictSourceCheck {
    fn drop(&mut self) {
        if let Some(device) = &self.ruled
            && let Err(err) = iptables(&rule("-D", device))
        {
            tracing::warn!("deleting the source check of {device}: {err:#}");
        }
    }
}

/// The rule, as iptables' arguments, with `operation` (`-I` to add it, `-D` to delete it).
fn rule(operation: &str, device: &str) -> Vec<String> {
    let words = [
        "-w",
        "-t",
        "raw",
        operation,
        "PREROUTING",
        "-i",
        device,
        "-m",
        "rpfilter",
        "--invert",
        "-m",
        "comment",
        "--comment",
        "kubedev network helper",
        "-j",
        "DROP",
    ];
    words.iter().map(|word| (*word).to_owned()).collect()
}

fn iptables(args: &[String]) -> anyhow::Result<()> {
    crate::network::run_tool("iptables", "iptables", args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_drops_what_the_strict_check_would_on_that_device_only() {
        assert_eq!(
            rule("-I", "kubedev-tun3").join(" "),
            "-w -t raw -I PREROUTING -i kubedev-tun3 -m rpfilter --invert -m comment \
             --comment kubedev network helper -j DROP"
        );
    }
}
