//! tunneld: the local daemon the kubedev plugins share (one per user and kube context).

mod agents;
mod cidrs;
mod network;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kubedev::cluster::ClusterArgs;

use agents::{AgentPool, AgentSelector};
use network::{Cidr, DNS_IP, Network, dns::DnsAnswerer, resolv::ResolvConf};

const EXAMPLES: &str = "\
Examples:
  # Carry the cluster network of namespace shop through the agents labelled app=web
  KUBEDEV_TOKEN=... tunneld -n shop --agents app=web

  # Only the tunnels, no TUN device (no root needed)
  KUBEDEV_TOKEN=... tunneld -n shop --agents app=web --no-network";

/// The local daemon that the kubectl intercept, replace-container and ingest plugins
/// share. It keeps a tunnel to every agent pod of a session (following pod restarts and
/// replicas) and, with root, brings the cluster's network here: routes for the pod and
/// service ranges into a TUN device, and DNS for the cluster's names.
#[derive(Debug, Parser)]
#[command(name = "tunneld", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,

    /// Label selector of the agent pods (in the namespace of -n).
    #[arg(long = "agents", value_name = "SELECTOR")]
    agent_labels: String,

    /// The session token the agents were given.
    #[arg(long, env = "KUBEDEV_TOKEN", hide_env_values = true)]
    token: String,

    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,

    /// Ranges to route into the cluster (default: discovered from the cluster).
    #[arg(long = "route", value_name = "CIDR")]
    routes: Vec<Cidr>,

    /// Do not create the TUN device, routes or DNS settings.
    #[arg(long)]
    no_network: bool,

    /// The resolver configuration to point at tunneld's DNS.
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "FILE")]
    resolv_conf: PathBuf,

    /// Where tunneld keeps what it must restore after a crash.
    #[arg(long, default_value = "/run/kubedev", value_name = "DIR")]
    state_dir: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEDEV_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    kubedev::cli::exit_status(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connection = cli.cluster.connect().await?;
    let selector = AgentSelector {
        namespace: connection.namespace.clone(),
        labels: cli.agent_labels.clone(),
        token: cli.token.clone(),
    };
    let pool = AgentPool::follow(connection.client.clone(), selector);

    // Held until exit: dropping it restores the resolver configuration.
    let mut _resolver = None;
    if cli.no_network {
        tracing::info!("no cluster network: --no-network");
    } else {
        let cidrs = if cli.routes.is_empty() {
            cidrs::discover(&connection.client, &connection.namespace).await
        } else {
            cli.routes.clone()
        };
        let cidrs = without_api_server(cidrs, &connection.server).await;
        match Network::create(&cidrs).await {
            Ok(network) => {
                let domain = cli.cluster_domain.trim_end_matches('.');
                let search = vec![
                    format!("{}.svc.{domain}", connection.namespace),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ];
                let (guard, upstream) =
                    ResolvConf::install(&cli.resolv_conf, &cli.state_dir, DNS_IP, &search)?;
                _resolver = Some(guard);
                let dns = Arc::new(DnsAnswerer::new(pool.clone(), domain, upstream));
                let serving = network.run(pool.clone(), dns);
                tokio::spawn(async move {
                    if let Err(err) = serving.await {
                        tracing::error!("cluster network stopped: {err:#}");
                    }
                });
            }
            Err(err) => tracing::warn!(
                "no cluster network on this machine: {err:#}. Tunnels to the agents still work; \
                 run tunneld as root for service names, pod and service IPs."
            ),
        }
    }

    wait_for_stop_signal().await?;
    tracing::info!("stopping; linked pods were: {:?}", pool.linked_pods().await);
    Ok(())
}

/// Drops any range that holds the API server's own address: routing it into the tunnel
/// would cut the tunnel's own connection.
async fn without_api_server(cidrs: Vec<Cidr>, server: &str) -> Vec<Cidr> {
    let host = server_host(server);
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(host) = host {
        if let Ok(ip) = host.parse() {
            addresses.push(ip);
        } else if let Ok(found) = tokio::net::lookup_host((host.as_str(), 443)).await {
            addresses.extend(found.map(|a| a.ip()));
        }
    }
    cidrs
        .into_iter()
        .filter(|cidr| {
            let holds_server = addresses.iter().any(|ip| cidr.contains(*ip));
            if holds_server {
                tracing::warn!("not routing {cidr}: it holds the API server's address");
            }
            !holds_server
        })
        .collect()
}

fn server_host(server: &str) -> Option<String> {
    let after_scheme = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = after_scheme.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    Some(host.to_owned())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("SIGINT handler"),
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_api_server_host() {
        assert_eq!(
            server_host("https://10.201.0.1:6443/").as_deref(),
            Some("10.201.0.1")
        );
        assert_eq!(
            server_host("https://api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            server_host("https://[fd00::1]:6443").as_deref(),
            Some("fd00::1")
        );
    }

    #[tokio::test]
    async fn never_routes_the_api_servers_address() {
        let cidrs = vec![
            "10.96.0.0/16".parse().expect("cidr"),
            "10.201.0.0/16".parse().expect("cidr"),
        ];
        let kept = without_api_server(cidrs, "https://10.201.0.1:6443").await;
        assert_eq!(kept, vec!["10.96.0.0/16".parse::<Cidr>().expect("cidr")]);
    }
}
