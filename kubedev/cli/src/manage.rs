//! `list`, `leave`, `role`, `status`, `version`, `config` and `gather-logs`.

use std::time::Duration;

use super::args::Manage;
use super::config::run_config;
use super::gather::gather_logs;
use super::leave::{Ending, leave};
use super::list::list;
use super::output::{describe_status, render, status_report};
use super::reclaim::reclaim_expired;
use super::version::version;
use kubedev::cluster::ClusterArgs;
use kubedev::mode::Mode;
use kubedev::session;
use kubedev::tunneld::{self, TunneldError};
use kubedev::workload::is_dns_label;

/// How long `list` and `status` wait for the pods of a workload they restore (see
/// [`reclaim_expired`]), as `leave` does by default.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);

/// The Role the plugins need in a namespace (deploy/kubedev-role.yaml).
pub(super) const ROLE: &str = include_str!("../../../deploy/kubedev-role.yaml");

/// The Role and its Secret, placed in `namespace` when one is given (`role -n NS`), so
/// that `kubectl apply -f -` puts them there whatever the current context's namespace.
fn role_in(namespace: Option<&str>) -> anyhow::Result<String> {
    let Some(namespace) = namespace else {
        return Ok(ROLE.to_owned());
    };
    anyhow::ensure!(
        is_dns_label(namespace),
        "{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
    );
    Ok(ROLE.replace(
        "\nmetadata:\n",
        &format!("\nmetadata:\n  namespace: {namespace}\n"),
    ))
}

pub(super) async fn run_manage(
    mode: Mode,
    cluster: &ClusterArgs,
    manage: Manage,
) -> anyhow::Result<()> {
    match manage {
        Manage::Role => {
            print!("{}", role_in(cluster.namespace.as_deref())?);
            return Ok(());
        }
        Manage::Config(action) => return run_config(cluster, action).await,
        Manage::Version { output } => {
            return version(super::command_of(mode), cluster, output).await;
        }
        _ => {}
    }
    let connection = cluster.connect().await?;
    let socket = tunneld::socket_for(&connection)?;
    let timeout = match &manage {
        Manage::Leave { timeout, .. } => *timeout,
        _ => RESTORE_TIMEOUT,
    };
    // A bug report wants the sessions as they are, expired or not.
    if !matches!(manage, Manage::GatherLogs { .. }) {
        reclaim_expired(&connection, &session::random_id()?, timeout).await;
    }
    match manage {
        Manage::List {
            output,
            all_namespaces,
        } => list(&connection, &socket, output, all_namespaces).await,
        Manage::Leave {
            name,
            force,
            timeout,
            ..
        } => {
            let ending = Ending {
                name: name.as_deref(),
                force,
                timeout,
            };
            leave(&connection, &socket, mode, ending).await
        }
        Manage::Role | Manage::Config(_) | Manage::Version { .. } => {
            unreachable!("done without a connection")
        }
        Manage::Connect(_) => unreachable!("a session, run by `run_connect`"),
        Manage::Diagnose { .. } => unreachable!("run by `diagnose`"),
        Manage::GatherLogs {
            output_file,
            all_namespaces,
        } => {
            let path = gather_logs(&connection, &socket, output_file, all_namespaces).await?;
            eprintln!(
                "wrote {}: attach it to your report (it holds logs, pod states and the \
                 sessions' pod templates: look for anything secret first)",
                path.display()
            );
            Ok(())
        }
        Manage::Status { output } => {
            let status = match tunneld::status(&socket).await {
                Ok(status) => Some(status),
                Err(TunneldError::NotRunning(_)) => None,
                Err(err) => return Err(err.into()),
            };
            match output {
                Some(output) => print!("{}", render(&status_report(status.as_ref())?, output)?),
                None => print!("{}", describe_status(status.as_ref())),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubedev::inject::TOKENS_SECRET;

    #[test]
    fn role_with_a_namespace_places_the_role_and_its_secret_there() {
        let placed = role_in(Some("team-a")).expect("a namespace name");
        let (role, secret) = placed.split_once("\n---\n").expect("a Role, then a Secret");
        let role: k8s_openapi::api::rbac::v1::Role = serde_saphyr::from_str(role).expect("a Role");
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_saphyr::from_str(secret).expect("a Secret");
        assert_eq!(role.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(role_in(None).expect("as shipped"), ROLE);
        let refused = role_in(Some("a\nkind: ClusterRole")).expect_err("not a name");
        assert!(
            refused.to_string().contains("not a namespace name"),
            "{refused}"
        );
    }

    #[test]
    fn the_printed_role_is_a_role_allowing_what_the_plugins_call() {
        let (role, secret) = ROLE.split_once("\n---\n").expect("a Role, then a Secret");
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_saphyr::from_str(secret).expect("a Secret");
        assert_eq!(secret.metadata.name.as_deref(), Some(TOKENS_SECRET));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let role: k8s_openapi::api::rbac::v1::Role = serde_saphyr::from_str(role).expect("a Role");
        let rules = role.rules.expect("rules");
        let allows = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|rule| {
                let has = |list: &Option<Vec<String>>, item: &str| {
                    list.iter().flatten().any(|entry| entry == item)
                };
                has(&rule.api_groups, group)
                    && has(&rule.resources, resource)
                    && rule.verbs.iter().any(|v| v == verb)
            })
        };
        for (group, resource, verb) in [
            ("apps", "deployments", "update"),
            ("apps", "statefulsets", "update"),
            ("apps", "daemonsets", "update"),
            ("argoproj.io", "rollouts", "update"),
            ("", "services", "update"),
            ("", "pods", "watch"),
            ("", "pods", "update"),
            ("", "pods/portforward", "create"),
            ("", "pods/log", "get"),
            ("discovery.k8s.io", "endpointslices", "list"),
            ("", "events", "list"),
            ("coordination.k8s.io", "leases", "update"),
            ("coordination.k8s.io", "leases", "delete"),
        ] {
            assert!(allows(group, resource, verb), "{verb} {group}/{resource}");
        }
        // Secrets: one, by name, the sessions' tokens.
        let secret_rules: Vec<_> = rules
            .iter()
            .filter(|rule| rule.resources.iter().flatten().any(|r| r == "secrets"))
            .collect();
        for rule in &secret_rules {
            let named = rule.resource_names.as_deref() == Some(&[TOKENS_SECRET.to_owned()][..]);
            assert!(named && rule.verbs == ["get", "update"], "{rule:?}");
        }
        assert!(!allows("", "secrets", "create"), "no Secret is created");
    }
}
