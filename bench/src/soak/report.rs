//! The soak's section of docs/benchmarks.md, which `make bench` keeps when it writes the
//! rest of the file.

use std::fmt::Write as _;

use super::{BOUNDS, FLOW_PERIOD, FLOWS, RATE_STEP_SECONDS, REQUEST_RATE, RateStep, Soaked, Usage};

/// The first line of the section; everything from it to the end of the file is the soak's.
pub(crate) const HEADING: &str = "## Soak (`make soak`)";

/// The soak's section of `doc`, if it has one.
pub(crate) fn section_of(doc: &str) -> Option<&str> {
    doc.find(HEADING).map(|start| &doc[start..])
}

/// `doc` with its soak section (if any) replaced by `section`.
pub(crate) fn with_section(doc: &str, section: &str) -> String {
    let before = doc.find(HEADING).map_or(doc, |start| &doc[..start]);
    format!("{}\n\n{section}", before.trim_end())
}

/// The soak's section: the steady load's figures against their bounds, then the highest
/// intercepted request rate.
pub(crate) fn render(soaked: &Soaked) -> String {
    let mut out = format!("{HEADING}\n\n");
    let _ = writeln!(
        out,
        "One intercept session under steady load for {} s, on the same cluster and machine. A \
         workstation network namespace holds {FLOWS} TCP flows through tunneld to an echo pod \
         and sends a message on each in turn (each flow every {} s), while a client pod sends \
         {REQUEST_RATE} requests/s (a new connection each) to the intercepted Service, answered \
         on the workstation. Memory and descriptors are read every 5 s from /proc: first under \
         load / highest / after the load ended.\n",
        soaked.seconds,
        FLOW_PERIOD.as_secs()
    );
    out += "| measurement | figure | bound |\n| --- | ---: | ---: |\n";
    for (measurement, figure, bound) in steady_rows(soaked) {
        let _ = writeln!(out, "| {measurement} | {figure} | {bound} |");
    }
    out += "\nWhat the load took is given back: after it, at most a quarter (and 8 MiB) more \
            memory and 16 more descriptors than when it began.\n\n";
    render_rate_steps(&mut out, soaked);
    out
}

/// The steady load's rows: what was measured, the figure, and its bound.
fn steady_rows(soaked: &Soaked) -> Vec<(&'static str, String, String)> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss = |usage: &Usage| {
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            mib(usage.first_rss_kib),
            mib(usage.max_rss_kib),
            mib(usage.after_rss_kib)
        )
    };
    let fds = |usage: &Usage| {
        format!(
            "{} / {} / {}",
            usage.first_fds, usage.max_fds, usage.after_fds
        )
    };
    let (flows, steady) = (&soaked.flows, &soaked.steady);
    vec![
        (
            "flows held open through the tunnel",
            flows.open.to_string(),
            FLOWS.to_string(),
        ),
        (
            "messages echoed on them",
            format!(
                "{} of {} ({} failed)",
                flows.exchanges - flows.failed,
                flows.exchanges,
                flows.failed
            ),
            "0 failed".to_owned(),
        ),
        (
            "intercepted requests answered by the workstation",
            format!(
                "{} of {} ({} failed)",
                steady.requests - steady.failed,
                steady.requests,
                steady.failed
            ),
            "0 failed".to_owned(),
        ),
        (
            "their latency p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                steady.p50_ms, steady.p99_ms, steady.max_ms
            ),
            String::new(),
        ),
        (
            "agent RSS",
            rss(&soaked.agent),
            format!("{} MiB", BOUNDS.agent_rss_mib),
        ),
        (
            "agent file descriptors",
            fds(&soaked.agent),
            BOUNDS.agent_fds.to_string(),
        ),
        (
            "tunneld RSS",
            rss(&soaked.tunneld),
            format!("{} MiB", BOUNDS.tunneld_rss_mib),
        ),
        (
            "tunneld file descriptors",
            fds(&soaked.tunneld),
            BOUNDS.tunneld_fds.to_string(),
        ),
    ]
}

/// The highest intercepted request rate, step by step against the app directly.
fn render_rate_steps(out: &mut String, soaked: &Soaked) {
    let _ = writeln!(
        out,
        "### Highest intercepted request rate\n\n\
         After the soak, the client pod sends requests flat out from more and more workers \
         ({RATE_STEP_SECONDS} s each, a new connection per request, closed by the server as \
         `Connection: close` asks). The baseline is the same load on a Service of the same \
         app that is not intercepted, in the same run.\n\n\
         | workers | app directly, requests/s | intercepted, requests/s | intercepted / direct \
         | failed | p50 | p99 |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for RateStep {
        direct,
        intercepted,
    } in &soaked.rate_steps
    {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.2}x | {} | {:.1} ms | {:.1} ms |",
            intercepted.workers,
            direct.rate,
            intercepted.rate,
            intercepted.rate / direct.rate,
            intercepted.failed,
            intercepted.p50_ms,
            intercepted.p99_ms
        );
    }
    if let Some(best) = soaked.best_rate() {
        let _ = writeln!(
            out,
            "\nHighest rate held with no error: **{:.0} requests/s** ({} workers).",
            best.rate, best.workers
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_and_kept_whole() {
        let doc = format!("# Benchmarks\n\ntables\n\n{HEADING}\n\nold figures\n");
        assert_eq!(
            section_of(&doc),
            Some(format!("{HEADING}\n\nold figures\n").as_str())
        );
        let new = format!("{HEADING}\n\nnew figures\n");
        assert_eq!(
            with_section(&doc, &new),
            format!("# Benchmarks\n\ntables\n\n{HEADING}\n\nnew figures\n")
        );
        assert_eq!(
            with_section("# Benchmarks\n", &new),
            format!("# Benchmarks\n\n{new}")
        );
    }
}
