//! The paths to the echo pod, each measured with [`measure::run_all`] from a vantage point:
//! the node itself, or a workstation (one hop from the API server, or at a distance).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::TOKEN;
use crate::measure::{self, Results, Sizes, Target};
use crate::processes::agent_pid;

/// The echo pod every path reaches: its bulk port (9100), TCP echo port (7000) and UDP echo
/// port (9000).
#[derive(Debug, Clone)]
pub(crate) struct EchoPod {
    pub(crate) name: String,
    pub(crate) ip: String,
    /// Its IPv6 address, on a dual-stack cluster.
    pub(crate) ipv6: Option<String>,
}

impl EchoPod {
    pub(crate) async fn find(ns: &TestNamespace) -> anyhow::Result<Self> {
        let pod = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("app=echo"))
            .await?
            .items
            .remove(0);
        let status = pod.status.unwrap_or_default();
        let all = status.pod_ips.unwrap_or_default().into_iter();
        Ok(Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: status.pod_ip.unwrap_or_default(),
            ipv6: all.map(|ip| ip.ip).find(|ip| ip.contains(':')),
        })
    }

    pub(crate) fn bulk(&self) -> SocketAddr {
        format!("{}:9100", self.ip).parse().expect("address")
    }

    pub(crate) fn echo(&self) -> SocketAddr {
        format!("{}:7000", self.ip).parse().expect("address")
    }

    /// Its ports at its IP address.
    fn target(&self) -> Target {
        Target {
            bulk: self.bulk(),
            echo: self.echo(),
            udp: Some(format!("{}:9000", self.ip).parse().expect("address")),
        }
    }

    /// Its ports at its IPv6 address, if it has one.
    fn target_over_ipv6(&self) -> Option<Target> {
        let ip: std::net::Ipv6Addr = self.ipv6.as_ref()?.parse().ok()?;
        let at = |port| SocketAddr::from((ip, port));
        Some(Target {
            bulk: at(9100),
            echo: at(7000),
            udp: Some(at(9000)),
        })
    }
}

/// Where the measuring client (and kubectl) runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Vantage<'a> {
    Node,
    Workstation(&'a Workstation),
}

impl Vantage<'_> {
    /// Measures `target` from here, charging `busy` processes the CPU time; the
    /// measurements block, so the runtime's other tasks move to other threads meanwhile.
    fn measure(self, target: Target, sizes: Sizes, busy: Vec<u32>) -> Results {
        let work = move || measure::run_all(target, sizes, &busy);
        tokio::task::block_in_place(|| match self {
            Self::Node => work(),
            Self::Workstation(workstation) => workstation.inside(work),
        })
    }

    fn command(self, program: &std::path::Path) -> Command {
        match self {
            Self::Node => Command::new(program),
            Self::Workstation(workstation) => {
                let mut command = workstation.long_lived();
                command.arg(program);
                command
            }
        }
    }
}

/// The node connects to the pod IP.
pub(crate) fn direct(pod: &EchoPod, sizes: Sizes) -> Results {
    Vantage::Node.measure(pod.target(), sizes, Vec::new())
}

/// Local ports forwarded by the cluster's kubectl, run at `vantage`.
pub(crate) fn port_forward(
    cluster: &TestCluster,
    ns: &TestNamespace,
    pod: &EchoPod,
    vantage: Vantage<'_>,
    sizes: Sizes,
) -> anyhow::Result<Results> {
    let forward = PortForward::start(
        cluster,
        ns,
        vantage,
        &format!("pod/{}", pod.name),
        &[9100, 7000],
    )?;
    // kubectl carries no UDP.
    let target = Target {
        bulk: forward.local[0],
        echo: forward.local[1],
        udp: None,
    };
    Ok(vantage.measure(target, sizes, vec![forward.kubectl.id()]))
}

/// `kubectl port-forward` running at a vantage point; ended when dropped.
#[derive(Debug)]
pub(crate) struct PortForward {
    kubectl: Child,
    /// The local address of each port forwarded, in the order asked for.
    pub(crate) local: Vec<SocketAddr>,
}

impl PortForward {
    /// Forwards local ports the kernel picks to `ports` of `resource` (`pod/NAME`,
    /// `svc/NAME`), once kubectl says it listens.
    pub(crate) fn start(
        cluster: &TestCluster,
        ns: &TestNamespace,
        vantage: Vantage<'_>,
        resource: &str,
        ports: &[u16],
    ) -> anyhow::Result<Self> {
        let mut kubectl = vantage
            .command(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.admin_kubeconfig)
            .args(["-n", &ns.name, "port-forward", resource])
            .args(ports.iter().map(|port| format!(":{port}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut forwarded = BufReader::new(kubectl.stdout.take().expect("stdout"));
        let mut forward = Self {
            kubectl,
            local: Vec::new(),
        };
        while forward.local.len() < ports.len() {
            let mut line = String::new();
            if forwarded.read_line(&mut line)? == 0 {
                anyhow::bail!("kubectl port-forward ended before forwarding");
            }
            // "Forwarding from 127.0.0.1:PORT -> 9100"
            if let Some(address) = line
                .split_whitespace()
                .nth(2)
                .filter(|a| a.starts_with("127.0.0.1:"))
            {
                forward.local.push(address.parse::<SocketAddr>()?);
            }
        }
        // kubectl logs every connection on stdout: keep reading it so it never blocks.
        std::thread::spawn(move || forwarded.lines().for_each(drop));
        Ok(forward)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.kubectl.kill();
        let _ = self.kubectl.wait();
    }
}

/// `workstation` connects to the pod IP through tunneld, linked to the one agent `agents`
/// selects.
pub(crate) async fn kubedev(
    cluster: &TestCluster,
    ns: &TestNamespace,
    agents: &str,
    workstation: &mut Workstation,
    pod: &EchoPod,
    sizes: Sizes,
) -> anyhow::Result<Results> {
    workstation
        .start_tunneld(cluster, &ns.name, agents, TOKEN)
        .await;
    let busy = kubedev_processes(ns, agents, workstation).await?;
    Ok(Vantage::Workstation(workstation).measure(pod.target(), sizes, busy))
}

/// [`kubedev`] again, through the tunneld it started, to the pod's IPv6 address; none
/// where the pod has no IPv6.
pub(crate) async fn kubedev_over_ipv6(
    ns: &TestNamespace,
    agents: &str,
    workstation: &Workstation,
    pod: &EchoPod,
    sizes: Sizes,
) -> anyhow::Result<Option<Results>> {
    let Some(target) = pod.target_over_ipv6() else {
        return Ok(None);
    };
    let busy = kubedev_processes(ns, agents, workstation).await?;
    Ok(Some(
        Vantage::Workstation(workstation).measure(target, sizes, busy),
    ))
}

/// The processes the kubedev path charges CPU time to: tunneld and the agent.
async fn kubedev_processes(
    ns: &TestNamespace,
    agents: &str,
    workstation: &Workstation,
) -> anyhow::Result<Vec<u32>> {
    Ok(vec![
        workstation.tunneld_pid(),
        agent_pid(ns, agents, "agent").await?,
    ])
}
