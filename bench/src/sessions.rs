//! `kubectl intercept` on the echo Deployment, as a developer meets it: from the command to
//! the first request from a pod answered by the workstation, and from `leave` to restored
//! pods ready (the command returns then).

use std::time::{Duration, Instant};

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// Sessions started and ended.
pub(crate) const RUNS: usize = 3;

/// How long each run took, sorted.
#[derive(Debug, Clone)]
pub(crate) struct SessionTimes {
    pub(crate) started: Vec<Duration>,
    pub(crate) restored: Vec<Duration>,
}

/// Starts and ends `RUNS` sessions, each first answered for a request from pod `client`.
pub(crate) async fn time_sessions(
    cluster: &TestCluster,
    ns: &TestNamespace,
    client: &str,
) -> anyhow::Result<SessionTimes> {
    let workstation = Workstation::create(cluster);
    let _server = workstation.serve_http(3000, "workstation");
    let plugin = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(cluster, "kubectl-intercept", &all);
    };
    let mut started = Vec::new();
    let mut restored = Vec::new();
    for _ in 0..RUNS {
        let t0 = Instant::now();
        plugin(&["echo", "--port", "3000:http", "--detach"]);
        while !ns
            .http_get(client, "echo:8080", "/timing")
            .is_ok_and(|answer| answer.starts_with("local workstation"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.push(t0.elapsed());
        let t1 = Instant::now();
        plugin(&["leave", "echo"]);
        restored.push(t1.elapsed());
    }
    started.sort();
    restored.sort();
    Ok(SessionTimes { started, restored })
}
