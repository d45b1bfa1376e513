//! Shell completion through kubectl (1.26 and later). For `kubectl intercept ARGS... WORD<TAB>`
//! kubectl runs `kubectl_complete-intercept ARGS... WORD` from PATH and offers what it prints,
//! one candidate a line, the last line `:N` a Cobra directive. That program is this plugin:
//! a link to it under that name, or a script running `kubectl-intercept __complete ARGS...`.
//! Candidates come from the cluster: workloads, containers, Service ports, sessions,
//! namespaces, and the kubeconfig's contexts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::mode::Mode;
use kubedev::session;
use kubedev::workload::{Workload, WorkloadKind, WorkloadRef};

/// The first argument that asks a plugin for completions instead of running.
pub const COMPLETE_ARG: &str = "__complete";

/// How long completion may wait for the cluster: a shell waits on it.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(5);

/// Cobra's directives: no space after the candidate, no file names offered instead.
const NO_SPACE: u8 = 2;
const NO_FILES: u8 = 4;

/// What the word being completed stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wanted {
    Flag,
    /// The workload, or a subcommand.
    Workload,
    Container(String),
    /// `--port LOCAL:` of an intercept: the Service's ports.
    ServicePort(String),
    /// `leave NAME`.
    Session,
    Namespace,
    Context,
    /// A file name (`--kubeconfig`, `--env-file`, ...): the shell's own completion.
    File,
    Nothing,
}

/// The command line so far: where it points, and what the last word is.
#[derive(Debug, Default, PartialEq, Eq)]
struct Line {
    cluster: ClusterArgs,
    positionals: Vec<String>,
}

/// Answers a completion request if this run is one (invoked as `kubectl_complete-*`, or
/// with [`COMPLETE_ARG`] first); `command` is the plugin's command line definition.
pub fn complete_if_asked(mode: Mode, command: &clap::Command) -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args.first().map(Path::new).and_then(Path::file_name);
    let words = if args.get(1).is_some_and(|arg| arg == COMPLETE_ARG) {
        &args[2..]
    } else if invoked_as.is_some_and(|name| name.to_string_lossy().starts_with("kubectl_complete-"))
    {
        &args[1..]
    } else {
        return None;
    };
    let (candidates, directive) = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(complete(mode, command, words)),
        Err(_) => (Vec::new(), NO_FILES),
    };
    for candidate in candidates {
        println!("{candidate}");
    }
    println!(":{directive}");
    Some(ExitCode::SUCCESS)
}

async fn complete(mode: Mode, command: &clap::Command, words: &[String]) -> (Vec<String>, u8) {
    let (partial, before) = match words.split_last() {
        Some((partial, before)) => (partial.as_str(), before),
        None => ("", &[][..]),
    };
    let (line, wanted) = understand(mode, command, before, partial);
    let candidates = match wanted {
        Wanted::Flag => flags(command),
        Wanted::Context => contexts(&line),
        Wanted::File => return (Vec::new(), 0),
        Wanted::Nothing => Vec::new(),
        cluster_wanted => {
            let asked = from_cluster(&line, cluster_wanted, partial);
            tokio::time::timeout(CLUSTER_DEADLINE, asked)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        }
    };
    let candidates: Vec<String> = candidates
        .into_iter()
        .filter(|candidate| candidate.starts_with(partial))
        .collect();
    let directive = match candidates
        .iter()
        .any(|c| c.ends_with('/') || c.ends_with(':'))
    {
        true => NO_FILES | NO_SPACE,
        false => NO_FILES,
    };
    (candidates, directive)
}

/// Reads the words before the one being completed.
fn understand(
    mode: Mode,
    command: &clap::Command,
    before: &[String],
    partial: &str,
) -> (Line, Wanted) {
    let takes_value = |word: &str| {
        command.get_arguments().any(|arg| {
            arg.get_action().takes_values()
                && (arg
                    .get_long()
                    .is_some_and(|long| word == format!("--{long}"))
                    || arg
                        .get_short()
                        .is_some_and(|short| word == format!("-{short}")))
        })
    };
    let mut line = Line::default();
    let mut words = before.iter();
    let mut pending = None;
    while let Some(word) = words.next() {
        if word == "--" {
            return (line, Wanted::File);
        }
        let (flag, value) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_owned())),
            _ => (word.as_str(), None),
        };
        if !flag.starts_with('-') || flag == "-" {
            line.positionals.push(word.clone());
            continue;
        }
        if !takes_value(flag) {
            continue;
        }
        let Some(value) = value.or_else(|| words.next().cloned()) else {
            pending = Some(flag.to_owned());
            break;
        };
        match flag {
            "-n" | "--namespace" => line.cluster.namespace = Some(value),
            "--context" => line.cluster.context = Some(value),
            "--kubeconfig" => line.cluster.kubeconfig = Some(value.into()),
            "--as" => line.cluster.as_user = Some(value),
            "--as-group" => line.cluster.as_groups.push(value),
            _ => {}
        }
    }
    let workload = line.positionals.first().cloned();
    let wanted = match (pending.as_deref(), workload) {
        (Some("-n" | "--namespace"), _) => Wanted::Namespace,
        (Some("--context"), _) => Wanted::Context,
        (Some("-c" | "--container"), Some(workload)) => Wanted::Container(workload),
        (Some("-p" | "--port"), Some(workload))
            if mode == Mode::Intercept && partial.contains(':') =>
        {
            Wanted::ServicePort(workload)
        }
        (Some("--kubeconfig" | "--env-file" | "--env-json" | "--mount"), _) => Wanted::File,
        (Some(_), _) => Wanted::Nothing,
        (None, _) if partial.starts_with('-') => Wanted::Flag,
        (None, None) => Wanted::Workload,
        (None, Some(first)) if first == "leave" && line.positionals.len() == 1 => Wanted::Session,
        (None, Some(_)) => Wanted::Nothing,
    };
    (line, wanted)
}

/// Every long flag of the command.
fn flags(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect()
}

/// The kubeconfig's contexts.
fn contexts(line: &Line) -> Vec<String> {
    kubedev::cluster::read_kubeconfig(line.cluster.kubeconfig.as_deref())
        .map(|config| config.contexts.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

async fn from_cluster(line: &Line, wanted: Wanted, partial: &str) -> anyhow::Result<Vec<String>> {
    let connection = line.cluster.connect().await?;
    Ok(match wanted {
        Wanted::Workload => workloads(&connection, partial).await?,
        Wanted::Container(workload) => {
            let workload = Workload::get(
                &connection.client,
                &connection.namespace,
                &parse(&workload)?,
            )
            .await?;
            workload
                .template()?
                .spec
                .into_iter()
                .flat_map(|spec| spec.containers)
                .map(|container| container.name)
                .collect()
        }
        Wanted::ServicePort(workload) => {
            let local = partial.split_once(':').map_or("", |(local, _)| local);
            let reference = parse(&workload)?;
            session::candidates_in(&connection.client, &connection.namespace)
                .await?
                .into_iter()
                .filter(|candidate| candidate.workload == reference)
                .flat_map(|candidate| candidate.services)
                .flat_map(|(_, ports)| ports)
                .map(|port| {
                    let remote = port.name.unwrap_or_else(|| port.port.to_string());
                    format!("{local}:{remote}")
                })
                .collect()
        }
        Wanted::Session => session::sessions_in(&connection.client, &connection.namespace)
            .await?
            .iter()
            .flat_map(|(_, record)| record.sessions().map(|s| s.name.to_owned()))
            .collect(),
        Wanted::Namespace => Api::<Namespace>::all(connection.client.clone())
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|namespace| namespace.metadata.name)
            .collect(),
        _ => Vec::new(),
    })
}

fn parse(workload: &str) -> anyhow::Result<WorkloadRef> {
    workload.parse().map_err(anyhow::Error::msg)
}

/// The subcommands, the kinds (`deployment/`), and the names of the workloads of every
/// kind (a bare NAME is any of them); after `KIND/`, that kind's names.
async fn workloads(connection: &Connection, partial: &str) -> anyhow::Result<Vec<String>> {
    let client = &connection.client;
    let namespace = &connection.namespace;
    if let Some((kind_word, _)) = partial.split_once('/') {
        // The kind as typed (`deploy`, `sts`, ...), so that the candidates match it.
        let kind = parse(&format!("{kind_word}/x"))?.kind;
        return Ok(Workload::list(client, namespace, kind)
            .await?
            .into_iter()
            .filter(|workload| !workload.is_controlled())
            .map(|workload| format!("{kind_word}/{}", workload.reference.name))
            .collect());
    }
    let mut candidates: Vec<String> = [
        "connect",
        "list",
        "leave",
        "status",
        "version",
        "diagnose",
        "role",
        "config",
        "gather-logs",
    ]
    .iter()
    .map(|word| (*word).to_owned())
    .chain(
        WorkloadKind::ALL
            .into_iter()
            .chain([WorkloadKind::Pod])
            .map(|kind| format!("{}/", kind.resource())),
    )
    .collect();
    // A kind the user may not list offers no names; the others still do.
    let names: std::collections::BTreeSet<String> =
        Workload::list_every_kind(client, Some(namespace))
            .await?
            .into_iter()
            // A pod is never named bare: only as pod/NAME.
            .filter(|workload| {
                !workload.is_controlled() && workload.reference.kind != WorkloadKind::Pod
            })
            .map(|workload| workload.reference.name)
            .collect();
    candidates.extend(names);
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> clap::Command {
        let plugin = clap::Command::new("kubectl intercept");
        <ClusterArgs as clap::Args>::augment_args(plugin)
            .arg(Arg::new("container").short('c').long("container"))
            .arg(Arg::new("port").short('p').long("port"))
            .arg(Arg::new("detach").long("detach").action(ArgAction::SetTrue))
            .arg(Arg::new("workload"))
    }

    fn wanted(words: &[&str], partial: &str) -> (Line, Wanted) {
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        understand(Mode::Intercept, &command(), &words, partial)
    }

    #[test]
    fn the_word_is_read_from_what_comes_before_it() {
        assert_eq!(wanted(&[], "").1, Wanted::Workload);
        assert_eq!(wanted(&["-n", "shop"], "we").1, Wanted::Workload);
        assert_eq!(wanted(&["web", "--detach"], "--d").1, Wanted::Flag);
        assert_eq!(
            wanted(&["web", "-c"], "").1,
            Wanted::Container("web".into())
        );
        assert_eq!(wanted(&["-c"], "").1, Wanted::Nothing, "no workload yet");
        assert_eq!(
            wanted(&["deploy/web", "--port"], "8080:").1,
            Wanted::ServicePort("deploy/web".into())
        );
        assert_eq!(wanted(&["web", "--port"], "80").1, Wanted::Nothing);
        assert_eq!(wanted(&["leave"], "").1, Wanted::Session);
        assert_eq!(wanted(&["leave", "web"], "").1, Wanted::Nothing);
        assert_eq!(wanted(&["web", "--namespace"], "").1, Wanted::Namespace);
        assert_eq!(wanted(&["--context"], "").1, Wanted::Context);
        assert_eq!(wanted(&["--kubeconfig"], "").1, Wanted::File);
        assert_eq!(wanted(&["web", "--", "./server"], "").1, Wanted::File);
    }

    #[test]
    fn the_cluster_flags_are_kept_whatever_their_form() {
        let (line, _) = wanted(
            &[
                "--namespace=shop",
                "--context",
                "prod",
                "--kubeconfig=/k",
                "--as",
                "alice",
                "--as-group=team",
                "web",
            ],
            "",
        );
        assert_eq!(
            line.cluster,
            ClusterArgs {
                namespace: Some("shop".into()),
                context: Some("prod".into()),
                kubeconfig: Some("/k".into()),
                as_user: Some("alice".into()),
                as_groups: vec!["team".into()],
                request_timeout: None,
            }
        );
        assert_eq!(line.positionals, ["web"]);
    }
}
