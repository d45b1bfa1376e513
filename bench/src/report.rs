//! docs/benchmarks.md: what was measured, on what machine, and kubedev against the
//! baseline of the same run.

use std::fmt::Write as _;
use std::time::Duration;

mod distance;

use crate::distance::AtDistance;
use crate::families;
use crate::measure::{Results, Sizes, ms};
use crate::memory::AgentMemory;
use crate::sessions::{RUNS, SessionTimes};

use crate::wiretapped::Tapped;
pub(crate) use distance::{mount_row, mount_table_head, tables as distance_tables};

/// What each path to the echo pod measured.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) direct: Results,
    pub(crate) port_forward: Results,
    pub(crate) kubedev: Results,
}

/// Everything one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured<'a> {
    pub(crate) sizes: &'a Sizes,
    pub(crate) paths: &'a Paths,
    pub(crate) distance_sizes: &'a Sizes,
    pub(crate) at_distance: &'a [AtDistance],
    pub(crate) memory: &'a AgentMemory,
    pub(crate) sessions: &'a SessionTimes,
    pub(crate) wiretapped: &'a [Tapped],
    pub(crate) tls: &'a [Tapped],
    /// The kubedev path to the pod's IPv6 address, on a dual-stack cluster.
    pub(crate) over_ipv6: Option<&'a Results>,
}

pub(crate) fn render(measured: &Measured<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Made by `make bench` on the local test cluster (Kubernetes v1.35, one node, everything on \
         one machine: {}), with release builds of the plugins, tunneld and the agent, as the \
         krew archives and the agent image hold. Every row compares paths to the same echo pod \
         in the same run.\n",
        machine()
    );
    let _ = writeln!(
        out,
        "- **direct**: the node connects to the pod IP (no tunnel: the ceiling).\n\
         - **kubectl port-forward**: local ports forwarded by kubectl v1.35 (a new stream through the API server per connection).\n\
         - **kubedev**: a network namespace whose only route leads to the API server connects to the pod IP; \
         tunneld carries it (TUN device, userspace TCP/IP stack, yamux over port-forwards to the agent (two, and more while a transfer needs them), SPDY inside their websockets).\n"
    );
    out += "## One hop from the API server\n\n";
    out += &path_table(measured.sizes, measured.paths);
    if let Some(over_ipv6) = measured.over_ipv6 {
        out += &families::table(measured.sizes, &measured.paths.kubedev, over_ipv6);
    }
    out += &distance::tables(measured.distance_sizes, measured.at_distance);
    out += &memory_table(measured.memory);
    out += &session_table(measured.sessions);
    out += &wiretap_table(measured.wiretapped);
    out += &tls_table(measured.tls);
    out
}

/// Throughput and latency over each path, and kubedev against port-forward.
fn path_table(sizes: &Sizes, paths: &Paths) -> String {
    let Paths {
        direct,
        port_forward,
        kubedev,
    } = paths;
    let throughput = |name: String, of: fn(&Results) -> f64| {
        let (d, p, k) = (of(direct), of(port_forward), of(kubedev));
        format!("| {name} | {d:.0} | {p:.0} | {k:.0} | {:.2}x |\n", k / p)
    };
    let latency = |name: String, of: fn(&Results) -> Duration| {
        let (d, p, k) = (of(direct), of(port_forward), of(kubedev));
        let ratio = k.as_secs_f64() / p.as_secs_f64();
        format!(
            "| {name} | {} | {} | {} | {ratio:.2}x |\n",
            ms(d),
            ms(p),
            ms(k)
        )
    };
    let bulk_gib = sizes.bulk_bytes as f64 / f64::from(1 << 30);
    let mut out = String::from(
        "| measurement | direct | kubectl port-forward | kubedev | kubedev / port-forward |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    out += &throughput(
        format!("bulk, one stream ({bulk_gib:.2} GiB), MiB/s"),
        |r| r.bulk_mib_s,
    );
    out += &throughput(
        format!("bulk upload, one stream ({bulk_gib:.2} GiB), MiB/s"),
        |r| r.upload_mib_s,
    );
    out += &latency(
        format!(
            "new connection to first byte, p50 ({} connects)",
            sizes.connects
        ),
        |r| r.connect_p50,
    );
    out += &latency("new connection to first byte, p99".into(), |r| {
        r.connect_p99
    });
    out += &latency(
        format!(
            "1-byte round trip, p50 ({} on one connection)",
            sizes.round_trips
        ),
        |r| r.rtt_p50,
    );
    out += &latency("1-byte round trip, p99".into(), |r| r.rtt_p99);
    out += &throughput(
        format!(
            "{} streams at once ({} MiB each), aggregate MiB/s",
            sizes.parallel_streams,
            sizes.parallel_bytes_each >> 20
        ),
        |r| r.parallel_mib_s,
    );
    out += &path_counter_rows(sizes, paths);
    out +=
        "\nFor latency rows a ratio under 1 means kubedev is faster; for throughput, over 1.\n\n";
    out
}

/// The rows that are counts, not speeds: stalled streams, CPU per GiB, UDP exchanges.
fn path_counter_rows(sizes: &Sizes, paths: &Paths) -> String {
    let Paths {
        direct,
        port_forward,
        kubedev,
    } = paths;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| streams of those that stalled (no data for 30 s; left out of the aggregate) | {} | {} | {} | |",
        direct.parallel_stalled, port_forward.parallel_stalled, kubedev.parallel_stalled
    );
    let _ = writeln!(
        out,
        "| CPU seconds per GiB of the bulk stream (kubectl; tunneld and the agent) | | {:.2} | {:.2} | {:.2}x |",
        port_forward.bulk_cpu_s_per_gib,
        kubedev.bulk_cpu_s_per_gib,
        kubedev.bulk_cpu_s_per_gib / port_forward.bulk_cpu_s_per_gib
    );
    if let (Some(d), Some(k)) = (direct.udp, kubedev.udp) {
        let _ = writeln!(
            out,
            "| UDP request/response, one at a time ({}), per second | {:.0} | none (TCP only) | {:.0} | |",
            sizes.udp_round_trips, d.per_s, k.per_s
        );
    }
    out
}

fn memory_table(memory: &AgentMemory) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    format!(
        "## Agent memory\n\n| state | agent RSS |\n| --- | ---: |\n\
         | fresh agent, one session, idle | {:.1} MiB |\n\
         | {} open TCP flows | {:.1} MiB |\n",
        mib(memory.idle_kib),
        memory.flows,
        mib(memory.busy_kib)
    )
}

fn session_table(sessions: &SessionTimes) -> String {
    let seconds = |times: &[Duration]| {
        format!(
            "{:.1} s | {:.1} s",
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        )
    };
    format!(
        "\n## Intercept sessions\n\n`kubectl intercept echo --port 3000:http --detach` on a one-pod \
         Deployment, then `leave`, {RUNS} times. The first request is sent from a client pod \
         (through `kubectl exec`, which adds a few hundred milliseconds) until the workstation \
         answers it.\n\n| measurement | median | slowest |\n| --- | ---: | ---: |\n\
         | command to first intercepted request | {} |\n\
         | leave to restored pods ready | {} |\n",
        seconds(&sessions.started),
        seconds(&sessions.restored)
    )
}

fn wiretap_table(measured: &[Tapped]) -> String {
    load_table(
        "\n## Wiretapped requests\n\nThe same paced HTTP load (new connection per request) from a \
         client pod on a one-pod echo Deployment's Service, with no session and under \
         `kubectl intercept --wiretap`, each copy answered by a server on the workstation. \
         Latency is the client's, from connect to the whole answer.\n\n",
        measured,
    )
}

fn tls_table(measured: &[Tapped]) -> String {
    load_table(
        "\n## Filtered requests in TLS\n\nThe same paced HTTPS load (a new TLS connection per \
         request, verifying the app's certificate) from a client pod on a one-pod HTTPS echo \
         Deployment's Service, with no session and under `kubectl intercept --http-header \
         x-dev=alice --tls-secret`: the agent terminates TLS with the app's certificate, reads \
         each request, and speaks TLS on to the app or to an HTTPS server on the workstation. \
         Latency is the client's, from connect to the whole answer.\n\n",
        measured,
    )
}

/// A table of paced loads, each against the first; `intro` says what they are.
fn load_table(intro: &str, measured: &[Tapped]) -> String {
    let mut out = format!(
        "{intro}| path | requests (failed) | p50 | p99 | p50 added | p99 added | copies (dropped) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    let Some(base) = measured.first() else {
        return out;
    };
    for tapped in measured {
        let load = &tapped.load;
        let copies = tapped
            .copies
            .map_or_else(|| "-".to_owned(), |(c, d)| format!("{c} ({d})"));
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {:.2} ms | {:.2} ms | {:+.2} ms | {:+.2} ms | {copies} |",
            tapped.what,
            load.requests,
            load.failed,
            load.p50_ms,
            load.p99_ms,
            load.p50_ms - base.load.p50_ms,
            load.p99_ms - base.load.p99_ms,
        );
    }
    out
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
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let total = info.lines().next()?.split_whitespace().nth(1)?;
            total.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {} GiB memory, Linux {}",
        memory_kib / (1024 * 1024),
        kernel.trim()
    )
}
