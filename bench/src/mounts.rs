//! The volumes mounted on the workstation (`--mount`, sshfs over SFTP through tunneld and
//! the agent), as a developer has them: the plugin runs as an unprivileged user, so the
//! kernel's read-ahead on the mount stays at its default. Timed by the plugin's `-- CMD`
//! (the mount lives in the plugin's mount namespace): sequential reads of large files
//! (the first, on links that have carried nothing yet, and the best of [`READS`]), a
//! sequential write, `ls -lR` of a directory of small files, and `stat` of files nothing
//! has looked at yet. The baseline is the best of [`READS`] `kubectl exec cat`s of the same
//! files over the same wire.

use std::io::Read as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tests_e2e::developer::{Developer, FuseOpenToAll};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// The Deployment whose volume is mounted ([`TestNamespace::deploy_app_with_volume`]).
const APP: &str = "vol";
/// The big files' size, MiB.
const BIG_MIB: u64 = 128;
/// Big files read, each once (no cache serves one read from another), by either path; the
/// fastest read counts, as the curl rows keep the best of 3.
const READS: u32 = 3;
/// Files in the tree `ls -lR` lists.
const TREE_FILES: u32 = 1000;
/// Files `stat` is timed on, one by one.
const STATS: u32 = 50;
/// The pods of `vol` a session started (the developer's session is named after them).
const SESSION_PODS: &str = "app=vol,kubedev.io/session";
/// How long the session may take to start and the timings to run.
const LIMIT: Duration = Duration::from_secs(600);

/// What the mount measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MountTimes {
    /// The fastest of the [`READS`] reads.
    pub(crate) read_mib_s: f64,
    /// The first read, before the mount's links have carried anything.
    pub(crate) first_read_mib_s: f64,
    /// The fastest `kubectl exec cat` of the same files, over the same wire.
    pub(crate) exec_cat_mib_s: f64,
    pub(crate) write_mib_s: f64,
    /// `ls -lR` of the tree.
    pub(crate) list_tree: Duration,
    /// One `stat` of a file not yet looked at, on average, less what the same `stat` of a
    /// local file takes (starting the program).
    pub(crate) stat: Duration,
}

/// Intercepts `vol` as a developer with its volume mounted on `workstation`, fills the
/// volume in the pod the session started (an emptyDir starts empty with each pod), times
/// `kubectl exec cat` of the big file, then lets the developer's command time the four
/// operations on the mount.
pub(crate) fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    workstation: &Workstation,
) -> anyhow::Result<MountTimes> {
    let _fuse = FuseOpenToAll::hold();
    let developer = Developer::create(cluster);
    let ready = std::env::temp_dir().join(format!("kubedev-bench-ready-{}", developer.uid));
    let _ = std::fs::remove_file(&ready);
    let mut plugin = developer
        .command(
            workstation,
            "kubectl",
            &[
                "intercept",
                "-n",
                &ns.name,
                APP,
                "-c",
                "app",
                "--port",
                "3005:8080",
                "--",
                "sh",
                "-c",
                &timings(&ready.display().to_string()),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let measured =
        fill_and_time_exec(cluster, ns, workstation, &mut plugin).and_then(|exec_cat_mib_s| {
            std::fs::write(&ready, "")?;
            Ok(exec_cat_mib_s)
        });
    let exec_cat_mib_s = match measured {
        Ok(figure) => figure,
        Err(err) => {
            let _ = plugin.kill();
            let _ = plugin.wait();
            return Err(err);
        }
    };
    let finished = plugin.wait_with_output()?;
    let (status, output, said) = (
        finished.status,
        String::from_utf8_lossy(&finished.stdout).into_owned(),
        String::from_utf8_lossy(&finished.stderr).into_owned(),
    );
    let _ = std::fs::remove_file(&ready);
    anyhow::ensure!(
        status.success(),
        "the timed command failed ({status}): {output}{said}"
    );
    let all_seconds = |step: &str| -> Vec<f64> {
        let step = format!("{step} ");
        (output.lines())
            .filter_map(|line| line.strip_prefix(&step)?.trim().parse().ok())
            .collect()
    };
    let seconds = |step: &str| -> anyhow::Result<f64> {
        (all_seconds(step).first().copied())
            .ok_or_else(|| anyhow::anyhow!("no {step} timing in: {output}{said}"))
    };
    let mib = BIG_MIB as f64;
    let fastest_read = all_seconds("read").into_iter().reduce(f64::min);
    Ok(MountTimes {
        read_mib_s: mib / fastest_read.ok_or_else(|| anyhow::anyhow!("no read timing"))?,
        first_read_mib_s: mib / seconds("read")?,
        exec_cat_mib_s,
        write_mib_s: mib / seconds("write")?,
        list_tree: Duration::from_secs_f64(seconds("list")?),
        stat: Duration::from_secs_f64(
            (seconds("stat")? - seconds("local")?).max(0.0) / f64::from(STATS),
        ),
    })
}

/// The developer's command: it waits for `ready` (the volume filled), then times each step
/// and prints its seconds. GNU date gives nanoseconds; awk subtracts.
fn timings(ready: &str) -> String {
    let data = "$KUBEDEV_ROOT/data";
    let files = big_files();
    format!(
        "set -e; i=0; while [ ! -e {ready} ]; do i=$((i+1)); [ $i -lt 3000 ]; sleep 0.2; done; \
         now() {{ date +%s.%N; }}; took() {{ awk \"BEGIN {{ print $(now) - $1 }}\"; }}; \
         for f in {files}; do t=$(now); cat {data}/big$f > /dev/null; \
         echo read $(took $t); done; \
         t=$(now); dd if=/dev/zero of={data}/written bs=1M count={BIG_MIB} conv=fsync 2>/dev/null; \
         echo write $(took $t); rm {data}/written; \
         t=$(now); ls -lR {data}/list > /dev/null; echo list $(took $t); \
         t=$(now); i=0; while [ $i -lt {STATS} ]; do stat {data}/stat/f$i > /dev/null; \
         i=$((i+1)); done; echo stat $(took $t); \
         t=$(now); i=0; while [ $i -lt {STATS} ]; do stat / > /dev/null; \
         i=$((i+1)); done; echo local $(took $t)"
    )
}

/// Waits for the session's pod, fills its volume, and times `kubectl exec cat` of each big
/// file from `workstation`: the fastest, MiB/s.
fn fill_and_time_exec(
    cluster: &TestCluster,
    ns: &TestNamespace,
    workstation: &Workstation,
    plugin: &mut Child,
) -> anyhow::Result<f64> {
    let running = "jsonpath={.items[?(@.status.phase==\"Running\")].metadata.name}";
    let deadline = Instant::now() + LIMIT;
    let pod = loop {
        let listed = ns.kubectl_ok(&["get", "pods", "-l", SESSION_PODS, "-o", running])?;
        if let Some(pod) = listed.split_whitespace().next() {
            break pod.to_owned();
        }
        if let Some(status) = plugin.try_wait()? {
            let mut said = String::new();
            plugin
                .stderr
                .take()
                .map(|mut stderr| stderr.read_to_string(&mut said));
            anyhow::bail!("the plugin ended ({status}) before its pod ran: {said}");
        }
        anyhow::ensure!(Instant::now() < deadline, "the session's pod never ran");
        std::thread::sleep(Duration::from_millis(500));
    };
    let files = big_files();
    let fill = format!(
        "cd /data && for f in {files}; do \
         dd if=/dev/urandom of=big$f bs=1M count={BIG_MIB} 2>/dev/null; done && \
         mkdir -p list stat && \
         i=0; while [ $i -lt {TREE_FILES} ]; do echo $i > list/f$i; i=$((i+1)); done; \
         i=0; while [ $i -lt {STATS} ]; do echo $i > stat/f$i; i=$((i+1)); done"
    );
    ns.kubectl_ok(&["exec", &pod, "-c", "app", "--", "sh", "-c", &fill])?;
    let mut fastest = Duration::MAX;
    for file in 1..=READS {
        let kubectl = format!(
            "{} --kubeconfig {} -n {} exec {pod} -c app -- cat /data/big{file} > /dev/null",
            cluster.kubectl.display(),
            cluster.admin_kubeconfig.display(),
            ns.name
        );
        let started = Instant::now();
        workstation.run_ok(&["sh", "-c", &kubectl]);
        fastest = fastest.min(started.elapsed());
    }
    Ok(BIG_MIB as f64 / fastest.as_secs_f64())
}

/// The tree's size, for the report.
pub(crate) const fn tree_files() -> u32 {
    TREE_FILES
}

/// The big files' numbers, as a shell list: `1 2 3`.
fn big_files() -> String {
    (1..=READS)
        .map(|file| file.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The big files' size, for the report.
pub(crate) const fn big_mib() -> u64 {
    BIG_MIB
}

/// Big files read by either path, for the report.
pub(crate) const fn reads() -> u32 {
    READS
}
