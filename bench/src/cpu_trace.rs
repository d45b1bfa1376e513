//! Where the machine's CPU goes while one transfer runs: each process on the path (every
//! part of the cluster runs on this machine), and the rest (the client, the kernel's
//! network work, the cluster's other processes), read from /proc.

/// The processes a transfer through either path passes, by command name.
pub(crate) const TRACED: [&str; 7] = [
    "kube-apiserver",
    "kubelet",
    "containerd",
    "kubectl",
    "tunneld",
    "kubedev-agent",
    "echo-server",
];

/// /proc counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds used by each of [`TRACED`] (in that order) and by the whole machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuUse {
    pub(crate) by_process: [f64; TRACED.len()],
    pub(crate) machine: f64,
}

impl CpuUse {
    /// What has been used so far.
    pub(crate) fn now() -> Self {
        let mut by_process = [0.0; TRACED.len()];
        for (name, seconds) in processes() {
            if let Some(at) = TRACED.iter().position(|traced| *traced == name) {
                by_process[at] += seconds;
            }
        }
        Self {
            by_process,
            machine: machine_busy_seconds(),
        }
    }

    /// What was used since `before`, per GiB of `bytes` moved.
    pub(crate) fn per_gib_since(&self, before: &Self, bytes: u64) -> Self {
        let gib = bytes as f64 / f64::from(1u32 << 30);
        let mut by_process = [0.0; TRACED.len()];
        for (at, seconds) in by_process.iter_mut().enumerate() {
            *seconds = (self.by_process[at] - before.by_process[at]).max(0.0) / gib;
        }
        Self {
            by_process,
            machine: (self.machine - before.machine) / gib,
        }
    }

    /// The machine's CPU not charged to a traced process.
    pub(crate) fn rest(&self) -> f64 {
        (self.machine - self.by_process.iter().sum::<f64>()).max(0.0)
    }
}

/// Every process's command name and CPU seconds; processes that end meanwhile are left out.
fn processes() -> Vec<(String, f64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (name, fields) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let fields: Vec<&str> = fields.split_whitespace().collect();
            // utime and stime: the 12th and 13th fields after the name.
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((name.to_owned(), ticks as f64 / TICKS_PER_S))
        })
        .collect()
}

/// The CPU seconds all cores have spent busy (not idle or waiting for disk) since boot.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
    else {
        return 0.0;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(at, _)| *at != 3 && *at != 4)
        .map(|(_, n)| n)
        .sum();
    busy as f64 / TICKS_PER_S
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_machine_are_seen_using_cpu() {
        let before = CpuUse::now();
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(300) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let used = CpuUse::now().per_gib_since(&before, 1 << 30);
        assert!(used.machine >= 0.1, "the machine was busy: {used:?}");
        assert!(used.rest() <= used.machine);
    }
}
