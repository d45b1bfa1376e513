//! What the plugins print: JSON and YAML, tunneld's state, notes about the cluster
//! network, and progress while waiting on the cluster.

use std::time::Duration;

use serde::Serialize;

use super::args::Output;
use kubedev::control::PodPort;
use kubedev::control::{
    DaemonStatus, NetworkStatus, ProxyStatus, RangeState, RangeStatus, ResolverStatus,
};
use kubedev::mode::Mode;
use kubedev::session::{Plan, Started};
use kubedev::workload::Progress;

pub(super) fn render<T: Serialize>(value: &T, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_saphyr::to_string(value)?,
    })
}

/// What `status -o json|yaml` prints: the tunneld's status with `running: true`, or
/// `running: false` and no sessions when none serves this context.
pub(super) fn status_report(status: Option<&DaemonStatus>) -> anyhow::Result<serde_json::Value> {
    let mut report = match status {
        Some(status) => serde_json::to_value(status)?,
        None => serde_json::json!({ "sessions": [] }),
    };
    if let Some(fields) = report.as_object_mut() {
        fields.insert("running".to_owned(), status.is_some().into());
    }
    Ok(report)
}

/// Why the cluster's network is not on this machine, and what reaches it anyway: on Linux,
/// `-- CMD` in a namespace of its own.
#[cfg(target_os = "linux")]
fn unavailable_note(reason: &str, command: &str) -> String {
    // tunneld runs as this plugin's user.
    let without = if kubedev::private_files::own_uid() == 0 {
        ""
    } else {
        " without root"
    };
    format!(
        "the cluster's network (service names, pod and service IPs) is not available to this \
         whole machine{without}: {reason}. `-- CMD` gets it in a network namespace of its own \
         where this machine allows one, and tunneld's proxy carries it for tools that take a \
         proxy (`{command} status` shows how). Intercepted traffic and the environment work \
         without it."
    )
}

/// Why the cluster's network is not on this machine, and what reaches it anyway: on macOS
/// and Windows, tunneld's proxy, for `-- CMD` too.
#[cfg(not(target_os = "linux"))]
fn unavailable_note(reason: &str, command: &str) -> String {
    format!(
        "{reason}. `-- CMD` gets ALL_PROXY, HTTP_PROXY and HTTPS_PROXY for it; other tools \
         that take a proxy use it as `{command} status` shows. Intercepted traffic and the \
         environment need nothing more."
    )
}

/// What the user should know about the cluster network once a session is live: that it
/// is missing, or that part of it was left to this machine or excluded (one line).
pub(super) fn network_notes(network: &NetworkStatus, command: &str) -> Vec<String> {
    match network {
        NetworkStatus::Off => Vec::new(),
        NetworkStatus::Unavailable { reason } => vec![unavailable_note(reason, command)],
        NetworkStatus::Up {
            ranges,
            resolver,
            dns,
            ..
        } => {
            let mut notes = Vec::new();
            let skipped: Vec<String> = ranges
                .iter()
                .flat_map(|range| match range.state {
                    RangeState::Routed => range
                        .except
                        .iter()
                        .map(|part| format!("{} ({})", part.range, part.reason))
                        .collect(),
                    RangeState::Machine => vec![format!(
                        "{} (this machine's route {})",
                        range.range,
                        range.via.as_deref().unwrap_or_default()
                    )],
                    RangeState::Excluded => vec![format!("{} ({})", range.range, range.reason)],
                })
                .collect();
            if !skipped.is_empty() {
                notes.push(format!(
                    "not routed to the cluster: {}; see `{command} status`, --also-proxy and \
                     --never-proxy",
                    skipped.join(", ")
                ));
            }
            if let ResolverStatus::Unchanged { reason, .. } = resolver {
                notes.push(format!(
                    "this machine's DNS settings are left as they are ({reason}); \
                     cluster names are answered at {dns}, and `-- CMD` gets them"
                ));
            }
            notes
        }
    }
}

pub(super) fn describe_range(range: &RangeStatus) -> String {
    let cidr = range.range.to_string();
    let mut line = match range.state {
        RangeState::Routed => format!("  {cidr:<18} routed: {}\n", range.reason),
        RangeState::Machine => format!(
            "  {cidr:<18} left to this machine's route {}\n",
            range.via.as_deref().unwrap_or_default()
        ),
        RangeState::Excluded => format!("  {cidr:<18} not routed: {}\n", range.reason),
    };
    for part in &range.except {
        line += &format!("    except {}: {}\n", part.range, part.reason);
    }
    line
}

pub(super) fn describe_status(status: Option<&DaemonStatus>) -> String {
    let Some(status) = status else {
        return "tunneld is not running (no session on this machine for this context)\n".into();
    };
    let mut out = format!("tunneld: running (pid {})\n", status.pid);
    if let Some(skew) = status.skew(env!("CARGO_PKG_VERSION")) {
        out += &format!("warning: {skew}\n");
    }
    out += &match &status.network {
        NetworkStatus::Off => "cluster network: off\n".to_owned(),
        NetworkStatus::Up {
            routes,
            ranges,
            dns,
            resolver,
            helper,
        } => {
            let mut text = format!("cluster network: up, DNS {dns} (through {resolver})\n");
            if let Some(helper) = helper {
                text += &format!("  made by the network helper at {}\n", helper.display());
            }
            text.extend(ranges.iter().map(describe_range));
            let routes: Vec<String> = routes.iter().map(ToString::to_string).collect();
            text + &format!("  routes into the tunnel: {}\n", routes.join(" "))
        }
        NetworkStatus::Unavailable { reason } => {
            format!("cluster network: unavailable: {reason}\n")
        }
    };
    if let Some(proxy) = &status.proxy {
        out += &describe_proxy(proxy);
    }
    for session in &status.sessions {
        out += &format!(
            "session {} (namespace {}): {} linked pod{}",
            session.name,
            session.namespace,
            session.linked_pods.len(),
            if session.linked_pods.len() == 1 {
                ""
            } else {
                "s"
            }
        );
        if let Some(counts) = &session.wiretap {
            out += &format!(
                ", wiretap: {} copied, {} dropped",
                counts.copied, counts.dropped
            );
        }
        out.push('\n');
    }
    out
}

/// The proxy, and how to use it: in one command's environment, never on a command line
/// (every user of the machine can read those) and never exported for a whole shell (the
/// port may be another user's once tunneld has gone; and kubectl and the plugins follow
/// `HTTPS_PROXY` to the API server).
fn describe_proxy(proxy: &ProxyStatus) -> String {
    format!(
        "proxy: {}, SOCKS5 and HTTP, into the cluster's network with its names (no root needed)\n  \
         {}\n  \
         {HTTP_PROXY_NAMES}: {}\n  \
         (give them to one command at a time: the port is another user's to take once this \
         tunneld has gone)\n",
        proxy.address,
        proxy_example(&proxy.socks_url),
        proxy.http_url
    )
}

/// The variables an HTTP proxy goes in, as this system's tools read them.
#[cfg(unix)]
const HTTP_PROXY_NAMES: &str =
    "http_proxy and HTTPS_PROXY (curl reads only the lowercase http_proxy)";
/// The variables an HTTP proxy goes in: Windows ignores the letter case of their names.
#[cfg(windows)]
const HTTP_PROXY_NAMES: &str = "HTTP_PROXY and HTTPS_PROXY";

/// One command given the proxy, in the shell of this system.
#[cfg(unix)]
fn proxy_example(socks_url: &str) -> String {
    let no_proxy = kubedev::proxy_env::LOOPBACK.join(",");
    format!("ALL_PROXY={socks_url} NO_PROXY={no_proxy} curl http://SERVICE.NAMESPACE:PORT/")
}

/// One command given the proxy, in the shell of this system: PowerShell, which sets a
/// variable for the whole session, so it is removed after the command.
#[cfg(windows)]
fn proxy_example(socks_url: &str) -> String {
    let no_proxy = kubedev::proxy_env::LOOPBACK.join(",");
    format!(
        "$Env:ALL_PROXY='{socks_url}'; $Env:NO_PROXY='{no_proxy}'; curl.exe \
         http://SERVICE.NAMESPACE:PORT/; Remove-Item Env:ALL_PROXY, Env:NO_PROXY"
    )
}

/// A spinner with `message`; it clears itself when dropped, also unfinished (the wait it
/// shows was cut short). Where stderr is no terminal (CI, a pipe, a log), no spinner can
/// be drawn: the message is printed as a line instead, as is each progress
/// ([`progress_on`]), so that a long wait is never silent.
pub(super) fn spinner(message: String) -> indicatif::ProgressBar {
    let bar = progress_spinner(message.clone());
    if bar.is_hidden() {
        eprintln!("{message}");
    }
    bar
}

/// Like [`spinner`], but where there is no terminal nothing is printed until the first
/// progress (see [`progress_on`]): a start refused before it changes anything says only
/// why.
pub(super) fn progress_spinner(message: String) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndClear);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message);
    bar
}

/// Shows each rollout progress on `bar`, or as a line of its own where `bar` is hidden.
pub(super) fn progress_on(bar: &indicatif::ProgressBar) -> impl FnMut(&Progress) + use<> {
    let bar = bar.clone();
    let base = bar.message();
    move |progress| match bar.is_hidden() {
        true => eprintln!("{base}: {progress}"),
        false => bar.set_message(format!("{base}: {progress}")),
    }
}

/// What a started session does, port by port.
pub(super) fn report_started(plan: &Plan, started: &Started, to_pod: &[PodPort]) {
    let what = match plan.mode {
        Mode::Intercept if plan.wiretap => "wiretapping",
        Mode::Intercept => "intercepting",
        Mode::Replace => "replacing",
        Mode::Ingest => "ingesting",
    };
    eprintln!(
        "{what} container {} of {} ({} pod{})",
        started.record.container,
        plan.workload,
        started.workload.replicas(),
        if started.workload.replicas() == 1 {
            ""
        } else {
            "s"
        }
    );
    for forward in &started.forwards {
        let only = forward
            .filter
            .as_ref()
            .map(describe_filter)
            .unwrap_or_default();
        let copies = if forward.wiretap {
            " (copies; the app answers every request)"
        } else {
            ""
        };
        let tls = (plan.tls_secret.as_ref())
            .map(|secret| format!(", in TLS with the certificate of secret {secret}"))
            .unwrap_or_default();
        eprintln!(
            "  container port {} -> {}{only}{copies}{tls}",
            forward.app_port,
            forward.local_address()
        );
    }
    for port in to_pod {
        eprintln!("  localhost:{port} -> the pod's localhost:{port}");
    }
}

/// An HTTP filter, in words.
fn describe_filter(filter: &kubedev_protocol::HttpFilter) -> String {
    let mut parts: Vec<String> = filter
        .headers
        .iter()
        .map(|(name, value)| format!("header {name}: {value}"))
        .collect();
    if let Some(prefix) = &filter.path_prefix {
        parts.push(format!("path {prefix}*"));
    }
    format!(
        " (only HTTP requests with {}; the rest go to the app)",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubedev::cidr;
    use kubedev::control;

    #[test]
    fn status_without_a_tunneld_says_it_is_not_running() {
        let report = status_report(None).expect("a report");
        assert_eq!(
            report,
            serde_json::json!({"running": false, "sessions": []})
        );
    }

    #[test]
    fn the_network_is_described_range_by_range_and_skips_are_noted() {
        let range = |text| cidr::parse(text).expect("range");
        let network = NetworkStatus::Up {
            routes: vec![range("10.96.0.0/17"), range("10.96.128.0/17")],
            ranges: vec![
                RangeStatus {
                    range: range("10.96.0.0/16"),
                    state: RangeState::Routed,
                    reason: "--also-proxy".into(),
                    via: None,
                    except: vec![control::RangePart {
                        range: range("10.96.0.1/32"),
                        reason: "the API server's address".into(),
                    }],
                },
                RangeStatus {
                    range: range("10.244.0.0/24"),
                    state: RangeState::Machine,
                    reason: "this machine already reaches it through a route of its own".into(),
                    via: Some("10.244.0.0/24 dev cni0".into()),
                    except: Vec::new(),
                },
            ],
            dns: "198.18.0.53".into(),
            resolver: ResolverStatus::Unchanged {
                reason: "the kubelet on this machine (pid 7) hands /etc/resolv.conf to its pods"
                    .into(),
                for_commands: "/run/kubedev/resolv.conf.for-commands".into(),
            },
            helper: Some("/run/kubedev-network.sock".into()),
        };
        let status = DaemonStatus {
            pid: 42,
            version: Some(env!("CARGO_PKG_VERSION").into()),
            network: network.clone(),
            proxy: None,
            sessions: Vec::new(),
        };
        assert_eq!(
            describe_status(Some(&status)),
            "tunneld: running (pid 42)\n\
             cluster network: up, DNS 198.18.0.53 (through none: the kubelet on this machine \
             (pid 7) hands /etc/resolv.conf to its pods)\n  \
             made by the network helper at /run/kubedev-network.sock\n  \
             10.96.0.0/16       routed: --also-proxy\n    \
             except 10.96.0.1/32: the API server's address\n  \
             10.244.0.0/24      left to this machine's route 10.244.0.0/24 dev cni0\n  \
             routes into the tunnel: 10.96.0.0/17 10.96.128.0/17\n"
        );
        let notes = network_notes(&network, "kubectl intercept");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "not routed to the cluster: 10.96.0.1/32 (the API server's address), \
                 10.244.0.0/24 (this machine's route 10.244.0.0/24 dev cni0)"
            ),
            "{}",
            notes[0]
        );
        assert!(notes[1].contains("cluster names are answered at 198.18.0.53"));
        let json = render(&status, Output::Json).expect("json");
        assert!(json.contains("\"state\": \"machine\""), "{json}");
        assert!(
            json.contains("\"via\": \"10.244.0.0/24 dev cni0\""),
            "{json}"
        );
    }

    #[test]
    fn the_proxy_is_shown_with_how_to_use_it() {
        let status = DaemonStatus {
            pid: 42,
            version: Some(env!("CARGO_PKG_VERSION").into()),
            network: NetworkStatus::Unavailable {
                reason: "needs root".into(),
            },
            proxy: Some(ProxyStatus::new(
                "127.0.0.1:41234".parse().expect("address"),
                "s3cr3t",
            )),
            sessions: Vec::new(),
        };
        let text = describe_status(Some(&status));
        let socks = "socks5h://kubedev:s3cr3t@127.0.0.1:41234";
        let http = "http://kubedev:s3cr3t@127.0.0.1:41234";
        assert!(
            text.contains("\nproxy: 127.0.0.1:41234, SOCKS5 and HTTP"),
            "{text}"
        );
        #[cfg(unix)]
        assert!(
            text.contains(&format!(
                "  ALL_PROXY={socks} NO_PROXY=localhost,127.0.0.1,::1 curl \
                 http://SERVICE.NAMESPACE:PORT/\n  http_proxy and HTTPS_PROXY (curl reads only \
                 the lowercase http_proxy): {http}\n"
            )),
            "{text}"
        );
        assert!(!text.contains("export"), "{text}");
        for output in [Output::Json, Output::Yaml] {
            let rendered = render(&status, output).expect("rendered");
            assert!(rendered.contains(socks), "{rendered}");
            assert!(rendered.contains(http), "{rendered}");
        }
    }
}
