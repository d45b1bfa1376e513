//! `list`: the sessions, as a table or as JSON or YAML.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;

use super::args::{ListOutput, Output};
use super::output::render;
use super::survey::{Listed, survey};
use kubedev::cluster::Connection;
use kubedev::session::lease::Holder;
use kubedev::session::{self, Candidate};
use kubedev::tunneld;

/// `list`: the sessions, with the pods tunneld links to here; with none in the namespace,
/// what a session can start on.
pub(super) async fn list(
    connection: &Connection,
    socket: &Path,
    output: Option<ListOutput>,
    all_namespaces: bool,
) -> anyhow::Result<()> {
    let daemon = tunneld::status(socket).await.ok();
    let survey = survey(connection, daemon.as_ref(), all_namespaces).await?;
    survey.note_limits();
    let rows = survey.rows(daemon.as_ref());
    let wide = output == Some(ListOutput::Wide);
    match output {
        Some(ListOutput::Json) => print!("{}", render(&rows, Output::Json)?),
        Some(ListOutput::Yaml) => print!("{}", render(&rows, Output::Yaml)?),
        Some(ListOutput::Name) => rows.iter().for_each(|row| println!("{}", row.name)),
        _ if rows.is_empty() && all_namespaces => eprintln!("no kubedev sessions"),
        _ if rows.is_empty() => {
            let namespace = &connection.namespace;
            let candidates = session::candidates_in(&connection.client, namespace).await?;
            if candidates.is_empty() {
                eprintln!("no kubedev sessions and no workloads in namespace {namespace}");
            } else {
                eprintln!("no kubedev sessions in namespace {namespace}; its workloads:");
                print!("{}", candidates_table(&candidates));
            }
        }
        _ => print!("{}", table(&rows, all_namespaces, wide, Timestamp::now())),
    }
    Ok(())
}

/// The workloads of a namespace, their containers and the Service ports leading to them.
fn candidates_table(candidates: &[Candidate]) -> String {
    let mut lines = vec![[
        "WORKLOAD".to_owned(),
        "CONTAINERS".to_owned(),
        "SERVICE PORTS".to_owned(),
    ]];
    for candidate in candidates {
        let services = candidate
            .services
            .iter()
            .map(|(service, ports)| {
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                format!("{service}: {}", ports.join(", "))
            })
            .collect::<Vec<_>>();
        lines.push([
            candidate.workload.to_string(),
            candidate.containers.join(","),
            match services.is_empty() {
                true => "(no Service)".to_owned(),
                false => services.join("; "),
            },
        ]);
    }
    aligned(&lines)
}

/// The sessions as a table, with their namespace for `-A`; `wide`, the linked pods by name.
fn table(rows: &[Listed], with_namespace: bool, wide: bool, now: Timestamp) -> String {
    let mut lines = vec![vec![
        "NAME".to_owned(),
        "MODE".to_owned(),
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "HOLDER".to_owned(),
        "LEASE".to_owned(),
        "LINKED PODS".to_owned(),
    ]];
    for row in rows {
        lines.push(vec![
            row.name.clone(),
            if row.wiretap {
                "wiretap".to_owned()
            } else {
                row.mode.clone()
            },
            row.workload.clone(),
            row.container.clone(),
            row.holder
                .as_ref()
                .map_or_else(|| "-".to_owned(), Holder::describe),
            row.lease_ends
                .map_or_else(|| "-".to_owned(), |ends| describe_lease(ends, now)),
            match wide {
                true if row.linked_pods.is_empty() => "-".to_owned(),
                true => row.linked_pods.join(","),
                false => row.linked_pods.len().to_string(),
            },
        ]);
    }
    if with_namespace {
        lines[0].insert(0, "NAMESPACE".to_owned());
        for (line, row) in lines.iter_mut().skip(1).zip(rows) {
            line.insert(0, row.namespace.clone());
        }
    }
    aligned(&lines)
}

/// `lines` as columns as wide as their widest cell, three spaces apart.
fn aligned<Line: AsRef<[String]>>(lines: &[Line]) -> String {
    let columns = lines.first().map_or(0, |line| line.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|i| lines.iter().map(|l| l.as_ref()[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .as_ref()
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("   ").trim_end().to_owned() + "\n"
        })
        .collect()
}

/// How long a lease ending at `ends` has left at `now` (`45s left`), or since when it ran out.
fn describe_lease(ends: Timestamp, now: Timestamp) -> String {
    let left = ends.duration_since(now).as_secs();
    if left >= 0 {
        format!("{left}s left")
    } else {
        format!("ran out {}s ago", -left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_a_table_with_aligned_columns() {
        let rows = [Listed {
            name: "web".into(),
            mode: "intercept".into(),
            wiretap: false,
            workload: "deployment/web".into(),
            container: "app".into(),
            namespace: "shop".into(),
            holder: Some(Holder {
                owner: "0f3a".into(),
                host: "laptop".into(),
                user: "alice".into(),
            }),
            lease_ends: Some("2026-12-01T10:01:00Z".parse().expect("time")),
            linked_pods: vec!["web-1".into()],
        }];
        let now = "2026-12-01T10:00:15Z".parse().expect("time");
        assert_eq!(
            table(&rows, false, false, now),
            "NAME   MODE        WORKLOAD         CONTAINER   HOLDER         LEASE      LINKED PODS\n\
             web    intercept   deployment/web   app         alice@laptop   45s left   1\n"
        );
        let later = "2026-12-01T10:01:03Z".parse().expect("time");
        assert!(table(&rows, false, false, later).contains("   ran out 3s ago   "));
        assert!(
            table(&rows, true, false, now).starts_with("NAMESPACE   NAME   MODE")
                && table(&rows, true, false, now).contains("\nshop        web    intercept"),
            "{}",
            table(&rows, true, false, now)
        );
        assert!(
            table(&rows, false, true, now).ends_with("45s left   web-1\n"),
            "wide: the pods by name"
        );
        let json = render(&rows, Output::Json).expect("json");
        assert!(json.contains("\"mode\": \"intercept\""), "{json}");
        let yaml = render(&rows, Output::Yaml).expect("yaml");
        assert!(yaml.contains("mode: intercept"), "{yaml}");
        assert!(
            json.contains("\"leaseEnds\": \"2026-12-01T10:01:00Z\"")
                && json.contains("\"linkedPods\""),
            "{json}"
        );
        assert!(json.contains("\"user\": \"alice\""), "{json}");
    }
}
