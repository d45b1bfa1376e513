//! The processes that carry a path, read from /proc on this machine (the node runs the
//! pods' processes too): their CPU time and memory, and which process is a pod's agent.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tests_e2e::TestNamespace;

/// The process id of the agent in container `container` of the one pod `labels` selects.
pub(crate) async fn agent_pid(
    ns: &TestNamespace,
    labels: &str,
    container: &str,
) -> anyhow::Result<u32> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(labels))
        .await?;
    let [pod] = pods.items.as_slice() else {
        anyhow::bail!("{} pods match {labels}, not one", pods.items.len());
    };
    let container_id = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|containers| containers.iter().find(|c| c.name == container))
        .and_then(|agent| agent.container_id.as_deref())
        .and_then(|id| id.rsplit("://").next())
        .ok_or_else(|| anyhow::anyhow!("no running agent container in {labels}"))?
        .to_owned();
    // Each container's processes are in a cgroup named after its id.
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if comm.trim() == "kubedev-agent" && cgroup.contains(&container_id) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no kubedev-agent process in container {container_id}")
}

/// The CPU time (user and system) `pids` have used so far, in seconds.
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    // /proc/PID/stat counts in USER_HZ ticks, 100 a second on Linux.
    const TICKS_PER_S: f64 = 100.0;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_else(|err| panic!("CPU time of process {pid}: {err}"));
            // utime and stime are the 12th and 13th fields after the command name, which
            // is in parentheses and may hold spaces.
            let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks: u64 = fields[11].parse::<u64>().expect("utime")
                + fields[12].parse::<u64>().expect("stime");
            ticks as f64 / TICKS_PER_S
        })
        .sum()
}

/// The file descriptors `pid` holds.
pub(crate) fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.count() as u64)
        .unwrap_or_else(|err| panic!("descriptors of process {pid}: {err}"))
}

/// The resident memory of `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
