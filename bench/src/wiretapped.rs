//! What a wiretap costs the requests it copies: the same paced HTTP load from a client pod
//! on the app's Service with no session, with a wiretap of every connection (the client's
//! bytes copied), and with a filtered wiretap (each request copied by the agent's HTTP
//! proxy), each copy answered by a server on the workstation.

use std::time::Duration;

use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::soak::Load;

/// The echo Deployment wiretapped: one of its own, as a wiretap replaces its pods.
pub(crate) const TARGET: &str = "echo-wiretapped";
/// Requests a second, from [`WORKERS`] workers, for [`SECONDS`] per measurement.
const RATE: u32 = 100;
const WORKERS: u32 = 4;
const SECONDS: u32 = 20;

/// One measurement: the load's figures and, wiretapped, what became of the copies.
#[derive(Debug, Clone)]
pub(crate) struct Tapped {
    pub(crate) what: &'static str,
    pub(crate) load: Load,
    /// (copied, dropped), where a wiretap ran.
    pub(crate) copies: Option<(u64, u64)>,
}

/// Loads [`TARGET`] from pod `client` as it is, then under each kind of wiretap.
pub(crate) async fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    client: &str,
) -> anyhow::Result<Vec<Tapped>> {
    let workstation = Workstation::create(cluster);
    let _server = workstation.serve_http(3000, "workstation");
    let plugin = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(cluster, "kubectl-intercept", &all)
    };
    let load = || -> anyhow::Result<Load> {
        let spec =
            format!("workers={WORKERS},seconds={SECONDS},rate={RATE},expect=echo from {TARGET}");
        let summary = ns.exec(client, &["probe", "load", &format!("{TARGET}:8080"), &spec])?;
        Load::parse(WORKERS, &summary)
    };
    let mut measured = vec![Tapped {
        what: "no session (the app's Service)",
        load: load()?,
        copies: None,
    }];
    for (what, extra) in [
        ("wiretap of every connection", &[][..]),
        (
            "filtered wiretap (every request matches)",
            &["--http-path-prefix", "/"][..],
        ),
    ] {
        let mut args = vec![TARGET, "--port", "3000:http", "--wiretap", "--detach"];
        args.extend_from_slice(extra);
        plugin(&args);
        // The first copies show the agent is linked and copying.
        wait_for_copies(&workstation, cluster, ns, client).await?;
        let load = load()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let copies = copies(&plugin(&["status", "-o", "json"]));
        measured.push(Tapped {
            what,
            load,
            copies: Some(copies),
        });
        plugin(&["leave", TARGET]);
    }
    Ok(measured)
}

async fn wait_for_copies(
    workstation: &Workstation,
    cluster: &TestCluster,
    ns: &TestNamespace,
    client: &str,
) -> anyhow::Result<()> {
    for _ in 0..300 {
        // Failures are expected while the pods restart with the agent.
        let _ = ns.http_get(client, &format!("{TARGET}:8080"), "/warm-up");
        let status = workstation.plugin_ok(cluster, "kubectl-intercept", &["status", "-o", "json"]);
        if copies(&status).0 > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the wiretap never copied a request")
}

/// The (copied, dropped) counts of the one session in `status -o json`.
fn copies(status: &str) -> (u64, u64) {
    let status: Value = serde_json::from_str(status).unwrap_or_default();
    let counts = &status["sessions"][0]["wiretap"];
    let count = |key: &str| counts[key].as_u64().unwrap_or_default();
    (count("copied"), count("dropped"))
}
