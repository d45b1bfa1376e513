//! `kubectl replace-container`: swap a container for this machine while the session lasts.

use clap::{CommandFactory as _, Parser};
use kubedev::mode::Mode;
use kubedev::session::PortMapping;
use kubedev_cli::{ModeArgs, PluginArgs};

const EXAMPLES: &str = concat!(
    "\
Examples:
  # Replace deployment/web's container; its ports are served from the same ports here
  kubectl replace-container web

  # Replace one container of a multi-container pod, mapping its port 8080 to local 3000
  kubectl replace-container web -c api --port 3000:8080

  # Run the replacement with the container's environment; the session ends with it
  kubectl replace-container web -- ./server

  # A pod no controller manages: created again with the agent in the container's place
  kubectl replace-container pod/worker-0

  # Once per kube context: the agent image your nodes pull (after `make push-agent`)
  kubectl replace-container config set-agent-image registry.example.com/team/kubedev-agent:",
    env!("CARGO_PKG_VERSION"),
    "

  # Sessions in every namespace; with none, the workloads a session can start on
  kubectl replace-container list -A

  # End this machine's sessions everywhere; gather logs for a bug report
  kubectl replace-container leave --all
  kubectl replace-container gather-logs"
);

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
    /// LOCAL[:CONTAINER-PORT]: serve the container's port (number or name) from LOCAL here
    /// (default: every declared port from the same port number).
    #[arg(short = 'p', long = "port", value_name = "LOCAL[:CONTAINER-PORT]")]
    ports: Vec<PortMapping>,

    /// The address on this machine that receives the connections.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,

    #[command(flatten)]
    common: PluginArgs,
}

fn main() -> std::process::ExitCode {
    // First: a command's network namespace is made before anything starts a thread.
    if let Some(code) = kubedev_cli::trampoline_if_asked() {
        return code;
    }
    if let Some(code) = kubedev_cli::complete_if_asked(Mode::Replace, &Cli::command()) {
        return code;
    }
    let cli = Cli::parse();
    let mode_args = ModeArgs {
        ports: cli.ports,
        service: None,
        address: Some(cli.address),
        ..ModeArgs::default()
    };
    kubedev_cli::main(Mode::Replace, cli.common, mode_args)
}
