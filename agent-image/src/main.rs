//! kubedev-agent: the traffic agent that runs as a container in the workload's pods.

use clap::Parser;

/// The in-pod traffic agent of kubedev. It listens on 127.0.0.1 only, so it is reachable
/// solely through the Kubernetes API's port-forward.
#[derive(Debug, Parser)]
#[command(name = "kubedev-agent", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "kubedev-agent {} has no tunnel protocol yet",
        env!("CARGO_PKG_VERSION")
    )
}
