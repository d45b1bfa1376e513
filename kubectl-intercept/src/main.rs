//! `kubectl intercept`: send a workload's service traffic to a process on this machine.

use clap::{CommandFactory as _, Parser};
use kubedev::mode::Mode;
use kubedev::session::PortMapping;
use kubedev_cli::{ModeArgs, PluginArgs};
use kubedev_protocol::HttpFilter;

const EXAMPLES: &str = concat!(
    "\
Examples:
  # Send every request for deployment/web's service port to localhost:8080, until Ctrl-C
  kubectl intercept web --port 8080

  # Only requests with the header x-dev: alice; every other request still reaches the app
  kubectl intercept web --port 8080 --http-header x-dev=alice

  # The app terminates TLS with the certificate in Secret web-tls: the agent does too
  kubectl intercept web --port 8443:https --http-header x-dev=alice --tls-secret web-tls

  # Wiretap: copies of the requests come here, and the app still answers every one
  kubectl intercept web --port 8080 --wiretap --name web-copy

  # The service has several ports: take port 80 (or its name, e.g. http)
  kubectl intercept web --port 8080:80

  # Run the local server with the container's environment; the session ends with it
  kubectl intercept web --port 8080 -- ./server --listen :8080

  # Keep the session in the background, then end it
  kubectl intercept web --port 8080 --detach --env-file web.env
  kubectl intercept list
  kubectl intercept leave web

  # The sessions described in kubedev.yaml, started together and ended together
  kubectl intercept -f kubedev.yaml

  # A StatefulSet in another namespace
  kubectl intercept statefulset/db -n data --port 5432

  # A pod no controller manages: deleted and created again with the agent, and as it was
  kubectl intercept pod/scratch --port 8080

  # A VPN routes 10.96.0.0/12 already: send it through the cluster anyway
  kubectl intercept web --port 8080 --also-proxy 10.96.0.0/12

  # How the cluster's ranges are routed on this machine, and why
  kubectl intercept status

  # Once per kube context: the agent image your nodes pull (after `make push-agent`)
  kubectl intercept config set-agent-image registry.example.com/team/kubedev-agent:",
    env!("CARGO_PKG_VERSION"),
    "

  # Sessions in every namespace; with none, the workloads a session can start on
  kubectl intercept list -A

  # End this machine's sessions everywhere; gather logs for a bug report
  kubectl intercept leave --all
  kubectl intercept gather-logs"
);

/// Route requests for a workload's service ports to a process on this machine, with the
/// workload's environment and the cluster's network available locally. The app keeps
/// running in the cluster; the workload is restored exactly when the session ends.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl intercept",
    bin_name = "kubectl intercept",
    version,
    after_help = EXAMPLES,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// LOCAL[:SERVICE-PORT]: send the service port (number or name; optional when the
    /// service has one port) to LOCAL on this machine. Repeat for several ports.
    #[arg(short = 'p', long = "port", value_name = "LOCAL[:SERVICE-PORT]")]
    ports: Vec<PortMapping>,

    /// The Service whose traffic to take (when several select the pods).
    #[arg(long)]
    service: Option<String>,

    /// The address on this machine that receives the connections (::1 for a server that
    /// listens on IPv6's loopback alone).
    #[arg(long, default_value = "127.0.0.1", value_parser = kubedev_cli::parse_local_address)]
    address: String,

    /// NAME=VALUE: only HTTP requests with this header come here (repeat: all must match);
    /// every other request goes on to the app.
    #[arg(long = "http-header", value_name = "NAME=VALUE", value_parser = parse_header)]
    http_headers: Vec<(String, String)>,

    /// Only HTTP requests whose path starts with this come here.
    #[arg(long, value_name = "PREFIX")]
    http_path_prefix: Option<String>,

    /// Copy, don't take: a copy of each connection (with --http-header or
    /// --http-path-prefix, of each matching HTTP request) comes here, its answer is
    /// discarded, and the app still answers the real one. A copy that falls behind is
    /// dropped, never slowing the real request; `status` counts both. Shares the workload
    /// with any other intercept or wiretap.
    #[arg(long)]
    wiretap: bool,

    /// SECRET: the app terminates TLS itself with the certificate and key in this
    /// kubernetes.io/tls Secret; the agent does too, to read the requests --http-header and
    /// --http-path-prefix choose, and speaks TLS on to the app (which must present that
    /// certificate) and to this machine (whose server may present any).
    #[arg(long, value_name = "SECRET")]
    tls_secret: Option<String>,

    #[command(flatten)]
    common: PluginArgs,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

fn main() -> std::process::ExitCode {
    // First: a command's network namespace is made before anything starts a thread.
    if let Some(code) = kubedev_cli::trampoline_if_asked() {
        return code;
    }
    if let Some(code) = kubedev_cli::complete_if_asked(Mode::Intercept, &Cli::command()) {
        return code;
    }
    let cli = Cli::parse();
    let filtered = !cli.http_headers.is_empty() || cli.http_path_prefix.is_some();
    let mode_args = ModeArgs {
        ports: cli.ports,
        service: cli.service,
        address: Some(cli.address),
        filter: filtered.then_some(HttpFilter {
            headers: cli.http_headers,
            path_prefix: cli.http_path_prefix,
        }),
        wiretap: cli.wiretap,
        tls_secret: cli.tls_secret,
    };
    kubedev_cli::main(Mode::Intercept, cli.common, mode_args)
}
