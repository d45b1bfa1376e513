//! The command line the three plugins share: the session flags, and the `list`, `leave`
//! and `status` subcommands.

use std::path::PathBuf;
use std::time::Duration;

use kubedev::cidr::{self, Cidr};
use kubedev::cluster::ClusterArgs;
use kubedev::control::{PodPort, ProxyChoices};
use kubedev::duration::parse_duration;
use kubedev::env::EnvSyntax;
use kubedev::inject::parse_resource_list;
use kubedev::mount::MountChoice;
use kubedev::session::PortMapping;
use kubedev::session::lease::SHORTEST_LEASE;
use kubedev::session::naming;
use kubedev::workload::WorkloadName;

/// Resource quantities by name (`cpu`, `memory`).
pub(crate) type ResourceList =
    std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

/// What every plugin's command line has besides its mode's own flags: a subcommand or a
/// workload, the session flags and the cluster flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PluginArgs {
    /// A subcommand (`connect`, `list`, `leave`, `role`, `status`, `version`, `diagnose`,
    /// `config`, `gather-logs`), in place of a session on a workload.
    #[command(subcommand)]
    pub manage: Option<Manage>,

    /// The workload: NAME (the Deployment, StatefulSet, ReplicaSet, DaemonSet or Argo
    /// Rollout of that name) or KIND/NAME (deployment, statefulset, replicaset, daemonset,
    /// rollout, or deploy, sts, rs, ds, ro); pod/NAME for a pod no controller manages,
    /// which is deleted and created again. A workload named like a subcommand (connect,
    /// list, leave, role, status, version, diagnose, config, gather-logs, help) is given as
    /// KIND/NAME.
    #[arg(required_unless_present = "filename")]
    pub workload: Option<WorkloadName>,

    /// Start the sessions of this file together (kubedev.yaml; its schema:
    /// docs/kubedev.schema.json), and end them together: at Ctrl-C, when a session's
    /// command exits or when one of them ends. The other flags here apply to every session.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "workload"
    )]
    pub filename: Option<PathBuf>,

    /// How the session runs.
    #[command(flatten)]
    pub session: SessionArgs,

    /// The plugin's own log on stderr, as kubectl's -v: 1-3 what it does, 4-5 how, 6-8
    /// the API calls too, 9 everything (tunneld's log: KUBEDEV_LOG, e.g. debug).
    #[arg(short = 'v', long = "v", global = true, value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// Which cluster, user and namespace.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The agent image of this release.
pub const DEFAULT_AGENT_IMAGE: &str =
    concat!("ghcr.io/kubedev/kubedev-agent:", env!("CARGO_PKG_VERSION"));

/// Flags every mode takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// The app container (needed when the pods have several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,

    /// Write the container's environment to this file (readable by you alone), in --env-syntax.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Write the container's environment to this file (readable by you alone) as a JSON object.
    #[arg(long, value_name = "FILE")]
    pub env_json: Option<PathBuf>,

    /// The syntax of --env-file.
    #[arg(long, value_enum, default_value_t = EnvSyntax::Docker, requires = "env_file")]
    pub env_syntax: EnvSyntax,

    /// Where to mount the container's volumes: DIR (DIR:ro for read-only), true (a new
    /// temporary directory, printed: the default), or false; a volume mounted at /x/y in
    /// the container is at DIR/x/y. Files are read and written as the agent's user: the
    /// app's, or uid 65532 where the app runs as root, which cannot change files only root
    /// may. Needs sshfs (macFUSE's on macOS; Windows has no mounts yet).
    #[arg(long, value_name = "DIR|true|false")]
    pub mount: Option<MountChoice>,

    /// PORT[/udp]: forward this port of this machine's localhost to the same port of a
    /// pod's own localhost while the session lasts (a sidecar's admin port, a debug
    /// endpoint that listens on localhost only). Repeat for several.
    #[arg(long = "to-pod", value_name = "PORT[/udp]")]
    pub to_pod: Vec<PodPort>,

    /// How the session lives.
    #[command(flatten)]
    pub life: SessionLife,
}

/// How a session lives: its name, agent image, lease, network choices and what it runs;
/// `connect` takes these too.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionLife {
    /// Name of the session (default: the workload's name and your login name, as
    /// web-alice; for `connect`, connect-alice). `leave` also takes the workload's name.
    #[arg(long, value_parser = parse_session_name)]
    pub name: Option<String>,

    /// The agent image (default: the one `config set-agent-image` chose for the kube
    /// context, else this release's).
    #[arg(long, env = "KUBEDEV_AGENT_IMAGE", value_name = "IMAGE")]
    pub agent_image: Option<String>,

    /// Return once the session is live; it lasts until `leave`.
    #[arg(long, conflicts_with = "command")]
    pub detach: bool,

    /// What the agent container requests, over the defaults (cpu=10m,memory=32Mi), as
    /// `kubectl set resources` takes them; `memory=` takes one off.
    #[arg(long, value_name = "LIST", default_value = "", hide_default_value = true, value_parser = parse_resource_list)]
    pub agent_requests: ResourceList,

    /// The agent container's limits, over the default (memory=512Mi); `memory=` takes it
    /// off (a ResourceQuota on limits.cpu needs e.g. cpu=500m).
    #[arg(long, value_name = "LIST", default_value = "", hide_default_value = true, value_parser = parse_resource_list)]
    pub agent_limits: ResourceList,

    /// Pause Flux on the workload (and on the Service the session changes) while the
    /// session lasts: sets kustomize.toolkit.fluxcd.io/reconcile=disabled, taken off at
    /// leave. Without it, a Flux sync takes the session back and kubedev ends it, saying
    /// so. See docs/gitops.md (Argo CD too).
    #[arg(long)]
    pub pause_flux: bool,

    /// How long to wait for the pods to be ready, e.g. 90s or 5m; a replace also waits out
    /// the grace period of the old pods still stopping.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long the session outlives this machine losing the cluster (the laptop asleep,
    /// off, or offline): tunneld renews the session's lease while it runs; once the lease
    /// has run out, the next kubedev command anyone runs in the namespace restores the
    /// workload. At least 3s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_lease)]
    pub lease: Duration,

    /// Route these ranges to the cluster even where this machine has a route of its own
    /// for them (a VPN's, a bridge's). Comma-separated or repeated; kept by tunneld for
    /// the kube context until it exits.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    pub also_proxy: Vec<Cidr>,

    /// Never route these ranges to the cluster; wins over --also-proxy. Comma-separated or
    /// repeated; kept by tunneld for the kube context until it exits.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    pub never_proxy: Vec<Cidr>,

    /// Run this command with the container's environment (connect: with the cluster's
    /// network only); the session ends when it exits, with its exit status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl SessionLife {
    /// What `--also-proxy` and `--never-proxy` ask of tunneld's routes.
    pub fn proxy_choices(&self) -> ProxyChoices {
        ProxyChoices {
            also_proxy: self.also_proxy.clone(),
            never_proxy: self.never_proxy.clone(),
        }
    }
}

/// `connect`, `list`, `leave`, `role`, `status`, `version`, `diagnose`, `config` and
/// `gather-logs`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Manage {
    /// The cluster's network on this machine (service names, pod and service IPs), with no
    /// workload touched: an agent pod of the session's own runs in the namespace until
    /// the session ends (default name: connect- and your login name). The whole machine
    /// gets the network where the network helper runs (or as root); elsewhere `-- CMD` and
    /// tunneld's proxy do.
    #[command(after_help = "Examples:\n  \
        # Until Ctrl-C\n  \
        kubectl intercept connect -n shop\n\n  \
        # In the background; end it with `leave connect`\n  \
        kubectl intercept connect --detach\n\n  \
        # Run the tests against the cluster's services, then disconnect\n  \
        kubectl intercept connect -- make integration-test")]
    Connect(SessionLife),
    /// List the kubedev sessions in the namespace (with none, the workloads a session can
    /// start on, their containers and Service ports).
    #[command(after_help = "Examples:\n  \
        # This namespace's sessions, and who holds each\n  \
        kubectl intercept list -n shop\n\n  \
        # Every namespace's, as JSON\n  \
        kubectl intercept list -A -o json\n\n  \
        # End each of this namespace's sessions\n  \
        kubectl intercept list -o name | xargs -n1 kubectl intercept leave")]
    List {
        /// Print the sessions as JSON or YAML, as a wider table (the linked pods by name),
        /// or by name only, one a line.
        #[arg(short = 'o', long, value_enum)]
        output: Option<ListOutput>,
        /// List the sessions in every namespace (where the role may list workloads
        /// cluster-wide; else in the namespaces of this machine's sessions and the current one).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// End a session (or all of this machine's) and restore its workload.
    #[command(after_help = "Examples:\n  \
        # End session web (see `list`) and wait for the restored pods\n  \
        kubectl intercept leave web -n shop\n\n  \
        # End every session of this machine, in every namespace\n  \
        kubectl intercept leave --all\n\n  \
        # End the sessions that `kubectl intercept -f kubedev.yaml --detach` started\n  \
        kubectl intercept leave -f kubedev.yaml\n\n  \
        # A session whose developer is away, its lease still live\n  \
        kubectl intercept leave web --force")]
    Leave {
        /// The session's name, as `list` shows it.
        #[arg(required_unless_present_any = ["all", "filename"])]
        name: Option<String>,
        /// End the sessions of this file (what `-f FILE` started, detached or not).
        #[arg(short = 'f', long = "filename", value_name = "FILE", conflicts_with_all = ["name", "all"])]
        filename: Option<PathBuf>,
        /// End every session of this machine, in every namespace; sessions of other
        /// machines are named, and left alone.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// End NAME even though another machine holds it (its lease is live): its
        /// developer's traffic goes back to the cluster without a word to them.
        #[arg(long, conflicts_with = "all")]
        force: bool,
        /// How long to wait for the restored pods (e.g. 90s, 5m).
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the Role kubedev needs in a namespace, with the Secret it names (apply them
    /// with `kubectl intercept role -n NAMESPACE | kubectl apply -f -`, then bind the Role
    /// to the developers).
    #[command(after_help = "Examples:\n  \
        # As the namespace's admin: the Role, then a binding for a developer\n  \
        kubectl intercept role -n shop | kubectl apply -f -\n  \
        kubectl create rolebinding kubedev-alice -n shop --role kubedev-developer --user alice")]
    Role,
    /// Show tunneld's state: the cluster network on this machine and the linked agents.
    #[command(after_help = "Examples:\n  \
        # How the cluster's ranges are routed here, the proxy, the linked agents\n  \
        kubectl intercept status\n\n  \
        # The proxy's URL, for a tool of your own\n  \
        kubectl intercept status -o json | jq -r .proxy.socksUrl")]
    Status {
        /// Print the state as JSON or YAML instead of text.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Print the plugin's version, the tunneld it runs and that one's version, and the
    /// agent image the kube context gets.
    #[command(after_help = "Examples:\n  \
        kubectl intercept version\n  \
        kubectl intercept version -o json")]
    Version {
        /// Print them as JSON or YAML instead of text.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Check what a session needs, each with what to do if it fails: the API server and
    /// its round-trip time, every permission of the Role, the agent image on a node (a pod
    /// runs it once), the versions, and on this machine tunneld's network, cluster names
    /// and sshfs. Exits 1 if a check failed.
    #[command(after_help = "Examples:\n  \
        kubectl intercept diagnose -n shop\n  \
        kubectl intercept diagnose -o json")]
    Diagnose {
        /// Print the checks as JSON or YAML instead of text.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Show or change kubedev's settings (the agent image for each kube context), kept in
    /// $KUBEDEV_CONFIG, else $XDG_CONFIG_HOME/kubedev/config.yaml, else
    /// ~/.config/kubedev/config.yaml (on Windows %APPDATA%\kubedev\config.yaml; `config
    /// view` shows which).
    #[command(subcommand)]
    Config(ConfigAction),
    /// Gather what a bug report needs into one archive: tunneld's logs and state, the
    /// sessions' records and leases, and each agent pod's status and logs.
    #[command(after_help = "Examples:\n  \
        # This namespace's sessions, into kubedev-logs-TIME.tar.gz here\n  \
        kubectl intercept gather-logs -n shop\n\n  \
        # Every namespace's, to a file of your choice\n  \
        kubectl intercept gather-logs -A --output-file /tmp/kubedev-logs.tar.gz")]
    GatherLogs {
        /// Where to write the archive (default: kubedev-logs-TIME.tar.gz here).
        #[arg(long, value_name = "FILE")]
        output_file: Option<PathBuf>,
        /// Gather the sessions of every namespace (see `list -A`).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

/// What `config` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigAction {
    /// Use IMAGE as the agent image for the kube context (the current one, or --context),
    /// or for every context without an image of its own (--all-contexts).
    #[command(after_help = concat!(
        "Examples:\n  \
        # After `make push-agent REGISTRY=registry.example.com/team` (any of the three plugins)\n  \
        kubectl intercept config set-agent-image registry.example.com/team/kubedev-agent:",
        env!("CARGO_PKG_VERSION"),
        "\n\n  \
        # The same image whatever the context\n  \
        kubectl intercept config set-agent-image --all-contexts ghcr.io/my-org/kubedev-agent:",
        env!("CARGO_PKG_VERSION")
    ))]
    SetAgentImage {
        /// The image, as the cluster's nodes pull it (REGISTRY/REPOSITORY:TAG).
        image: String,
        /// Set it for every context without an image of its own.
        #[arg(long)]
        all_contexts: bool,
    },
    /// Print the settings file and the agent image the kube context gets.
    #[command(after_help = "Examples:\n  \
        kubectl intercept config view\n  \
        kubectl intercept config view --context staging")]
    View,
}

/// What `list -o` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(
    missing_docs,
    reason = "clap prints a variant's doc as its help; the names say it all"
)]
pub enum ListOutput {
    Json,
    Yaml,
    Wide,
    Name,
}

/// A machine-readable output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(
    missing_docs,
    reason = "clap prints a variant's doc as its help; the names say it all"
)]
pub enum Output {
    Json,
    Yaml,
}

fn parse_session_name(text: &str) -> Result<String, String> {
    naming::check_name(text).map(|()| text.to_owned())
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if lease < SHORTEST_LEASE {
        return Err(format!(
            "a lease shorter than {}s would run out between renewals",
            SHORTEST_LEASE.as_secs()
        ));
    }
    Ok(lease)
}

/// A mode's own part of a session request.
#[derive(Debug, Clone, Default)]
pub struct ModeArgs {
    /// The ports asked for (`--port`).
    pub ports: Vec<PortMapping>,
    /// intercept: the Service to take over (`--service`).
    pub service: Option<String>,
    /// intercept: the address on this machine that receives the connections.
    pub address: Option<String>,
    /// intercept: only the HTTP requests that match come here.
    pub filter: Option<kubedev_protocol::HttpFilter>,
    /// intercept: copies come here, and the app still answers (`--wiretap`).
    pub wiretap: bool,
    /// intercept: the Secret of an app that terminates TLS itself (`--tls-secret`).
    pub tls_secret: Option<String>,
}

/// Reads `--address`: an address of this machine (`[::1]` as `::1`) or a host name,
/// without a port (the port comes from `--port`).
pub fn parse_local_address(text: &str) -> Result<String, String> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(unbracketed.to_owned());
    }
    let host_name = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
    };
    match host_name(text) {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "expected an address or host name of this machine (127.0.0.1, ::1, localhost), \
             without a port (--port gives it), got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_address_is_an_address_or_a_host_name_without_a_port() {
        assert_eq!(parse_local_address("[::1]").as_deref(), Ok("::1"));
        assert_eq!(parse_local_address("::1").as_deref(), Ok("::1"));
        assert_eq!(parse_local_address("127.0.0.1").as_deref(), Ok("127.0.0.1"));
        assert_eq!(parse_local_address("localhost").as_deref(), Ok("localhost"));
        let with_port = parse_local_address("127.0.0.1:3000").expect_err("a port");
        assert!(with_port.contains("without a port"), "{with_port}");
        assert!(parse_local_address("[::1]:3000").is_err());
        assert!(parse_local_address("").is_err());
    }

    #[test]
    fn leases_outlast_renewals() {
        assert_eq!(parse_lease("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_lease("2s").is_err());
    }
}
