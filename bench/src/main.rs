//! `make bench`: kubedev's tunnel measured against `kubectl port-forward` and against
//! direct access to the pod from the node, on the local cluster, in one run; the table
//! goes to docs/benchmarks.md.
//!
//! Paths to the same echo pod:
//! - direct: the node connects to the pod IP (the ceiling);
//! - kubectl port-forward: local ports forwarded by the cluster's kubectl;
//! - kubedev: a workstation network namespace whose only route is to the API server
//!   connects to the pod IP through tunneld (TUN, userspace stack, one port-forward).

mod measure;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kubedev_e2e::workstation::Workstation;
use kubedev_e2e::{TestCluster, TestNamespace};
use measure::{Results, Sizes};

const TOKEN: &str = "bench-token";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes = Sizes {
        bulk_bytes: setting("BENCH_BULK_BYTES", 1 << 30),
        connects: setting("BENCH_CONNECTS", 1000) as usize,
        round_trips: setting("BENCH_ROUND_TRIPS", 1000) as usize,
        parallel_streams: setting("BENCH_PARALLEL_STREAMS", 100) as usize,
        parallel_bytes_each: setting("BENCH_PARALLEL_BYTES_EACH", 16 << 20),
    };
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "bench").await;
    ns.deploy_echo("echo", 1).await?;
    ns.deploy_agents("kubedev-agent", 1, TOKEN).await?;
    let echo_pod = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=echo"))
        .await?
        .items
        .remove(0);
    let pod_name = echo_pod.metadata.name.clone().unwrap_or_default();
    let pod_ip = echo_pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let bulk_at = |ip: &str| -> SocketAddr { format!("{ip}:9100").parse().expect("address") };
    let echo_at = |ip: &str| -> SocketAddr { format!("{ip}:7000").parse().expect("address") };

    eprintln!("bench: direct to the pod from the node");
    let direct = {
        let (bulk, echo) = (bulk_at(&pod_ip), echo_at(&pod_ip));
        tokio::task::spawn_blocking(move || measure::run_all(bulk, echo, sizes)).await?
    };

    eprintln!("bench: kubectl port-forward");
    let mut port_forward = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args([
            "-n",
            &ns.name,
            "port-forward",
            &format!("pod/{pod_name}"),
            ":9100",
            ":7000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut forwarded = BufReader::new(port_forward.stdout.take().expect("stdout"));
    let mut local_ports = Vec::new();
    while local_ports.len() < 2 {
        let mut line = String::new();
        forwarded.read_line(&mut line)?;
        // "Forwarding from 127.0.0.1:PORT -> 9100"
        if let Some(address) = line
            .split_whitespace()
            .nth(2)
            .filter(|a| a.starts_with("127.0.0.1:"))
        {
            local_ports.push(address.parse::<SocketAddr>()?);
        }
    }
    // kubectl logs every connection on stdout: keep reading it so it never blocks.
    std::thread::spawn(move || forwarded.lines().for_each(drop));
    let via_port_forward = {
        let (bulk, echo) = (local_ports[0], local_ports[1]);
        tokio::task::spawn_blocking(move || measure::run_all(bulk, echo, sizes)).await?
    };
    port_forward.kill()?;
    let _ = port_forward.wait();

    eprintln!("bench: kubedev (workstation namespace, tunneld)");
    let mut workstation = Workstation::create(&cluster);
    workstation
        .start_tunneld(&cluster, &ns.name, "app=kubedev-agent", TOKEN)
        .await;
    let via_kubedev = {
        let (bulk, echo) = (bulk_at(&pod_ip), echo_at(&pod_ip));
        tokio::task::spawn_blocking(move || {
            workstation.inside(move || measure::run_all(bulk, echo, sizes))
        })
        .await?
    };

    // Memory is read on a fresh agent: the one above has just moved gigabytes, and what
    // its allocator keeps from that is not what an agent needs.
    eprintln!("bench: agent memory");
    ns.deploy_agents("kubedev-agent-fresh", 1, TOKEN).await?;
    let mut workstation = Workstation::create(&cluster);
    workstation
        .start_tunneld(&cluster, &ns.name, "app=kubedev-agent-fresh", TOKEN)
        .await;
    let agent_pid = newest_pid("kubedev-agent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(agent_pid);
    let echo = echo_at(&pod_ip);
    let (flows, busy_rss) = tokio::task::spawn_blocking(move || {
        workstation.inside(move || {
            let flows = measure::open_flows(echo, 1000);
            std::thread::sleep(Duration::from_secs(1));
            (flows.len(), rss_kib(agent_pid))
        })
    })
    .await?;

    eprintln!("bench: intercept sessions");
    let sessions = session_timings(&cluster, &ns).await?;

    let mut report = report(
        &sizes,
        &direct,
        &via_port_forward,
        &via_kubedev,
        idle_rss,
        flows,
        busy_rss,
    );
    report += &sessions;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

/// Times `kubectl intercept` on the echo Deployment, as a developer meets it: from the
/// command to the first request from a pod answered by the workstation, and from `leave`
/// to restored pods ready (the command returns then).
async fn session_timings(cluster: &TestCluster, ns: &TestNamespace) -> anyhow::Result<String> {
    const RUNS: usize = 3;
    ns.start_client("client").await?;
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
            .http_get("client", "echo:8080", "/timing")
            .is_ok_and(|answer| answer.starts_with("local workstation"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.push(t0.elapsed());
        let t1 = Instant::now();
        plugin(&["leave", "echo"]);
        restored.push(t1.elapsed());
    }
    let seconds = |times: &mut Vec<Duration>| {
        times.sort();
        format!(
            "{:.1} s | {:.1} s",
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        )
    };
    Ok(format!(
        "\n## Intercept sessions\n\n`kubectl intercept echo --port 3000:http --detach` on a one-pod \
         Deployment, then `leave`, {RUNS} times. The first request is sent from a client pod \
         (through `kubectl exec`, which adds a few hundred milliseconds) until the workstation \
         answers it.\n\n| measurement | median | slowest |\n| --- | ---: | ---: |\n\
         | command to first intercepted request | {} |\n\
         | leave to restored pods ready | {} |\n",
        seconds(&mut started),
        seconds(&mut restored)
    ))
}

fn newest_pid(program: &str) -> u32 {
    let output = Command::new("pgrep")
        .args(["-n", "-x", program])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("agent process on this node")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {} GiB memory, Linux {}",
        memory / (1024 * 1024),
        kernel.trim()
    )
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn report(
    sizes: &Sizes,
    direct: &Results,
    port_forward: &Results,
    kubedev: &Results,
    idle_rss: u64,
    flows: usize,
    busy_rss: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Made by `make bench` on the local test cluster (Kubernetes v1.35, one node, everything on \
         one machine: {}). All three paths reach the same echo pod in the same run.\n",
        machine()
    );
    let _ = writeln!(
        out,
        "- **direct**: the node connects to the pod IP (no tunnel: the ceiling).\n\
         - **kubectl port-forward**: local ports forwarded by kubectl v1.35 (a new stream through the API server per connection).\n\
         - **kubedev**: a network namespace whose only route leads to the API server connects to the pod IP; \
         tunneld carries it (TUN device, userspace TCP/IP stack, yamux over one port-forward to the agent).\n"
    );
    let _ = writeln!(
        out,
        "| measurement | direct | kubectl port-forward | kubedev | kubedev / port-forward |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    let bulk_gib = sizes.bulk_bytes as f64 / f64::from(1 << 30);
    let rows: [(String, String, String, String, String); 6] = [
        (
            format!("bulk, one stream ({bulk_gib:.2} GiB), MiB/s"),
            format!("{:.0}", direct.bulk_mib_s),
            format!("{:.0}", port_forward.bulk_mib_s),
            format!("{:.0}", kubedev.bulk_mib_s),
            format!("{:.2}x", kubedev.bulk_mib_s / port_forward.bulk_mib_s),
        ),
        (
            format!(
                "new connection to first byte, p50 ({} connects)",
                sizes.connects
            ),
            ms(direct.connect_p50),
            ms(port_forward.connect_p50),
            ms(kubedev.connect_p50),
            format!(
                "{:.2}x",
                kubedev.connect_p50.as_secs_f64() / port_forward.connect_p50.as_secs_f64()
            ),
        ),
        (
            "new connection to first byte, p99".into(),
            ms(direct.connect_p99),
            ms(port_forward.connect_p99),
            ms(kubedev.connect_p99),
            format!(
                "{:.2}x",
                kubedev.connect_p99.as_secs_f64() / port_forward.connect_p99.as_secs_f64()
            ),
        ),
        (
            format!(
                "1-byte round trip, p50 ({} on one connection)",
                sizes.round_trips
            ),
            ms(direct.rtt_p50),
            ms(port_forward.rtt_p50),
            ms(kubedev.rtt_p50),
            format!(
                "{:.2}x",
                kubedev.rtt_p50.as_secs_f64() / port_forward.rtt_p50.as_secs_f64()
            ),
        ),
        (
            "1-byte round trip, p99".into(),
            ms(direct.rtt_p99),
            ms(port_forward.rtt_p99),
            ms(kubedev.rtt_p99),
            format!(
                "{:.2}x",
                kubedev.rtt_p99.as_secs_f64() / port_forward.rtt_p99.as_secs_f64()
            ),
        ),
        (
            format!(
                "{} streams at once ({} MiB each), aggregate MiB/s",
                sizes.parallel_streams,
                sizes.parallel_bytes_each >> 20
            ),
            format!("{:.0}", direct.parallel_mib_s),
            format!("{:.0}", port_forward.parallel_mib_s),
            format!("{:.0}", kubedev.parallel_mib_s),
            format!(
                "{:.2}x",
                kubedev.parallel_mib_s / port_forward.parallel_mib_s
            ),
        ),
    ];
    for (name, a, b, c, ratio) in rows {
        let _ = writeln!(out, "| {name} | {a} | {b} | {c} | {ratio} |");
    }
    let _ = writeln!(
        out,
        "| streams of those that stalled (no data for 30 s; left out of the aggregate) | {} | {} | {} | |",
        direct.parallel_stalled, port_forward.parallel_stalled, kubedev.parallel_stalled
    );
    let _ = writeln!(
        out,
        "\nFor latency rows a ratio under 1 means kubedev is faster; for throughput, over 1.\n"
    );
    let _ = writeln!(out, "## Agent memory\n");
    let _ = writeln!(out, "| state | agent RSS |");
    let _ = writeln!(out, "| --- | ---: |");
    let _ = writeln!(
        out,
        "| fresh agent, one session, idle | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| {flows} open TCP flows | {:.1} MiB |",
        busy_rss as f64 / 1024.0
    );
    out
}
