//! `diagnose`: what a session needs, checked one by one, each failure with what to do:
//! the API server and its round-trip time, the Role, the agent image on the nodes, the
//! versions of the plugin, tunneld and agent, and on this machine tunneld's network, its
//! DNS and sshfs.

mod cluster;
mod machine;

use std::process::ExitCode;

use serde::Serialize;

use super::args::Output;
use super::output::render;
use kubedev::cluster::ClusterArgs;
use kubedev::mode::Mode;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Outcome {
    /// As a session needs it.
    Ok,
    /// A session works, with less than it could (a part not available here, say).
    Warning,
    /// A session will fail.
    Failed,
    /// Not checked: what it needs is missing (a running tunneld, say).
    Skipped,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Check {
    /// What was checked (`role`, `agent image`, ...).
    pub(super) name: &'static str,
    /// How it came out.
    pub(super) outcome: Outcome,
    /// What was found, in words.
    pub(super) found: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fix: Option<String>,
}

impl Check {
    pub(super) fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Self::new(name, Outcome::Ok, found, None)
    }

    pub(super) fn new(
        name: &'static str,
        outcome: Outcome,
        found: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            name,
            outcome,
            found: found.into(),
            fix,
        }
    }
}

/// Runs every check and prints them; fails (exit code 1) if any failed.
pub(super) async fn diagnose(
    mode: Mode,
    cluster: &ClusterArgs,
    output: Option<Output>,
) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let show = |check: &Check| {
        if output.is_none() {
            print!("{}", describe(check));
        }
    };
    let connection = cluster.connect().await?;
    if output.is_none() {
        println!(
            "context {}, namespace {}",
            connection.context.as_deref().unwrap_or("(none)"),
            connection.namespace
        );
    }
    checks.extend(cluster::checks(mode, &connection, &show).await?);
    for check in machine::checks(&connection).await {
        show(&check);
        checks.push(check);
    }
    if let Some(output) = output {
        print!("{}", render(&checks, output)?);
    }
    let failed = checks
        .iter()
        .filter(|c| c.outcome == Outcome::Failed)
        .count();
    if failed > 0 {
        eprintln!("{failed} of {} checks failed", checks.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A check as lines of text: its outcome, name and finding, then what to do.
fn describe(check: &Check) -> String {
    let outcome = match check.outcome {
        Outcome::Ok => "ok",
        Outcome::Warning => "warning",
        Outcome::Failed => "FAILED",
        Outcome::Skipped => "skipped",
    };
    let mut text = format!("{outcome:<8} {:<16} {}\n", check.name, check.found);
    if let Some(fix) = &check.fix {
        for line in fix.lines() {
            text.push_str(&format!("{:<25} {line}\n", ""));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_a_line_and_its_fix_is_indented_below() {
        let failed = Check::new(
            "role",
            Outcome::Failed,
            "not allowed to update services in shop",
            Some("ask for the Role:\nkubectl intercept role -n shop".into()),
        );
        assert_eq!(
            describe(&failed),
            "FAILED   role             not allowed to update services in shop\n\
             \x20                         ask for the Role:\n\
             \x20                         kubectl intercept role -n shop\n"
        );
        assert_eq!(
            describe(&Check::ok("sshfs", "/usr/bin/sshfs")),
            "ok       sshfs            /usr/bin/sshfs\n"
        );
        let json = serde_json::to_value(&failed).expect("json");
        assert_eq!(json["outcome"], "failed");
    }
}
