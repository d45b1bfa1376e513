//! `kubectl ingest`: a workload's environment and volumes on this machine, no traffic moved.

use clap::Parser;
use kubedev::cluster::ClusterArgs;
use kubedev::workload::WorkloadRef;

const EXAMPLES: &str = "\
Examples:
  # Write the environment of deployment/web's only container to web.env
  kubectl ingest web --env-file web.env

  # Pick the container of a multi-container StatefulSet
  kubectl ingest statefulset/db -c postgres";

/// Bring a container's environment and read-only volumes to this machine, with the
/// cluster's network, without moving any of its traffic.
#[derive(Debug, Parser)]
#[command(name = "kubectl ingest", version, after_help = EXAMPLES)]
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
        "ingesting {} is not available in kubedev {} yet",
        cli.workload,
        env!("CARGO_PKG_VERSION")
    )
}
