//! The tunnel over distance: a workstation whose round trips to the API server take RTT
//! longer (a delay line), kubectl port-forward and kubedev over the same wire, in the
//! same run.

use std::time::Duration;

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::intercepted::{self, Intercepted};
use crate::measure::{Results, Sizes};
use crate::mounts::{self, MountTimes};
use crate::paths::{self, EchoPod, Vantage};
use crate::user_clients::{self, CurlTimes};

/// One round-trip time's figures.
#[derive(Debug, Clone)]
pub(crate) struct AtDistance {
    pub(crate) rtt: Duration,
    pub(crate) port_forward: Results,
    pub(crate) kubedev: Results,
    /// curl through each path, to the echo Service by name.
    pub(crate) curl: CurlTimes,
    /// A client pod's transfers with the workstation through `kubectl intercept`.
    pub(crate) intercepted: Intercepted,
    /// The volumes mounted on the workstation.
    pub(crate) mount: MountTimes,
}

/// The round-trip times measured (`BENCH_RTTS_MS`, default "0,20,50").
pub(crate) fn rtts_from_env() -> Vec<Duration> {
    std::env::var("BENCH_RTTS_MS")
        .unwrap_or_else(|_| "0,20,50".into())
        .split(',')
        .filter_map(|ms| ms.trim().parse().ok())
        .map(Duration::from_millis)
        .collect()
}

/// Measures both paths, intercepted transfers with the pod `client` and the mounted
/// volumes at every RTT in `rtts`, each in a workstation of its own.
pub(crate) async fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    pod: &EchoPod,
    client: &str,
    rtts: &[Duration],
    sizes: Sizes,
) -> anyhow::Result<Vec<AtDistance>> {
    let mut measured = Vec::new();
    for &rtt in rtts {
        eprintln!("bench: at {} ms RTT", rtt.as_millis());
        let mut workstation = Workstation::create_at_distance(cluster, rtt);
        let port_forward =
            paths::port_forward(cluster, ns, pod, Vantage::Workstation(&workstation), sizes)?;
        let kubedev = paths::kubedev(
            cluster,
            ns,
            "app=kubedev-agent",
            &mut workstation,
            pod,
            sizes,
        )
        .await?;
        let curl = tokio::task::block_in_place(|| {
            user_clients::measure(cluster, ns, &workstation, sizes.bulk_bytes)
        })?;
        let intercepted =
            intercepted::measure(cluster, ns, &workstation, client, sizes.bulk_bytes).await?;
        let mount = tokio::task::block_in_place(|| mounts::measure(cluster, ns, &workstation))?;
        measured.push(AtDistance {
            rtt,
            port_forward,
            kubedev,
            curl,
            intercepted,
            mount,
        });
    }
    Ok(measured)
}
