//! The strict source check on a helper's device, whatever the machine's settings say. The
//! kernel checks an IPv4 packet's source with the looser of `net.ipv4.conf.all.rp_filter`
//! and the device's own, and both can change under the helper: systemd sets `all` to 2
//! (loose) on many distributions, and its udev rule applies `net.ipv4.conf.*.rp_filter` to
//! every new device. Loose, a device's user could write packets whose source any of the
//! machine's routes reaches, and its sockets would take them as from that source. So a rule
//! of iptables' `rpfilter` match (strict) drops whatever comes in on the device from a
//! source not routed back into it, for as long as the device lives.

/// The strict source check on one device: a rule of the helper's, deleted when this is
/// dropped.
#[derive(Debug)]
pub(super) struct StrictSourceCheck {
    device: String,
}

impl StrictSourceCheck {
    /// Makes the source check on `device` strict; fails where it cannot, so that no device
    /// is handed out without it.
    pub(super) fn enforce(device: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        iptables(&rule("-I", device)).with_context(|| {
            format!(
                "the strict source check for {device} could not be added with iptables (the \
                 helper hands out no device without it): install iptables, with its rpfilter \
                 match (xt_rpfilter)"
            )
        })?;
        Ok(Self {
            device: device.to_owned(),
        })
    }
}

impl Drop for StrictSourceCheck {
    fn drop(&mut self) {
        if let Err(err) = iptables(&rule("-D", &self.device)) {
            tracing::warn!("deleting the source check of {}: {err:#}", self.device);
        }
    }
}

/// The rule, as iptables' arguments, with `operation` (`-I` to add it, `-D` to delete it);
/// iptables waits at most 5 s for the lock that root's other firewall tools may hold.
fn rule(operation: &str, device: &str) -> Vec<String> {
    let words = [
        "-w",
        "5",
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
            "-w 5 -t raw -I PREROUTING -i kubedev-tun3 -m rpfilter --invert -m comment \
             --comment kubedev network helper -j DROP"
        );
    }
}
