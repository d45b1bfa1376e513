//! What terminating TLS in the agent (`--tls-secret`) costs requests: the same paced HTTPS
//! load, a new TLS connection per request that verifies the app's certificate, from a
//! client pod on an HTTPS app's Service, with no session, under a filtered intercept whose
//! filter no request matches (each answered by the app, through the agent's TLS both
//! ways), and under one every request matches (each answered by an HTTPS server on the
//! workstation).

use tests_e2e::tls::{Certificates, issue};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::soak::Load;
use crate::wiretapped::Tapped;

/// The HTTPS Deployment and Service measured.
pub(crate) const TARGET: &str = "echo-https";
/// Requests a second, from [`WORKERS`] workers, for [`SECONDS`] per measurement.
const RATE: u32 = 50;
const WORKERS: u32 = 4;
const SECONDS: u32 = 20;

/// Certificates for [`TARGET`] in `ns`, from a test CA.
pub(crate) fn certificates(ns: &TestNamespace) -> Certificates {
    issue(&[TARGET.to_owned(), format!("{TARGET}.{}.svc", ns.name)])
}

/// Loads [`TARGET`] (deployed with `certificates`) from pod `client` as it is, then under
/// each filtered intercept.
pub(crate) fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    client: &str,
    certificates: &Certificates,
) -> anyhow::Result<Vec<Tapped>> {
    let workstation = Workstation::create(cluster);
    let local = issue(&["localhost".to_owned()]);
    let _server = workstation.serve_https(3443, "workstation", &local.cert, &local.key);
    let plugin = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(cluster, "kubectl-intercept", &all)
    };
    let load = |header: &str, expect: &str| -> anyhow::Result<Load> {
        let spec = format!(
            "workers={WORKERS},seconds={SECONDS},rate={RATE},tls=1,header={header},\
             expect={expect}"
        );
        let (ca, name) = (
            format!("PROBE_CA={}", certificates.ca),
            format!("PROBE_SERVER_NAME={TARGET}"),
        );
        let target = format!("{TARGET}:8443");
        let command = ["env", &ca, &name, "probe", "load", &target, &spec];
        Load::parse(WORKERS, &ns.exec(client, &command)?)
    };
    let app = format!("echo from {TARGET}");
    let mut measured = vec![Tapped {
        what: "no session (the app's Service)",
        load: load("x-dev:bob", &app)?,
        copies: None,
    }];
    let intercept = [
        TARGET,
        "--port",
        "3443:https",
        "--http-header",
        "x-dev=alice",
        "--tls-secret",
        "echo-https-tls",
        "--detach",
    ];
    plugin(&intercept);
    for (what, header, expect) in [
        (
            "intercepted, no request matches: the app answers",
            "x-dev:bob",
            app.as_str(),
        ),
        (
            "intercepted, every request matches: the workstation answers",
            "x-dev:alice",
            "local workstation",
        ),
    ] {
        measured.push(Tapped {
            what,
            load: load(header, expect)?,
            copies: None,
        });
    }
    plugin(&["leave", TARGET]);
    Ok(measured)
}
