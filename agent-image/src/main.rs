//! kubedev-agent: the traffic agent that runs as a container in the workload's pods.

mod flows;
mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// The in-pod traffic agent of kubedev. It listens on 127.0.0.1 only, so it is reachable
/// solely through the Kubernetes API's port-forward, and opens TCP and UDP flows and
/// name lookups from inside the pod for the kubedev session that knows its token.
#[derive(Debug, Parser)]
#[command(name = "kubedev-agent", version)]
struct Cli {
    /// Where to listen. Keep it on loopback: port-forward reaches it, nothing else does.
    #[arg(long, env = "KUBEDEV_AGENT_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], kubedev::protocol::AGENT_PORT)))]
    listen: SocketAddr,

    /// The session token; the plugins set it in the pod spec.
    #[arg(long, env = "KUBEDEV_AGENT_TOKEN", hide_env_values = true)]
    token: String,

    /// Seconds a UDP flow may stay idle before the agent closes it.
    #[arg(long, env = "KUBEDEV_AGENT_UDP_IDLE_SECS", default_value_t = 60)]
    udp_idle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kubedev::logging::init();
    let settings = serve::Settings {
        token: cli.token,
        udp_idle: Duration::from_secs(cli.udp_idle_secs),
    };
    serve::run(cli.listen, settings).await
}
