//! `make soak`: a session under steady load for a long time. A workstation holds 1,000
//! TCP flows through the tunnel to an echo pod and exchanges a message on each in turn,
//! while a client pod sends requests at a steady rate to an intercepted Service, answered
//! on the workstation. Nothing may fail, and the agent's and tunneld's memory and file
//! descriptors must stay under their bounds and stop growing. Then the highest
//! intercepted request rate held with no error.

mod report;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::measure;
use crate::paths::EchoPod;
use crate::processes::{agent_pid, open_fds, rss_kib};
pub(crate) use report::{render, section_of, with_section};

/// Flows held open through the tunnel for the whole soak.
const FLOWS: usize = 1000;
/// How often each flow carries a message.
const FLOW_PERIOD: Duration = Duration::from_secs(10);
/// Intercepted requests a second from the client pod during the soak.
const REQUEST_RATE: u32 = 50;
/// The intercepted workload, and the client pod's name for it.
const TARGET: &str = "soak-web";
const CLIENT: &str = "client";
/// The workstation's server for the intercepted port.
const LOCAL_PORT: u16 = 3000;
/// How often memory and descriptors are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The workers of each flat-out step of the request-rate search, and each step's length.
/// Each step also measures the app answering directly (a Service not intercepted): the
/// baseline of the same run.
const RATE_STEPS: [u32; 5] = [1, 4, 16, 64, 128];
const RATE_STEP_SECONDS: u32 = 5;

/// What each process may hold at most while the soak runs. A relayed connection that
/// exchanges short messages costs the agent about 13 KiB (18 MiB with the soak's flows, 5
/// MiB idle), so 32 MiB catches a buffer that such flows should not hold.
pub(crate) const BOUNDS: Bounds = Bounds {
    agent_rss_mib: 32,
    agent_fds: FLOWS as u64 + 100,
    tunneld_rss_mib: 128,
    tunneld_fds: 128,
};

/// Upper bounds on a process's resources.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) agent_rss_mib: u64,
    pub(crate) agent_fds: u64,
    pub(crate) tunneld_rss_mib: u64,
    pub(crate) tunneld_fds: u64,
}

/// One process's resources: first once under load, at their highest under load, and
/// after the load ended (the flows closed).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) first_rss_kib: u64,
    pub(crate) max_rss_kib: u64,
    pub(crate) after_rss_kib: u64,
    pub(crate) first_fds: u64,
    pub(crate) max_fds: u64,
    pub(crate) after_fds: u64,
}

impl Usage {
    fn sample(&mut self, pid: u32) {
        let (rss, fds) = (rss_kib(pid), open_fds(pid));
        if self.max_rss_kib == 0 {
            (self.first_rss_kib, self.first_fds) = (rss, fds);
        }
        self.max_rss_kib = self.max_rss_kib.max(rss);
        self.max_fds = self.max_fds.max(fds);
    }

    fn sample_after(&mut self, pid: u32) {
        (self.after_rss_kib, self.after_fds) = (rss_kib(pid), open_fds(pid));
    }

    /// Whether it stayed under `rss_mib` and `fds`, and gave back what the load took:
    /// after it at most a quarter (and 8 MiB) more memory and 16 more descriptors than
    /// when it began.
    fn problems(&self, who: &str, rss_mib: u64, fds: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_rss_kib > rss_mib * 1024 {
            problems.push(format!(
                "{who} RSS {} KiB over {rss_mib} MiB",
                self.max_rss_kib
            ));
        }
        if self.max_fds > fds {
            problems.push(format!(
                "{who} held {} descriptors, over {fds}",
                self.max_fds
            ));
        }
        if self.after_rss_kib > self.first_rss_kib * 5 / 4 + 8 * 1024 {
            problems.push(format!(
                "{who} RSS grew from {} to {} KiB",
                self.first_rss_kib, self.after_rss_kib
            ));
        }
        if self.after_fds > self.first_fds + 16 {
            problems.push(format!(
                "{who} descriptors grew from {} to {}",
                self.first_fds, self.after_fds
            ));
        }
        problems
    }
}

/// What the flows through the tunnel carried.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlowCounts {
    pub(crate) open: usize,
    pub(crate) exchanges: u64,
    pub(crate) failed: u64,
    pub(crate) first_failure: Option<String>,
}

/// One run of `probe load`, from its summary line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Load {
    pub(crate) workers: u32,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) first_failure: Option<String>,
}

impl Load {
    pub(crate) fn parse(workers: u32, summary: &str) -> anyhow::Result<Self> {
        let field = |key: &str| -> anyhow::Result<f64> {
            summary
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no {key} in {summary:?}"))
        };
        Ok(Self {
            workers,
            requests: field("requests")? as u64,
            failed: field("failed")? as u64,
            rate: field("rate")?,
            p50_ms: field("p50_ms")?,
            p99_ms: field("p99_ms")?,
            max_ms: field("max_ms")?,
            first_failure: summary
                .split_once(" first_failure=")
                .map(|(_, failure)| failure.to_owned()),
        })
    }
}

/// Everything a soak measured.
#[derive(Debug, Clone)]
pub(crate) struct Soaked {
    pub(crate) seconds: u64,
    pub(crate) flows: FlowCounts,
    pub(crate) steady: Load,
    pub(crate) agent: Usage,
    pub(crate) tunneld: Usage,
    pub(crate) rate_steps: Vec<RateStep>,
}

/// One step of the request-rate search: the same load on the app directly, and on the
/// intercepted Service.
#[derive(Debug, Clone)]
pub(crate) struct RateStep {
    pub(crate) direct: Load,
    pub(crate) intercepted: Load,
}

impl Soaked {
    /// What went wrong, if anything: failures, and resources over their bounds.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.flows.open < FLOWS || self.flows.failed > 0 {
            problems.push(format!(
                "flows: {} of {FLOWS} open, {} of {} exchanges failed (first: {:?})",
                self.flows.open, self.flows.failed, self.flows.exchanges, self.flows.first_failure
            ));
        }
        if self.steady.failed > 0 || self.steady.requests == 0 {
            problems.push(format!(
                "intercepted requests: {} of {} failed (first: {:?})",
                self.steady.failed, self.steady.requests, self.steady.first_failure
            ));
        }
        problems.extend(
            self.agent
                .problems("agent", BOUNDS.agent_rss_mib, BOUNDS.agent_fds),
        );
        problems.extend(self.tunneld.problems(
            "tunneld",
            BOUNDS.tunneld_rss_mib,
            BOUNDS.tunneld_fds,
        ));
        problems
    }

    /// The highest request rate of a step with no failed request.
    pub(crate) fn best_rate(&self) -> Option<&Load> {
        self.rate_steps
            .iter()
            .map(|step| &step.intercepted)
            .filter(|step| step.failed == 0)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }
}

/// Runs the soak for `seconds` in `ns` (which has the `echo` pod and the client pod).
pub(crate) async fn soak(
    cluster: &TestCluster,
    ns: &TestNamespace,
    echo: &EchoPod,
    seconds: u64,
) -> anyhow::Result<Soaked> {
    ns.deploy_echo(TARGET, 1).await?;
    let workstation = Workstation::create(cluster);
    let _server = workstation.serve_http(LOCAL_PORT, "laptop");
    let plugin = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        workstation.plugin_ok(cluster, "kubectl-intercept", &all)
    };
    plugin(&[TARGET, "--port", &format!("{LOCAL_PORT}:http"), "--detach"]);
    let loads = Loads {
        ns,
        intercepted: format!("{TARGET}:8080"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loads.wait_for_the_intercept(deadline)?;
    let tunneld_pid = workstation.plugins_tunneld_pid(cluster, "kubectl-intercept");
    // The pods the intercept replaced may still be going away.
    let agent_pid = loop {
        match agent_pid(ns, &format!("app={TARGET}"), "kubedev-agent").await {
            Ok(pid) => break pid,
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };

    eprintln!(
        "soak: {FLOWS} flows through the tunnel, {REQUEST_RATE} intercepted requests/s, {seconds} s"
    );
    let until = Instant::now() + Duration::from_secs(seconds);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = sample_usage(agent_pid, tunneld_pid, sampling.clone());
    let echo = echo.echo();
    let steady_seconds = u32::try_from(seconds)?;
    let (flows, steady) = std::thread::scope(|scope| {
        let flows = scope.spawn(|| workstation.inside(move || keep_flows(echo, FLOWS, until)));
        let steady = scope.spawn(|| loads.intercepted(8, steady_seconds, Some(REQUEST_RATE)));
        (
            flows.join().expect("the flows"),
            steady.join().expect("the requests"),
        )
    });
    sampling.store(false, Ordering::Relaxed);
    let (mut agent, mut tunneld) = sampler.join().expect("the sampler");
    tokio::time::sleep(SAMPLE_EVERY).await;
    agent.sample_after(agent_pid);
    tunneld.sample_after(tunneld_pid);
    let steady = steady?;
    let rate_steps = loads.rate_steps()?;
    plugin(&["leave", TARGET]);
    Ok(Soaked {
        seconds,
        flows,
        steady,
        agent,
        tunneld,
        rate_steps,
    })
}

/// Loads the client pod sends.
struct Loads<'a> {
    ns: &'a TestNamespace,
    /// The intercepted Service's address.
    intercepted: String,
}

impl Loads<'_> {
    /// `workers` sending to `target` for `seconds` (at `rate` requests/s in all, else flat
    /// out), each answer expected to start with `expect`.
    fn on(
        &self,
        target: &str,
        expect: &str,
        workers: u32,
        seconds: u32,
        rate: Option<u32>,
    ) -> anyhow::Result<Load> {
        let rate = rate.map(|r| format!(",rate={r}")).unwrap_or_default();
        let spec = format!("workers={workers},seconds={seconds}{rate},expect={expect}");
        let summary = self.ns.exec(CLIENT, &["probe", "load", target, &spec])?;
        Load::parse(workers, summary.trim())
    }

    /// A load on the intercepted Service, answered by the workstation.
    fn intercepted(&self, workers: u32, seconds: u32, rate: Option<u32>) -> anyhow::Result<Load> {
        self.on(&self.intercepted, "local laptop", workers, seconds, rate)
    }

    /// Returns once the workstation answers the intercepted Service.
    fn wait_for_the_intercept(&self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            match self.intercepted(1, 1, None) {
                Ok(tried) if tried.failed == 0 => return Ok(()),
                tried => anyhow::ensure!(
                    Instant::now() < deadline,
                    "the intercept never took the port: {tried:?}"
                ),
            }
        }
    }

    /// The request rate, intercepted and directly, with more and more workers.
    fn rate_steps(&self) -> anyhow::Result<Vec<RateStep>> {
        eprintln!("soak: the highest intercepted request rate with no error");
        let mut rate_steps = Vec::new();
        for workers in RATE_STEPS {
            let step = RateStep {
                direct: self.on("echo:8080", "echo from", workers, RATE_STEP_SECONDS, None)?,
                intercepted: self.intercepted(workers, RATE_STEP_SECONDS, None)?,
            };
            eprintln!(
                "soak: {workers} workers: {:.0} requests/s intercepted ({} failed), {:.0} direct",
                step.intercepted.rate, step.intercepted.failed, step.direct.rate
            );
            rate_steps.push(step);
        }
        Ok(rate_steps)
    }
}

/// Samples the agent's and tunneld's memory and descriptors every [`SAMPLE_EVERY`] while
/// `sampling` is set.
fn sample_usage(
    agent_pid: u32,
    tunneld_pid: u32,
    sampling: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Usage, Usage)> {
    std::thread::spawn(move || {
        let (mut agent, mut tunneld) = (Usage::default(), Usage::default());
        // Once the flows are open and the requests flow.
        std::thread::sleep(SAMPLE_EVERY * 2);
        while sampling.load(Ordering::Relaxed) {
            agent.sample(agent_pid);
            tunneld.sample(tunneld_pid);
            std::thread::sleep(SAMPLE_EVERY);
        }
        (agent, tunneld)
    })
}

/// Opens `count` flows to the echo port at `echo`, then until `until` sends a message on
/// each in turn (each every [`FLOW_PERIOD`]) and checks its echo.
fn keep_flows(echo: SocketAddr, count: usize, until: Instant) -> FlowCounts {
    let mut flows = measure::open_flows(echo, count);
    let mut counts = FlowCounts {
        open: flows.len(),
        ..FlowCounts::default()
    };
    for flow in &flows {
        let _ = flow.set_read_timeout(Some(Duration::from_secs(10)));
    }
    let pause = FLOW_PERIOD / u32::try_from(count).unwrap_or(u32::MAX);
    let mut next = Instant::now();
    'soak: loop {
        for (i, flow) in flows.iter_mut().enumerate() {
            if Instant::now() >= until {
                break 'soak;
            }
            counts.exchanges += 1;
            if let Err(failure) = exchange(flow) {
                counts.failed += 1;
                counts
                    .first_failure
                    .get_or_insert_with(|| format!("flow {i}: {failure}"));
            }
            next += pause;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    counts
}

fn exchange(flow: &mut TcpStream) -> std::io::Result<()> {
    const MESSAGE: &[u8] = b"soak\n";
    flow.write_all(MESSAGE)?;
    let mut echoed = [0u8; MESSAGE.len()];
    flow.read_exact(&mut echoed)?;
    if echoed == MESSAGE {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("echoed {echoed:?}")))
    }
}
