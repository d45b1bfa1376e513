//! kubedev-agent: the traffic agent that runs as a container in the workload's pods.

use std::net::SocketAddr;
use std::time::Duration;

use kubedev_process::signals::StopSignals;
use kubedev_protocol::AgentConfig;
use kubedev_protocol::udp_flows::IDLE_TIMEOUT;

use clap::Parser;

/// The in-pod traffic agent of kubedev. It listens on 127.0.0.1 only, so it is reachable
/// solely through the Kubernetes API's port-forward, and opens TCP and UDP flows and
/// name lookups from inside the pod for the kubedev session that knows its token.
#[derive(Debug, Parser)]
#[command(name = "kubedev-agent", version)]
struct Cli {
    /// Where to listen. Keep it on loopback: port-forward reaches it, nothing else does.
    #[arg(long, env = "KUBEDEV_AGENT_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], kubedev_protocol::AGENT_PORT)))]
    listen: SocketAddr,

    /// The session token; the plugins set it in the pod spec.
    #[arg(long, env = kubedev_protocol::AGENT_TOKEN_ENV, hide_env_values = true)]
    token: String,

    /// This pod's uid, which the handshake's proofs name (the plugins have the downward API
    /// set it).
    #[arg(long, env = kubedev_protocol::AGENT_POD_UID_ENV)]
    pod_uid: String,

    /// What the agent does besides serving sessions (JSON; the plugins set it).
    #[arg(long, env = kubedev_protocol::AGENT_CONFIG_ENV, value_parser = parse_config, default_value = "{}", hide_env_values = true)]
    config: AgentConfig,

    /// Where the certificate and key of an app that terminates TLS itself are (the plugins
    /// mount them here).
    #[arg(long, env = "KUBEDEV_AGENT_TLS_DIR", default_value = kubedev_protocol::TLS_DIR)]
    tls_dir: std::path::PathBuf,

    /// Seconds a UDP flow may stay idle before the agent closes it.
    #[arg(long, env = "KUBEDEV_AGENT_UDP_IDLE_SECS", default_value_t = IDLE_TIMEOUT.as_secs())]
    udp_idle_secs: u64,
}

/// How long the agent goes on serving after it is told to stop.
const DRAIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kubedev_process::logging::init();
    kubedev_process::limits::raise_open_files_limit();
    let settings = agent_image::Settings {
        token: cli.token,
        pod_uid: cli.pod_uid,
        udp_idle: Duration::from_secs(cli.udp_idle_secs),
        volumes_root: kubedev_protocol::VOLUMES_ROOT.into(),
        read_only_volumes: cli.config.read_only_volumes,
        tls_dir: cli.tls_dir,
    };
    let served = agent_image::run(cli.listen, settings, cli.config.listeners);
    tokio::pin!(served);
    tokio::select! {
        result = &mut served => return result,
        stopped = stop_signal() => stopped?,
    }
    // Told to stop, the pod is leaving its Services' endpoints, but every node's proxy
    // follows only within a second or two: connections sent here meanwhile are still
    // served rather than refused.
    tokio::select! {
        result = &mut served => result,
        () = tokio::time::sleep(DRAIN) => Ok(()),
    }
}

async fn stop_signal() -> anyhow::Result<()> {
    StopSignals::listen()?.recv().await;
    tracing::info!("stopping on signal");
    Ok(())
}

fn parse_config(text: &str) -> Result<AgentConfig, String> {
    serde_json::from_str(text).map_err(|err| format!("invalid agent configuration: {err}"))
}
