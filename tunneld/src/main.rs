//! tunneld: the local daemon the kubedev plugins share (one per user and kube context).

// What serves the machine's TUN device (its DNS answers, its UDP flows, the network state
// it keeps) runs on Linux only until the macOS and Windows devices come
// (docs/platforms.md); elsewhere it is built but never called.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

mod agents;
mod cluster_ranges;
mod daemon;
mod files_relay;
mod incoming;
mod local_network;
#[cfg(target_os = "linux")]
mod namespace_sockets;
mod network;
#[cfg(target_os = "linux")]
mod network_helper;
mod outbound;
mod proxy;
#[cfg(test)]
mod test_agent;
mod to_pod;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use kubedev::cidr::{self, Cidr};
use kubedev::cluster::ClusterArgs;
use kubedev::control::ProxyChoices;

use daemon::{Daemon, Settings};

/// The examples under `--help`, with this tunneld's own path and user in them.
#[cfg(target_os = "linux")]
fn examples() -> String {
    format!(
        "The plugins start tunneld when a session needs it; it exits when no session is left.
Examples:
  # Serve the control socket for the current kube context
  tunneld --socket /run/user/1000/kubedev/tunneld-dev.sock

  # Tunnels only: no TUN device, routes or DNS changes
  tunneld --socket /run/user/1000/kubedev/tunneld-dev.sock --no-network

  # As root, once: the cluster's network for this whole machine, for your tunnelds
  {}",
        network_helper::client::start_command()
    )
}

/// The examples under `--help`.
#[cfg(not(target_os = "linux"))]
fn examples() -> String {
    "The plugins start tunneld when a session needs it; it exits when no session is left.
Example:
  # Serve the control channel named by this endpoint file, for the current kube context
  tunneld --socket tunneld-dev.sock --no-network"
        .to_owned()
}

/// The local daemon that the kubectl intercept, replace-container and ingest plugins
/// share. It keeps a tunnel to every agent pod of every session (following pod restarts
/// and replicas), serves a SOCKS5 and HTTP proxy into the cluster's network on 127.0.0.1
/// and, with root, brings the cluster's network here: routes for the pod and service
/// ranges into a TUN device, and DNS for the cluster's names: as root, or through the
/// network helper (`tunneld network-helper --help`), which runs as root for it.
#[derive(Debug, Parser)]
#[command(name = "tunneld", version)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,

    /// The control socket to serve.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,

    /// Ranges to route into the cluster (default: discovered from the cluster).
    #[arg(long = "route", value_name = "CIDR", value_parser = cidr::parse)]
    routes: Vec<Cidr>,

    /// Route these ranges into the cluster even where this machine has a route of its own
    /// for them (comma-separated or repeated).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    also_proxy: Vec<Cidr>,

    /// Never route these ranges into the cluster (comma-separated or repeated).
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    never_proxy: Vec<Cidr>,

    /// Do not create the TUN device, routes or DNS settings.
    #[arg(long)]
    no_network: bool,

    /// The proxy's port on 127.0.0.1 (default: one the kernel picks; `status` shows it).
    #[arg(long, env = "KUBEDEV_PROXY_PORT", default_value_t = 0)]
    proxy_port: u16,

    /// The resolver configuration to point at tunneld's DNS.
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "FILE")]
    resolv_conf: PathBuf,

    /// The network helper to ask for the machine's TUN device, routes and DNS when tunneld
    /// runs without root (used only where root listens there).
    #[cfg(target_os = "linux")]
    #[arg(
        long,
        env = "KUBEDEV_NETWORK_HELPER",
        default_value = network_helper::DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    network_helper: PathBuf,

    /// Where tunneld keeps what it must restore after a crash.
    #[arg(long, default_value = "/run/kubedev", value_name = "DIR")]
    state_dir: PathBuf,

    /// Seconds to stay up with no session.
    #[arg(long, default_value_t = 30)]
    idle_exit_secs: u64,
}

fn main() -> std::process::ExitCode {
    // Before the async runtime starts any thread.
    #[cfg(target_os = "linux")]
    if let Some(code) = namespace_sockets::serve_if_asked() {
        return code;
    }
    kubedev_process::logging::init();
    #[cfg(target_os = "linux")]
    if network_helper::asked() {
        return network_helper::main();
    }
    let matches = Cli::command().after_help(examples()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    // The log is appended to, run after run: each start is marked, with its time and pid.
    tracing::info!(
        "---- tunneld {} starting, pid {} ----",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return kubedev_process::exit_status(Err(err.into())),
    };
    kubedev_process::exit_status(runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connection = cli.cluster.connect().await?;
    let settings = Settings {
        cluster_domain: cli.cluster_domain,
        routes: cli.routes,
        proxy: ProxyChoices {
            also_proxy: cli.also_proxy,
            never_proxy: cli.never_proxy,
        },
        no_network: cli.no_network,
        proxy_port: cli.proxy_port,
        resolv_conf: cli.resolv_conf,
        #[cfg(target_os = "linux")]
        network_helper: cli.network_helper,
        state_dir: cli.state_dir,
        idle_exit: Duration::from_secs(cli.idle_exit_secs),
    };
    // What must never be routed into the tunnel: the address the connections to the API
    // server dial, which is the proxy's when they go through one.
    let first_hop = match &connection.proxy {
        Some(proxy) => proxy.uri().to_string(),
        None => connection.server,
    };
    let daemon = Daemon::new(connection.client, first_hop, settings);
    daemon.run(&cli.socket).await
}
