//! `kubectl ingest`: a workload's environment and volumes on this machine, no traffic moved.

use clap::Parser;
use kubedev::cli::{Manage, ModeArgs, SessionArgs};
use kubedev::cluster::ClusterArgs;
use kubedev::inject::Mode;
use kubedev::workload::WorkloadRef;

const EXAMPLES: &str = "\
Examples:
  # Write the environment of deployment/web's only container to web.env, and stay
  kubectl ingest web --env-file web.env

  # Run a command with the container's environment; the session ends with it
  kubectl ingest web -- env

  # Pick the container of a multi-container StatefulSet
  kubectl ingest statefulset/db -c postgres --detach";

/// Bring a container's environment and read-only volumes to this machine, with the
/// cluster's network, without moving any of its traffic.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl ingest",
    bin_name = "kubectl ingest",
    version,
    after_help = EXAMPLES,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    manage: Option<Manage>,

    /// The workload: NAME (a Deployment) or KIND/NAME (deployment, statefulset, replicaset).
    /// A workload named list, leave or status is given as deployment/NAME.
    #[arg(required = true)]
    workload: Option<WorkloadRef>,

    #[command(flatten)]
    session: SessionArgs,

    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kubedev::cli::main(
        Mode::Ingest,
        cli.cluster,
        cli.manage,
        cli.workload,
        cli.session,
        ModeArgs::default(),
    )
}
