//! `make bench`: kubedev's tunnel measured against `kubectl port-forward` and against
//! direct access to the pod from the node, on the local cluster, in one run; the table
//! goes to docs/benchmarks.md.
//!
//! Paths to the same echo pod ([`paths`]):
//! - direct: the node connects to the pod IP (the ceiling);
//! - kubectl port-forward: local ports forwarded by the cluster's kubectl;
//! - kubedev: a workstation network namespace whose only route is to the API server
//!   connects to the pod IP through tunneld (TUN, userspace stack, one port-forward).
//!
//! Then kubectl port-forward and kubedev over a wire with added round-trip times
//! ([`distance`]), the agent's memory ([`memory`]) and how long intercept sessions take to
//! start and end ([`sessions`]), and what a wiretap adds to the requests it copies
//! ([`wiretapped`]); [`report`] writes it all up.
//!
//! `kubedev-bench mounts` prints the mounted volumes' table alone, `kubedev-bench distance`
//! every table over distance (at `BENCH_RTTS_MS`), without writing the report.
//!
//! `kubedev-bench soak` ([`soak`], `make soak`) runs one session under steady load for
//! `SOAK_SECONDS` and fails if anything failed or grew past its bounds; with
//! `KUBEDEV_SOAK_REPORT=1` its figures replace the soak section of docs/benchmarks.md.

mod cpu_trace;
mod distance;
mod families;
mod intercepted;
mod measure;
mod memory;
mod mounts;
mod paths;
mod processes;
mod report;
mod sessions;
mod soak;
mod tls_requests;
mod user_clients;
mod wiretapped;

use measure::Sizes;
use paths::Vantage;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// The agents the tunnel measurements link to.
const TOKEN: &str = "bench-token";
/// The pod that sends requests to intercepted workloads.
const CLIENT: &str = "client";

/// Where the report goes.
fn benchmarks_md() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("soak") => return soak_main().await,
        Some("mounts") => return mounts_main().await,
        Some("distance") => return distance_main().await,
        _ => {}
    }
    let sizes = Sizes::from_env();
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "bench").await;
    let echo = deploy_for_distance(&ns).await?;
    ns.deploy_echo(wiretapped::TARGET, 1).await?;
    let certificates = tls_requests::certificates(&ns);
    ns.deploy_echo_https(tls_requests::TARGET, &certificates)
        .await;

    eprintln!("bench: direct to the pod from the node");
    let direct = paths::direct(&echo, sizes);
    eprintln!("bench: kubectl port-forward");
    let port_forward = paths::port_forward(&cluster, &ns, &echo, Vantage::Node, sizes)?;
    eprintln!("bench: kubedev (workstation namespace, tunneld)");
    let mut workstation = Workstation::create(&cluster);
    let agents = "app=kubedev-agent";
    let kubedev = paths::kubedev(&cluster, &ns, agents, &mut workstation, &echo, sizes).await?;
    eprintln!("bench: kubedev over IPv6");
    let over_ipv6 = paths::kubedev_over_ipv6(&ns, agents, &workstation, &echo, sizes).await?;
    drop(workstation);
    let distance_sizes = Sizes::at_distance_from_env();
    let rtts = distance::rtts_from_env();
    let at_distance =
        distance::measure(&cluster, &ns, &echo, CLIENT, &rtts, distance_sizes).await?;
    eprintln!("bench: agent memory");
    let memory = memory::agent_memory(&cluster, &ns, &echo).await?;
    eprintln!("bench: intercept sessions");
    let sessions = sessions::time_sessions(&cluster, &ns, CLIENT).await?;
    eprintln!("bench: wiretapped requests");
    let wiretapped = wiretapped::measure(&cluster, &ns, CLIENT).await?;
    eprintln!("bench: filtered requests in TLS");
    let tls = tls_requests::measure(&cluster, &ns, CLIENT, &certificates)?;

    let paths = report::Paths {
        direct,
        port_forward,
        kubedev,
    };
    let report = report::render(&report::Measured {
        sizes: &sizes,
        paths: &paths,
        distance_sizes: &distance_sizes,
        at_distance: &at_distance,
        memory: &memory,
        sessions: &sessions,
        wiretapped: &wiretapped,
        tls: &tls,
        over_ipv6: over_ipv6.as_ref(),
    });
    let path = benchmarks_md();
    // The soak's figures are the soak's to write.
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    let report = match soak::section_of(&before) {
        Some(section) => soak::with_section(&report, section),
        None => report,
    };
    std::fs::write(&path, &report)?;
    println!("{report}");
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

/// `kubedev-bench mounts`: the mount table alone, at each RTT, printed (not written).
async fn mounts_main() -> anyhow::Result<()> {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "bench-mounts").await;
    ns.deploy_app_with_volume().await?;
    print!("{}", report::mount_table_head());
    for rtt in distance::rtts_from_env() {
        let workstation = Workstation::create_at_distance(&cluster, rtt);
        let mount = tokio::task::block_in_place(|| mounts::measure(&cluster, &ns, &workstation))?;
        print!("{}", report::mount_row(rtt, None, &mount));
    }
    Ok(())
}

/// What the measurements over distance reach: the echo pod and its agents, the client pod,
/// the Deployment it reaches through an intercept and the app with a volume.
async fn deploy_for_distance(ns: &TestNamespace) -> anyhow::Result<paths::EchoPod> {
    ns.deploy_echo("echo", 1).await?;
    ns.deploy_agents("kubedev-agent", 1, TOKEN).await?;
    let echo = paths::EchoPod::find(ns).await?;
    ns.start_client(CLIENT).await?;
    ns.deploy_echo(intercepted::TARGET, 1).await?;
    ns.deploy_app_with_volume().await?;
    Ok(echo)
}

/// `kubedev-bench distance`: the tables over distance alone, printed (not written).
async fn distance_main() -> anyhow::Result<()> {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "bench-distance").await;
    let echo = deploy_for_distance(&ns).await?;
    let sizes = Sizes::at_distance_from_env();
    let rtts = distance::rtts_from_env();
    let at_distance = distance::measure(&cluster, &ns, &echo, CLIENT, &rtts, sizes).await?;
    print!("{}", report::distance_tables(&sizes, &at_distance));
    Ok(())
}

async fn soak_main() -> anyhow::Result<()> {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "soak").await;
    ns.deploy_echo("echo", 1).await?;
    let echo = paths::EchoPod::find(&ns).await?;
    ns.start_client(CLIENT).await?;
    let soaked = soak::soak(&cluster, &ns, &echo, seconds).await?;
    let section = soak::render(&soaked);
    println!("{section}");
    if std::env::var_os("KUBEDEV_SOAK_REPORT").is_some_and(|v| v == "1") {
        let path = benchmarks_md();
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, soak::with_section(&doc, &section))?;
        eprintln!("soak: written to {}", path.display());
    }
    let problems = soaked.problems();
    anyhow::ensure!(problems.is_empty(), "soak failed:\n{}", problems.join("\n"));
    Ok(())
}
