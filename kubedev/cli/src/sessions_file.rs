//! Sessions as a file (`-f kubedev.yaml`): the sessions a repository describes, read and
//! checked whole before anything changes, each turned into what its command line would
//! have given. Its JSON Schema, from these types, is `docs/kubedev.schema.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ValueEnum as _;
use schemars::JsonSchema;
use serde::Deserialize;

use super::args::{ModeArgs, SessionArgs, SessionLife};
use super::run::is_loopback;
use kubedev::cluster::ClusterArgs;
use kubedev::env::EnvSyntax;
use kubedev::mode::Mode;
use kubedev::mount::MountChoice;
use kubedev::session::PortMapping;
use kubedev::session::naming::{check_name, default_name};
use kubedev::workload::WorkloadName;
use kubedev_protocol::HttpFilter;

/// A sessions file: the sessions `-f` starts together, one after the other, and ends
/// together.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "kubedev sessions",
    extend("$id" = "https://raw.githubusercontent.com/kubedev/kubedev/main/docs/kubedev.schema.json")
)]
pub(super) struct SessionsFile {
    /// The sessions, started in this order.
    sessions: Vec<SessionSpec>,
}

/// One session, as its flags would give it on the command line.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SessionSpec {
    /// The workload: NAME, or KIND/NAME (deployment, statefulset, replicaset, daemonset,
    /// rollout, or deploy, sts, rs, ds, ro); pod/NAME for a pod no controller manages.
    workload: String,
    /// How the session runs (default: the plugin's own mode).
    mode: Option<FileMode>,
    /// The session's name (default: the workload's name and your login name, web-alice).
    name: Option<String>,
    /// Its namespace (default: -n, else the kube context's).
    namespace: Option<String>,
    /// The app container (needed when the pods have several).
    container: Option<String>,
    /// LOCAL[:SERVICE-PORT] for each service port sent here (intercept) or the ports the
    /// agent listens on (replace), as --port takes them.
    #[serde(default)]
    ports: Vec<Port>,
    /// intercept: the Service whose traffic to take (when several select the pods).
    service: Option<String>,
    /// intercept: the loopback address on this machine that receives the connections.
    address: Option<String>,
    /// intercept: only HTTP requests with all these headers come here.
    #[serde(default)]
    http_headers: BTreeMap<String, String>,
    /// intercept: only HTTP requests whose path starts with this come here.
    http_path_prefix: Option<String>,
    /// intercept: copies come here, and the app still answers every request.
    #[serde(default)]
    wiretap: bool,
    /// intercept: the kubernetes.io/tls Secret of an app that terminates TLS itself, for
    /// the agent to read the requests the filters choose.
    tls_secret: Option<String>,
    /// Write the container's environment to this file, a path in this file's directory.
    env_file: Option<PathBuf>,
    /// The syntax of envFile (default: docker).
    #[schemars(extend("enum" = ["docker", "compose", "sh", "sh:export", "csh", "json", "ps", "cmd"]))]
    env_syntax: Option<String>,
    /// Write the container's environment to this file as a JSON object, a path in this
    /// file's directory.
    env_json: Option<PathBuf>,
    /// Where to mount the volumes: DIR (a path in this file's directory; DIR:ro for
    /// read-only), true (a new temporary directory: the default) or false.
    mount: Option<MountValue>,
    /// PORT[/udp] for each port of this machine's localhost forwarded to a pod's own.
    #[serde(default)]
    to_pod: Vec<Port>,
    /// Run this command (in the current directory) with the container's environment; when
    /// it exits, every session of the file ends.
    #[serde(default)]
    command: Vec<String>,
}

/// The modes a session of the file can run in.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum FileMode {
    /// `kubectl intercept`.
    Intercept,
    /// `kubectl replace-container`.
    ReplaceContainer,
    /// `kubectl ingest`.
    Ingest,
}

impl From<FileMode> for Mode {
    fn from(mode: FileMode) -> Self {
        match mode {
            FileMode::Intercept => Self::Intercept,
            FileMode::ReplaceContainer => Self::Replace,
            FileMode::Ingest => Self::Ingest,
        }
    }
}

/// A port as YAML may give it: a number (`8080`), or text as the flag takes it
/// (`"8080:http"`, `"53/udp"`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Port {
    Number(u16),
    Text(String),
}

impl Port {
    fn text(&self) -> String {
        match self {
            Self::Number(number) => number.to_string(),
            Self::Text(text) => text.clone(),
        }
    }
}

/// Where to mount, as YAML may give it: `true`, `false`, or a directory.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum MountValue {
    Boolean(bool),
    Dir(String),
}

impl MountValue {
    fn text(&self) -> String {
        match self {
            Self::Boolean(boolean) => boolean.to_string(),
            Self::Dir(dir) => dir.clone(),
        }
    }
}

/// One session of the file, as its command line would have given it.
pub(super) struct FileSession {
    pub(super) mode: Mode,
    pub(super) cluster: ClusterArgs,
    pub(super) workload: WorkloadName,
    pub(super) args: SessionArgs,
    pub(super) mode_args: ModeArgs,
    /// Its name, given or by default.
    pub(super) name: String,
}

/// Reads the sessions of `path`, with the flags of the command line (`cluster`, `life`)
/// for each; refuses the whole file over any mistake in it.
pub(super) fn read(
    path: &Path,
    default_mode: Mode,
    cluster: &ClusterArgs,
    life: &SessionLife,
) -> anyhow::Result<Vec<FileSession>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let sessions = each_session(path, |spec| spec.session(default_mode, dir, cluster, life))?;
    check_names_differ(&sessions).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    Ok(sessions)
}

/// The name of each session of `path`, and where it runs: what `leave -f` ends.
pub(super) fn names(
    path: &Path,
    cluster: &ClusterArgs,
) -> anyhow::Result<Vec<(String, ClusterArgs)>> {
    each_session(path, |spec| {
        let (_, name, cluster) = spec.placed(cluster)?;
        Ok((name, cluster))
    })
}

/// `read` of each session of the file at `path`, saying where a mistake is.
fn each_session<T>(
    path: &Path,
    mut read: impl FnMut(SessionSpec) -> Result<T, String>,
) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the sessions file {}", path.display()))?;
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        anyhow::bail!("{}: it names no session (sessions: [...])", path.display());
    }
    let file: SessionsFile = serde_saphyr::from_str(&text).map_err(|err| {
        // The parser's first line says what and where; the rest repeats it.
        let said = err.to_string();
        let first = said.lines().next().unwrap_or_default();
        let first = (first.trim_start_matches("error: "))
            .replace("expected sequence start", "expected a list ([...])")
            .replace("expected mapping start", "expected a map (NAME: VALUE)");
        anyhow::anyhow!("{}: {first}", path.display())
    })?;
    if file.sessions.is_empty() {
        anyhow::bail!("{}: it names no session (sessions: [...])", path.display());
    }
    let mut read_all = Vec::new();
    for (index, spec) in file.sessions.into_iter().enumerate() {
        let described = format!(
            "{}: session {} ({})",
            path.display(),
            index + 1,
            spec.workload
        );
        read_all.push(read(spec).map_err(|err| anyhow::anyhow!("{described}: {err}"))?);
    }
    Ok(read_all)
}

/// Two sessions of one name in one namespace would refuse each other.
fn check_names_differ(sessions: &[FileSession]) -> Result<(), String> {
    for (index, session) in sessions.iter().enumerate() {
        let twin = sessions[..index].iter().find(|earlier| {
            earlier.name == session.name && earlier.cluster.namespace == session.cluster.namespace
        });
        if twin.is_some() {
            return Err(format!(
                "two sessions are named {}: give one a name of its own (name: ...)",
                session.name
            ));
        }
    }
    Ok(())
}

impl SessionSpec {
    fn session(
        self,
        default_mode: Mode,
        dir: &Path,
        cluster: &ClusterArgs,
        life: &SessionLife,
    ) -> Result<FileSession, String> {
        let mode = self.mode.map_or(default_mode, Mode::from);
        self.check_fits(mode)?;
        if life.detach && !self.command.is_empty() {
            return Err("a command does not run with --detach (leave out one of them)".into());
        }
        let (workload, name, cluster) = self.placed(cluster)?;
        let mode_args = self.mode_args()?;
        let args = self.session_args(dir, life, &name)?;
        Ok(FileSession {
            mode,
            cluster,
            workload,
            args,
            mode_args,
            name,
        })
    }

    /// Its workload, its name, and the cluster flags with its namespace.
    fn placed(&self, cluster: &ClusterArgs) -> Result<(WorkloadName, String, ClusterArgs), String> {
        let workload: WorkloadName = self.workload.parse()?;
        let name = match &self.name {
            Some(name) => check_name(name).map(|()| name.clone())?,
            None => default_name(&workload.name),
        };
        let mut cluster = cluster.clone();
        if let Some(namespace) = &self.namespace {
            if !kubedev::workload::is_dns_label(namespace) {
                return Err(format!("{namespace:?} is not a namespace name"));
            }
            cluster.namespace = Some(namespace.clone());
        }
        Ok((workload, name, cluster))
    }

    /// Refuses what only an intercept takes in another mode.
    fn check_fits(&self, mode: Mode) -> Result<(), String> {
        let intercept_only = [
            ("service", self.service.is_some()),
            ("address", self.address.is_some()),
            ("httpHeaders", !self.http_headers.is_empty()),
            ("httpPathPrefix", self.http_path_prefix.is_some()),
            ("wiretap", self.wiretap),
            ("tlsSecret", self.tls_secret.is_some()),
        ];
        match intercept_only.iter().find(|(_, given)| *given) {
            Some((field, _)) if mode != Mode::Intercept => {
                Err(format!("{field} is for intercept sessions only"))
            }
            _ => Ok(()),
        }
    }

    fn mode_args(&self) -> Result<ModeArgs, String> {
        let address = (self.address.as_deref())
            .map(|text| {
                crate::args::parse_local_address(text).map_err(|err| format!("address: {err}"))
            })
            .transpose()?;
        if let Some(address) = address.as_deref().filter(|a| !is_loopback(a)) {
            return Err(format!(
                "address: {address:?} is not this machine's loopback (a sessions file sends \
                 requests nowhere else; --address on the command line can)"
            ));
        }
        let ports = (self.ports.iter())
            .map(|port| port.text().parse::<PortMapping>())
            .collect::<Result<_, _>>()
            .map_err(|err| format!("ports: {err}"))?;
        let filtered = !self.http_headers.is_empty() || self.http_path_prefix.is_some();
        Ok(ModeArgs {
            ports,
            service: self.service.clone(),
            address: Some(address.unwrap_or_else(|| "127.0.0.1".into())),
            filter: filtered.then(|| HttpFilter {
                headers: self.http_headers.clone().into_iter().collect(),
                path_prefix: self.http_path_prefix.clone(),
            }),
            wiretap: self.wiretap,
            tls_secret: self.tls_secret.clone(),
        })
    }

    fn session_args(
        self,
        dir: &Path,
        life: &SessionLife,
        name: &str,
    ) -> Result<SessionArgs, String> {
        let env_syntax = match &self.env_syntax {
            Some(syntax) => EnvSyntax::from_str(syntax, true)
                .map_err(|_| format!("envSyntax: {syntax:?} is not a syntax kubedev writes"))?,
            None => EnvSyntax::default(),
        };
        let mount = match &self.mount {
            Some(mount) => Some(match mount.text().parse::<MountChoice>()? {
                MountChoice::Dir { path, read_only } => MountChoice::Dir {
                    path: beside(dir, &path, "mount")?,
                    read_only,
                },
                choice => choice,
            }),
            None => None,
        };
        let beside_the_file = |file: Option<PathBuf>, field| match file {
            Some(file) => beside(dir, &file, field).map(Some),
            None => Ok(None),
        };
        let env_file = beside_the_file(self.env_file, "envFile")?;
        let env_json = beside_the_file(self.env_json, "envJson")?;
        let to_pod = (self.to_pod.iter())
            .map(|port| port.text().parse())
            .collect::<Result<_, _>>()
            .map_err(|err| format!("toPod: {err}"))?;
        Ok(SessionArgs {
            container: self.container,
            env_file,
            env_json,
            env_syntax,
            mount,
            to_pod,
            life: SessionLife {
                name: Some(name.to_owned()),
                command: self.command,
                ..life.clone()
            },
        })
    }
}

/// `path` in `dir`, the sessions file's directory: a path of the file may not leave it.
fn beside(dir: &Path, path: &Path, field: &str) -> Result<PathBuf, String> {
    let inside = path.components().all(|part| {
        matches!(
            part,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !inside {
        return Err(format!(
            "{field}: {} is not a path in the sessions file's directory (no absolute path, no ..)",
            path.display()
        ));
    }
    Ok(dir.join(path))
}

#[cfg(test)]
mod tests;
