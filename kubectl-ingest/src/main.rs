//! `kubectl ingest`: a workload's environment and volumes on this machine, no traffic moved.

use clap::{CommandFactory as _, Parser};
use kubedev::mode::Mode;
use kubedev_cli::{ModeArgs, PluginArgs};

const EXAMPLES: &str = concat!(
    "\
Examples:
  # Write the environment of deployment/web's only container to web.env, and stay
  kubectl ingest web --env-file web.env

  # Run a command with the container's environment; the session ends with it
  kubectl ingest web -- env

  # Pick the container of a multi-container StatefulSet
  kubectl ingest statefulset/db -c postgres --detach

  # A pod no controller manages: created again with the agent, and as it was at the end
  kubectl ingest pod/scratch -- env

  # Once per kube context: the agent image your nodes pull (after `make push-agent`)
  kubectl ingest config set-agent-image registry.example.com/team/kubedev-agent:",
    env!("CARGO_PKG_VERSION"),
    "

  # Sessions in every namespace; with none, the workloads a session can start on
  kubectl ingest list -A

  # End this machine's sessions everywhere; gather logs for a bug report
  kubectl ingest leave --all
  kubectl ingest gather-logs"
);

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
    #[command(flatten)]
    common: PluginArgs,
}

fn main() -> std::process::ExitCode {
    // First: a command's network namespace is made before anything starts a thread.
    if let Some(code) = kubedev_cli::trampoline_if_asked() {
        return code;
    }
    if let Some(code) = kubedev_cli::complete_if_asked(Mode::Ingest, &Cli::command()) {
        return code;
    }
    let cli = Cli::parse();
    kubedev_cli::main(Mode::Ingest, cli.common, ModeArgs::default())
}
