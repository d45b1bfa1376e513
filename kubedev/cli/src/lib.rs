//! What the three plugins share:
//!
//! - the command line (`args`) and errors reported the way kubectl reports them;
//! - a session's life, whatever it changes (`life`): on a workload (`run`) or through a pod
//!   of its own (`connect`); `-- CMD` (`command`, with tunneld's DNS where the machine's
//!   resolver is left as it is: `resolver_view`; in a network namespace of its own where
//!   the machine has no cluster network: `netns`; both Linux only); the links to the agents while it lasts
//!   (`links`); restoring sessions whose lease ran out, first (`reclaim`); sessions from a
//!   file (`sessions_file`), run and left together (`from_file`, `together`);
//! - the subcommands (`manage`): `list`, `leave` and the sessions they look at (`survey`),
//!   `status`, bug report archives (`gather`), the settings file (`config`);
//! - shell completion through kubectl (`complete`) and what the plugins print (`output`).

#![warn(missing_docs)]

mod args;
mod command;
mod complete;
mod config;
mod connect;
mod diagnose;
mod from_file;
mod gather;
mod leave;
mod life;
mod links;
mod list;
mod manage;
#[cfg(target_os = "linux")]
mod netns;
mod notes;
mod output;
mod pinning;
mod reclaim;
#[cfg(target_os = "linux")]
mod resolver_view;
mod run;
mod sessions_file;
mod survey;
mod together;
mod version;

use std::process::ExitCode;

pub use args::{
    ConfigAction, DEFAULT_AGENT_IMAGE, Manage, ModeArgs, Output, PluginArgs, SessionArgs,
    SessionLife, parse_local_address,
};
pub use complete::{COMPLETE_ARG, complete_if_asked};
#[cfg(target_os = "linux")]
pub use netns::trampoline_if_asked;

/// Whether this process was started as the trampoline of `-- CMD`'s network namespace,
/// which only Linux has: never, here.
#[cfg(not(target_os = "linux"))]
pub fn trampoline_if_asked() -> Option<ExitCode> {
    None
}

use connect::run_connect;
use from_file::{leave_file, run_file};
use kubedev::cluster::ClusterArgs;
use kubedev::mode::Mode;
use kubedev_process::exit_status;
use manage::run_manage;
use run::run_session;

/// Runs a plugin: a subcommand, or a session on the workload. Root through sudo is refused
/// before anything is made (see [`kubedev::run_as`]).
pub fn main(mode: Mode, args: PluginArgs, mode_args: ModeArgs) -> ExitCode {
    if let Err(err) = kubedev::run_as::run_as() {
        return exit_status(Err(err.into()));
    }
    let PluginArgs {
        manage,
        workload,
        filename,
        session: args,
        verbosity,
        cluster,
    } = args;
    kubedev_process::logging::init_plugin(verbosity);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return exit_status(Err(err.into())),
    };
    runtime.block_on(async move {
        let result = match (manage, workload) {
            (Some(Manage::Connect(life)), _) => run_connect(mode, &cluster, life).await,
            (Some(Manage::Diagnose { output }), _) => {
                diagnose::diagnose(mode, &cluster, output).await
            }
            (
                Some(Manage::Leave {
                    filename: Some(path),
                    force,
                    timeout,
                    ..
                }),
                _,
            ) => leave_file(mode, &path, &cluster, force, timeout)
                .await
                .map(|()| ExitCode::SUCCESS),
            (Some(manage), _) => run_manage(mode, &cluster, manage)
                .await
                .map(|()| ExitCode::SUCCESS),
            (None, Some(workload)) => {
                run_session(mode, &cluster, workload, args, mode_args, None).await
            }
            (None, None) if let Some(file) = &filename => {
                run_file(mode, file, &cluster, &args, &mode_args).await
            }
            (None, None) => Err(anyhow::anyhow!("say which workload (see --help)")),
        };
        match result {
            Ok(code) => code,
            Err(err) => exit_status(Err(explained(err, &cluster))),
        }
    })
}

/// `err`, saying whom the plugin acted as (`--as`), and what to do when the API server
/// did not answer in time.
fn explained(err: anyhow::Error, cluster: &ClusterArgs) -> anyhow::Error {
    let err = if err.chain().any(kubedev::cluster::unanswered) {
        err.context(
            "the API server did not answer in time (--request-timeout sets how long to wait; \
             0 for no limit)",
        )
    } else {
        err
    };
    let Some(user) = &cluster.as_user else {
        return err;
    };
    // A permission check suggested by the error answers for the impersonated user only
    // with the same flags.
    let hint = if format!("{err:#}").contains("kubectl auth can-i") {
        let groups: String = (cluster.as_groups.iter())
            .map(|group| format!(" --as-group {group}"))
            .collect();
        format!("; give `kubectl auth can-i` the same --as {user}{groups}")
    } else {
        String::new()
    };
    err.context(format!("acting as {user} (--as){hint}"))
}

/// The command of a mode, for messages (`kubectl intercept`).
fn command_of(mode: Mode) -> &'static str {
    match mode {
        Mode::Intercept => "kubectl intercept",
        Mode::Replace => "kubectl replace-container",
        Mode::Ingest => "kubectl ingest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_check_acting_as_another_user_is_given_the_same_flags() {
        let cluster = ClusterArgs {
            as_user: Some("alice".into()),
            as_groups: vec!["team-a".into()],
            ..ClusterArgs::default()
        };
        let refused = anyhow::anyhow!(
            "not allowed to update deployments in namespace shop: ask for that permission \
             (check with `kubectl auth can-i update deployments -n shop`)"
        );
        let said = format!("{:#}", explained(refused, &cluster));
        assert!(
            said.starts_with(
                "acting as alice (--as); give `kubectl auth can-i` the same --as alice \
                 --as-group team-a: not allowed"
            ),
            "{said}"
        );
        let other = explained(anyhow::anyhow!("deployment/web not found"), &cluster);
        assert_eq!(
            format!("{other:#}"),
            "acting as alice (--as): deployment/web not found"
        );
    }
}
