//! The tables of the measurements over distance: the tunnel against kubectl port-forward,
//! a user's curl through each, intercepted transfers and the mounted volumes.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cpu_trace::{CpuUse, TRACED};
use crate::distance::AtDistance;
use crate::intercepted::Intercepted;
use crate::measure::{Results, Sizes, ms};
use crate::mounts::{self, MountTimes};
use crate::user_clients::Transfers;

/// Every table over distance.
pub(crate) fn tables(sizes: &Sizes, at_distance: &[AtDistance]) -> String {
    distance_table(sizes, at_distance)
        + &cpu_table(at_distance)
        + &intercepted_table(sizes, at_distance)
        + &mount_table(at_distance)
}

/// Throughput and latency over each path at each RTT, and kubedev against port-forward.
fn distance_table(sizes: &Sizes, at_distance: &[AtDistance]) -> String {
    let mut out = String::from(
        "## Over distance\n\nThe workstation's route to the API server passes a delay line that \
         adds the round-trip time (RTT) given; kubectl port-forward runs in the same workstation, \
         over the same wire. The bulk rows use the benchmark's own client (1 MiB reads and \
         writes, to the pod's address); the curl rows use curl 7.88 to `http://echo:8080` \
         (kubedev: the name resolved by tunneld; kubectl: `port-forward svc/echo`).\n\n\
         | measurement | RTT | kubectl port-forward | kubedev | kubedev / port-forward | kubedev in RTTs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mib = sizes.bulk_bytes >> 20;
    let rows: [(String, Row); 11] = [
        (
            format!("bulk, one stream ({mib} MiB), MiB/s"),
            Row::Throughput(|r| r.bulk_mib_s),
        ),
        (
            format!("curl download by Service name ({mib} MiB), MiB/s, best of 3"),
            Row::Curl(|t| t.download_mib_s),
        ),
        (
            format!(
                "bulk upload, one stream ({} MiB), MiB/s",
                sizes.bulk_bytes >> 20
            ),
            Row::Throughput(|r| r.upload_mib_s),
        ),
        (
            format!("curl upload by Service name ({mib} MiB), MiB/s, best of 3"),
            Row::Curl(|t| t.upload_mib_s),
        ),
        (
            format!(
                "{} streams at once ({} MiB each), aggregate MiB/s",
                sizes.parallel_streams,
                sizes.parallel_bytes_each >> 20
            ),
            Row::Throughput(|r| r.parallel_mib_s),
        ),
        (
            format!("connect to first byte, p50 ({})", sizes.connects),
            Row::Latency(|r| r.connect_p50),
        ),
        (
            "connect to first byte, p99".into(),
            Row::Latency(|r| r.connect_p99),
        ),
        (
            format!("1-byte round trip, p50 ({})", sizes.round_trips),
            Row::Latency(|r| r.rtt_p50),
        ),
        ("1-byte round trip, p99".into(), Row::Latency(|r| r.rtt_p99)),
        (
            format!(
                "UDP request/response, one at a time ({}), per second",
                sizes.udp_round_trips
            ),
            Row::Udp,
        ),
        (
            "CPU seconds per GiB of the bulk stream (kubectl; tunneld and the agent)".into(),
            Row::Cost(|r| r.bulk_cpu_s_per_gib),
        ),
    ];
    for (name, row) in rows {
        for measured in at_distance {
            out += &row.render(&name, measured);
        }
    }
    out += "\n";
    out
}

/// A row of the distance table: what it reads from each path's results.
enum Row {
    Throughput(fn(&Results) -> f64),
    /// What curl moved through each path.
    Curl(fn(&Transfers) -> f64),
    Latency(fn(&Results) -> Duration),
    /// Lower is better, as for latency.
    Cost(fn(&Results) -> f64),
    /// kubedev only: kubectl port-forward carries no UDP.
    Udp,
}

impl Row {
    fn render(&self, name: &str, at: &AtDistance) -> String {
        let rtt = format!("{} ms", at.rtt.as_millis());
        match self {
            Self::Throughput(of) => {
                let (p, k) = (of(&at.port_forward), of(&at.kubedev));
                format!("| {name} | {rtt} | {p:.0} | {k:.0} | {:.2}x | |\n", k / p)
            }
            Self::Curl(of) => {
                let (p, k) = (of(&at.curl.port_forward), of(&at.curl.kubedev));
                format!("| {name} | {rtt} | {p:.0} | {k:.0} | {:.2}x | |\n", k / p)
            }
            Self::Cost(of) => {
                let (p, k) = (of(&at.port_forward), of(&at.kubedev));
                format!("| {name} | {rtt} | {p:.2} | {k:.2} | {:.2}x | |\n", k / p)
            }
            Self::Udp => {
                let Some(udp) = at.kubedev.udp else {
                    return String::new();
                };
                let lost = if udp.lost == 0 {
                    String::new()
                } else {
                    format!(" ({} lost)", udp.lost)
                };
                format!(
                    "| {name} | {rtt} | none (TCP only) | {:.0}{lost} | | {} |\n",
                    udp.per_s,
                    in_rtts(udp.p50, at.rtt)
                )
            }
            Self::Latency(of) => {
                let (p, k) = (of(&at.port_forward), of(&at.kubedev));
                let ratio = k.as_secs_f64() / p.as_secs_f64();
                format!(
                    "| {name} | {rtt} | {} | {} | {ratio:.2}x | {} |\n",
                    ms(p),
                    ms(k),
                    in_rtts(k, at.rtt)
                )
            }
        }
    }
}

/// `took` as a multiple of `rtt` (blank at RTT 0).
fn in_rtts(took: Duration, rtt: Duration) -> String {
    if rtt.is_zero() {
        String::new()
    } else {
        format!("{:.2}", took.as_secs_f64() / rtt.as_secs_f64())
    }
}

/// Where the CPU went during each path's fastest curl download.
fn cpu_table(at_distance: &[AtDistance]) -> String {
    let mut out = format!(
        "Where the CPU goes during curl's fastest download above, in CPU seconds per GiB: \
         every part of both paths runs on this machine, so where the sum nears its cores, it \
         caps both. The rest is the client, the kernel's network work and the cluster's other \
         processes.\n\n| RTT | path | {} | rest | machine |\n| ---: | --- |{} ---: | ---: |\n",
        TRACED.join(" | "),
        " ---: |".repeat(TRACED.len())
    );
    for at in at_distance {
        let rows: [(&str, &CpuUse); 2] = [
            (
                "kubectl port-forward",
                &at.curl.port_forward.download_cpu_per_gib,
            ),
            ("kubedev", &at.curl.kubedev.download_cpu_per_gib),
        ];
        for (path, cpu) in rows {
            let each: Vec<String> = cpu.by_process.iter().map(|s| format!("{s:.2}")).collect();
            let _ = writeln!(
                out,
                "| {} ms | {path} | {} | {:.2} | {:.2} |",
                at.rtt.as_millis(),
                each.join(" | "),
                cpu.rest(),
                cpu.machine
            );
        }
    }
    out += "\n";
    out
}

fn intercepted_table(sizes: &Sizes, at_distance: &[AtDistance]) -> String {
    let mut out = format!(
        "A client pod moves {} MiB to and from a server on the workstation through `kubectl \
         intercept` (the pod times it), against the tunnel's own bulk download above (kubedev's \
         \"bulk, one stream\" row: the pod to the workstation) at the same RTT. \
         A download moves data toward the pod, as kubectl port-forward's upload does (last column, \
         for what that direction of the API server's path carries).\n\n\
         | RTT | outbound bulk, MiB/s | intercepted download, MiB/s | / outbound | intercepted upload, MiB/s | / outbound | kubectl port-forward upload, MiB/s |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        sizes.bulk_bytes >> 20
    );
    for at in at_distance {
        let outbound = at.kubedev.bulk_mib_s;
        let Intercepted {
            download_mib_s: down,
            upload_mib_s: up,
        } = at.intercepted;
        let _ = writeln!(
            out,
            "| {} ms | {outbound:.0} | {down:.0} | {:.2}x | {up:.0} | {:.2}x | {:.0} |",
            at.rtt.as_millis(),
            down / outbound,
            up / outbound,
            at.port_forward.upload_mib_s
        );
    }
    out += "\n";
    out
}

fn mount_table(at_distance: &[AtDistance]) -> String {
    let mut out = String::new();
    for at in at_distance {
        out += &mount_row(at.rtt, Some(at.kubedev.bulk_mib_s), &at.mount);
    }
    format!("{}{out}\n", mount_table_head())
}

/// What the mount table measures, and its head.
pub(crate) fn mount_table_head() -> String {
    format!(
        "The volumes mounted on the workstation (sshfs, SFTP through tunneld and the agent) by \
         an unprivileged developer, as krew installs the plugins, timed by the plugin's \
         `-- CMD`: {reads} files of {mib} MiB read sequentially, each once (best of {reads}, and \
         the first: links that have carried nothing yet), one written, `ls -lR` of a \
         directory of {files} files, and `stat` of files nothing has looked at yet (less a \
         `stat` of a local file: starting the program). The baseline is `kubectl exec POD -- \
         cat` of the same files, over the same wire (best of {reads}).\n\n\
         | RTT | tunnel bulk, MiB/s | kubectl exec cat, MiB/s | read, MiB/s | / exec cat | first read, MiB/s | write, MiB/s | ls -lR | in RTTs | stat, each | in RTTs |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        reads = mounts::reads(),
        mib = mounts::big_mib(),
        files = mounts::tree_files()
    )
}

/// One RTT's row of the mount table; `bulk` is the tunnel's, if measured.
pub(crate) fn mount_row(rtt: Duration, bulk: Option<f64>, mount: &MountTimes) -> String {
    let bulk = bulk.map_or_else(|| "-".to_owned(), |bulk| format!("{bulk:.0}"));
    format!(
        "| {} ms | {bulk} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {} | {} | {} | {} |\n",
        rtt.as_millis(),
        mount.exec_cat_mib_s,
        mount.read_mib_s,
        mount.read_mib_s / mount.exec_cat_mib_s,
        mount.first_read_mib_s,
        mount.write_mib_s,
        ms(mount.list_tree),
        in_rtts(mount.list_tree, rtt),
        ms(mount.stat),
        in_rtts(mount.stat, rtt)
    )
}
