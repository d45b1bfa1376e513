//! The three paths to the echo pod, each measured with [`measure::run_all`].

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kubedev_e2e::workstation::Workstation;
use kubedev_e2e::{TestCluster, TestNamespace};

use crate::TOKEN;
use crate::measure::{self, Results, Sizes};

/// The echo pod every path reaches: its bulk port (9100) and TCP echo port (7000).
#[derive(Debug, Clone)]
pub(crate) struct EchoPod {
    pub(crate) name: String,
    pub(crate) ip: String,
}

impl EchoPod {
    pub(crate) async fn find(ns: &TestNamespace) -> anyhow::Result<Self> {
        let pod = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("app=echo"))
            .await?
            .items
            .remove(0);
        Ok(Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: pod.status.and_then(|s| s.pod_ip).unwrap_or_default(),
        })
    }

    pub(crate) fn bulk(&self) -> SocketAddr {
        format!("{}:9100", self.ip).parse().expect("address")
    }

    pub(crate) fn echo(&self) -> SocketAddr {
        format!("{}:7000", self.ip).parse().expect("address")
    }
}

/// The node connects to the pod IP.
pub(crate) async fn direct(pod: &EchoPod, sizes: Sizes) -> anyhow::Result<Results> {
    let (bulk, echo) = (pod.bulk(), pod.echo());
    Ok(tokio::task::spawn_blocking(move || measure::run_all(bulk, echo, sizes)).await?)
}

/// Local ports forwarded by the cluster's kubectl.
pub(crate) async fn port_forward(
    cluster: &TestCluster,
    ns: &TestNamespace,
    pod: &EchoPod,
    sizes: Sizes,
) -> anyhow::Result<Results> {
    let mut kubectl = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args(["-n", &ns.name, "port-forward"])
        .arg(format!("pod/{}", pod.name))
        .args([":9100", ":7000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut forwarded = BufReader::new(kubectl.stdout.take().expect("stdout"));
    let mut local = Vec::new();
    while local.len() < 2 {
        let mut line = String::new();
        forwarded.read_line(&mut line)?;
        // "Forwarding from 127.0.0.1:PORT -> 9100"
        if let Some(address) = line
            .split_whitespace()
            .nth(2)
            .filter(|a| a.starts_with("127.0.0.1:"))
        {
            local.push(address.parse::<SocketAddr>()?);
        }
    }
    // kubectl logs every connection on stdout: keep reading it so it never blocks.
    std::thread::spawn(move || forwarded.lines().for_each(drop));
    let (bulk, echo) = (local[0], local[1]);
    let results = tokio::task::spawn_blocking(move || measure::run_all(bulk, echo, sizes)).await?;
    kubectl.kill()?;
    let _ = kubectl.wait();
    Ok(results)
}

/// A workstation namespace connects to the pod IP through tunneld, linked to the agents
/// `agents` selects.
pub(crate) async fn kubedev(
    cluster: &TestCluster,
    ns: &TestNamespace,
    agents: &str,
    pod: &EchoPod,
    sizes: Sizes,
) -> anyhow::Result<Results> {
    let mut workstation = Workstation::create(cluster);
    workstation
        .start_tunneld(cluster, &ns.name, agents, TOKEN)
        .await;
    let (bulk, echo) = (pod.bulk(), pod.echo());
    Ok(tokio::task::spawn_blocking(move || {
        workstation.inside(move || measure::run_all(bulk, echo, sizes))
    })
    .await?)
}
