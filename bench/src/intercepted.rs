//! Intercepted traffic: a client pod moves bytes to and from a server on the workstation
//! through `kubectl intercept`, over the same wire as the tunnel's outbound bulk.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// The echo Deployment intercepted: one of its own, as an intercept replaces its pods.
pub(crate) const TARGET: &str = "echo-intercepted";
/// The workstation's bulk server, where the intercepted echo port goes.
const LOCAL_PORT: &str = "3000";
/// How long the intercept may take to answer before the measurement is given up.
const TAKE_OVER: Duration = Duration::from_secs(60);

/// Throughput of a client pod's transfers with the workstation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intercepted {
    /// The client pod downloads from the workstation.
    pub(crate) download_mib_s: f64,
    /// The client pod uploads to the workstation.
    pub(crate) upload_mib_s: f64,
}

/// The fixture's echo server, built with the benchmarks (`make bench`).
fn echo_server() -> PathBuf {
    let dir = std::env::var_os("KUBEDEV_BIN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
        PathBuf::from,
    );
    dir.join("echo-server")
}

/// Kills the local server when the measurement ends, however it ends.
struct LocalServer(Child);

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Intercepts [`TARGET`]'s TCP echo port to a bulk server on `workstation`, moves
/// `bytes` each way from the pod `client`, and leaves.
pub(crate) async fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    workstation: &Workstation,
    client: &str,
    bytes: u64,
) -> anyhow::Result<Intercepted> {
    let _server = LocalServer(
        workstation
            .long_lived()
            .arg(echo_server())
            .args(["--bulk", LOCAL_PORT])
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let plugin = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(cluster, "kubectl-intercept", &all);
    };
    plugin(&[
        TARGET,
        "--port",
        &format!("{LOCAL_PORT}:tcp-echo"),
        "--detach",
    ]);
    let target = format!("{TARGET}:7000");
    let transfer = |mode: &str, bytes: u64| -> anyhow::Result<f64> {
        let seconds: f64 = ns
            .exec(client, &["probe", mode, &target, &bytes.to_string()])?
            .trim()
            .parse()?;
        Ok(bytes as f64 / f64::from(1 << 20) / seconds)
    };
    // Until the workstation answers, the app's echo answers: a 1-byte fetch then fails.
    let deadline = Instant::now() + TAKE_OVER;
    while transfer("get", 1).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the intercept never took the port"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let measured = Intercepted {
        download_mib_s: transfer("get", bytes)?,
        upload_mib_s: transfer("put", bytes)?,
    };
    plugin(&["leave", TARGET]);
    Ok(measured)
}
