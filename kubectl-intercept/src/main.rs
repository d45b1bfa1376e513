//! `kubectl intercept`: send a workload's service traffic to a process on this machine.

use clap::Parser;
use kubedev::cluster::ClusterArgs;
use kubedev::workload::WorkloadRef;

const EXAMPLES: &str = "\
Examples:
  # Send every request for deployment/web's service port to localhost:8080
  kubectl intercept web --port 8080

  # Only requests carrying the header x-dev=alice; everything else stays on the app
  kubectl intercept web --port 8080 --http-header x-dev=alice

  # A StatefulSet in another namespace
  kubectl intercept statefulset/db -n data --port 5432";

/// Route requests for a workload's service ports to a process on this machine,
/// with the workload's environment, volumes and cluster network available locally.
#[derive(Debug, Parser)]
#[command(name = "kubectl intercept", version, after_help = EXAMPLES)]
struct Cli {
    /// The workload: NAME (a Deployment) or KIND/NAME (deployment, statefulset, replicaset).
    workload: WorkloadRef,

    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> std::process::ExitCode {
    kubedev::cli::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "intercepting {} is not available in kubedev {} yet",
        cli.workload,
        env!("CARGO_PKG_VERSION")
    )
}
