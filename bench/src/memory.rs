//! The agent's resident memory: idle with one session, and with 1000 open flows.

use std::time::Duration;

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::TOKEN;
use crate::measure;
use crate::paths::EchoPod;
use crate::processes::{agent_pid, rss_kib};

/// How many TCP flows the busy figure holds open.
const FLOWS: usize = 1000;

/// The agent's RSS in KiB, idle and busy.
#[derive(Debug, Clone)]
pub(crate) struct AgentMemory {
    pub(crate) idle_kib: u64,
    /// The flows that were open for the busy figure.
    pub(crate) flows: usize,
    pub(crate) busy_kib: u64,
}

/// Measured on a fresh agent: one that has just moved gigabytes keeps what its allocator
/// kept from that, which is not what an agent needs.
pub(crate) async fn agent_memory(
    cluster: &TestCluster,
    ns: &TestNamespace,
    pod: &EchoPod,
) -> anyhow::Result<AgentMemory> {
    ns.deploy_agents("kubedev-agent-fresh", 1, TOKEN).await?;
    let mut workstation = Workstation::create(cluster);
    workstation
        .start_tunneld(cluster, &ns.name, "app=kubedev-agent-fresh", TOKEN)
        .await;
    let agent_pid = agent_pid(ns, "app=kubedev-agent-fresh", "agent").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = rss_kib(agent_pid);
    let echo = pod.echo();
    let (flows, busy_kib) = tokio::task::spawn_blocking(move || {
        workstation.inside(move || {
            let flows = measure::open_flows(echo, FLOWS);
            std::thread::sleep(Duration::from_secs(1));
            (flows.len(), rss_kib(agent_pid))
        })
    })
    .await?;
    Ok(AgentMemory {
        idle_kib,
        flows,
        busy_kib,
    })
}
