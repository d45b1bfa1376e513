//! `-- CMD`: the developer's command, run with the container's environment.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;

/// Runs `command` with the app's environment on top of ours, seeing `resolver` (if given)
/// as its /etc/resolv.conf, until it exits; once `stop` completes (a stop signal to the
/// plugin, the session ending without it) it gets SIGTERM. Its exit status becomes ours.
pub(super) async fn run_command(
    command: &[String],
    variables: &BTreeMap<String, String>,
    resolver: Option<&std::path::Path>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let (program, arguments) = command.split_first().context("empty command")?;
    let mut to_run = tokio::process::Command::new(program);
    to_run.args(arguments).envs(variables);
    let spawned = match resolver {
        Some(resolver) => super::resolver_view::spawn(&mut to_run, resolver).or_else(|err| {
            eprintln!(
                "note: {program} runs without the cluster's names ({err}: giving it \
                 {} as /etc/resolv.conf needs root)",
                resolver.display()
            );
            to_run.spawn()
        }),
        None => to_run.spawn(),
    };
    let mut child = spawned.with_context(|| format!("cannot run {program}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = stop => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            child.wait().await?
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
