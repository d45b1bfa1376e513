//! tunneld: the local daemon the kubedev plugins share (one per user and kube context).

use clap::Parser;
use kubedev::cluster::ClusterArgs;

/// The local daemon that the kubectl intercept, replace-container and ingest plugins
/// start on demand and share. It owns the tunnels to the in-cluster agents and exits
/// when no session is left.
#[derive(Debug, Parser)]
#[command(name = "tunneld", version)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> std::process::ExitCode {
    kubedev::cli::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "tunneld {} has no sessions to serve yet",
        env!("CARGO_PKG_VERSION")
    )
}
