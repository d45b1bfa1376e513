//! `kubectl replace-container`: swap a container for this machine while the session lasts.

use clap::Parser;
use kubedev::cli::{Manage, ModeArgs, SessionArgs};
use kubedev::cluster::ClusterArgs;
use kubedev::inject::Mode;
use kubedev::session::PortMapping;
use kubedev::workload::WorkloadRef;

const EXAMPLES: &str = "\
Examples:
  # Replace deployment/web's container; its ports are served from the same ports here
  kubectl replace-container web

  # Replace one container of a multi-container pod, mapping its port 8080 to local 3000
  kubectl replace-container web -c api --port 3000:8080

  # Run the replacement with the container's environment; the session ends with it
  kubectl replace-container web -- ./server";

/// Remove a container from a workload's pods and put this machine in its place: all of
/// its traffic comes here, and the container is restored exactly when the session ends.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl replace-container",
    bin_name = "kubectl replace-container",
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

    /// LOCAL[:CONTAINER-PORT]: serve the container's port (number or name) from LOCAL here
    /// (default: every declared port from the same port number).
    #[arg(short = 'p', long = "port", value_name = "LOCAL[:CONTAINER-PORT]")]
    ports: Vec<PortMapping>,

    /// The address on this machine that receives the connections.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,

    #[command(flatten)]
    session: SessionArgs,

    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mode_args = ModeArgs {
        ports: cli.ports,
        service: None,
        address: Some(cli.address),
        filter: None,
    };
    kubedev::cli::main(
        Mode::Replace,
        cli.cluster,
        cli.manage,
        cli.workload,
        cli.session,
        mode_args,
    )
}
