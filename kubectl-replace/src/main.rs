//! `kubectl replace-container`: swap a container for this machine while the session lasts.

use clap::Parser;
use kubedev::cluster::ClusterArgs;
use kubedev::workload::WorkloadRef;

const EXAMPLES: &str = "\
Examples:
  # Replace deployment/web's container; its ports are served from localhost
  kubectl replace-container web

  # Replace one container of a multi-container pod, mapping port 8080 to local 3000
  kubectl replace-container web -c api --port 3000:8080";

/// Remove a container from a workload's pods and put this machine in its place: all of
/// its traffic comes here, and the container is restored exactly when the session ends.
#[derive(Debug, Parser)]
#[command(name = "kubectl replace-container", version, after_help = EXAMPLES)]
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
        "replacing a container of {} is not available in kubedev {} yet",
        cli.workload,
        env!("CARGO_PKG_VERSION")
    )
}
