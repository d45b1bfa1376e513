//! The volumes mounted on the workstation (`--mount`, sshfs over SFTP through tunneld and
//! the agent): sequential read and write of a large file, `ls -lR` of a tree of small files,
//! and `stat` of files nothing has looked at yet. The plugin's `-- CMD` runs the timings,
//! as the mount lives in the plugin's mount namespace.

use std::time::Duration;

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// The Deployment whose volume is mounted ([`TestNamespace::deploy_app_with_volume`]).
const APP: &str = "vol";
/// The big file's size, MiB.
const BIG_MIB: u64 = 128;
/// Files in the tree `ls -lR` lists.
const TREE_FILES: u32 = 1000;
/// Files `stat` is timed on, one by one.
const STATS: u32 = 50;

/// What the mount measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MountTimes {
    pub(crate) read_mib_s: f64,
    pub(crate) write_mib_s: f64,
    /// `ls -lR` of the tree.
    pub(crate) list_tree: Duration,
    /// One `stat` of a file not yet looked at, on average, less what the same `stat` of a
    /// local file takes (starting the program).
    pub(crate) stat: Duration,
}

/// Intercepts `vol` with its volume mounted on `workstation`, fills the volume in the pod
/// the session started (an emptyDir starts empty with each pod), and times the four
/// operations.
pub(crate) fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    workstation: &Workstation,
) -> anyhow::Result<MountTimes> {
    let kubectl = format!(
        "{} --kubeconfig {} -n {}",
        cluster.kubectl.display(),
        cluster.admin_kubeconfig.display(),
        ns.name
    );
    let fill = format!(
        "cd /data && dd if=/dev/zero of=big bs=1M count={BIG_MIB} 2>/dev/null && \
         mkdir -p list stat && \
         i=0; while [ $i -lt {TREE_FILES} ]; do echo $i > list/f$i; i=$((i+1)); done; \
         i=0; while [ $i -lt {STATS} ]; do echo $i > stat/f$i; i=$((i+1)); done"
    );
    let data = "$KUBEDEV_ROOT/data";
    // GNU date gives nanoseconds; awk subtracts. Each step prints its seconds.
    let session = kubedev::session::naming::default_name(APP);
    let script = format!(
        "set -e; pod=$({kubectl} get pods -l kubedev.io/session={session} \
         -o jsonpath='{{.items[0].metadata.name}}'); {kubectl} exec $pod -c app -- sh -c '{fill}'; \
         now() {{ date +%s.%N; }}; took() {{ awk \"BEGIN {{ print $(now) - $1 }}\"; }}; \
         t=$(now); cat {data}/big > /dev/null; echo read $(took $t); \
         t=$(now); dd if=/dev/zero of={data}/written bs=1M count={BIG_MIB} conv=fsync 2>/dev/null; \
         echo write $(took $t); rm {data}/written; \
         t=$(now); ls -lR {data}/list > /dev/null; echo list $(took $t); \
         t=$(now); i=0; while [ $i -lt {STATS} ]; do stat {data}/stat/f$i > /dev/null; \
         i=$((i+1)); done; echo stat $(took $t); \
         t=$(now); i=0; while [ $i -lt {STATS} ]; do stat / > /dev/null; \
         i=$((i+1)); done; echo local $(took $t)"
    );
    let output = workstation.plugin_ok(
        cluster,
        "kubectl-intercept",
        &[
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
            &script,
        ],
    );
    let seconds = |step: &str| -> anyhow::Result<f64> {
        output
            .lines()
            .find_map(|line| line.strip_prefix(step)?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {step} timing in: {output}"))
    };
    let mib = BIG_MIB as f64;
    Ok(MountTimes {
        read_mib_s: mib / seconds("read")?,
        write_mib_s: mib / seconds("write")?,
        list_tree: Duration::from_secs_f64(seconds("list")?),
        stat: Duration::from_secs_f64(
            (seconds("stat")? - seconds("local")?).max(0.0) / f64::from(STATS),
        ),
    })
}

/// The tree's size, for the report.
pub(crate) const fn tree_files() -> u32 {
    TREE_FILES
}

/// The big file's size, for the report.
pub(crate) const fn big_mib() -> u64 {
    BIG_MIB
}
