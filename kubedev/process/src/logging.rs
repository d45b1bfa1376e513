//! Logging: the daemons' (agent, tunneld) at the level `KUBEDEV_LOG` sets (default info),
//! and the plugins' at kubectl's `-v LEVEL` (none by default), as plain lines on stderr,
//! readable in `kubectl logs` and in tunneld's log file.

use tracing_subscriber::EnvFilter;

/// Sends the process's log to stderr, at the level `KUBEDEV_LOG` sets (default info).
pub fn init() {
    let filter = EnvFilter::try_from_env("KUBEDEV_LOG").unwrap_or_else(|_| "info".into());
    to_stderr(filter);
}

/// A plugin's log: none unless `-v LEVEL` asks, as kubectl's levels go (1-3 what it does,
/// 4-5 how, 6-8 the API calls too, 9 and up everything). `KUBEDEV_LOG` is the daemons': a
/// plugin passes it on to the tunneld it starts.
pub fn init_plugin(verbosity: Option<u8>) {
    if let Some(filter) = verbosity.and_then(plugin_filter) {
        to_stderr(EnvFilter::new(filter));
    }
}

/// What kubectl's levels show of a plugin's log: 1-3 what kubedev does, 4-5 how (debug),
/// 6-8 each API call too (method, URL, status, time), 9 and up everything.
fn plugin_filter(verbosity: u8) -> Option<&'static str> {
    match verbosity {
        0 => None,
        1..=3 => Some("info"),
        4..=5 => Some("info,kubedev=debug,kubedev_cli=debug"),
        6..=8 => Some("info,kubedev=debug,kubedev_cli=debug,tower_http=debug"),
        _ => Some("trace"),
    }
}

fn to_stderr(filter: EnvFilter) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_levels_show_more_as_they_rise() {
        assert_eq!(plugin_filter(0), None);
        assert_eq!(plugin_filter(2), Some("info"));
        assert!(plugin_filter(4).is_some_and(|filter| filter.contains("kubedev=debug")));
        assert!(plugin_filter(6).is_some_and(|filter| filter.contains("tower_http=debug")));
        assert_eq!(plugin_filter(10), Some("trace"));
        for level in 0..=10 {
            if let Some(filter) = plugin_filter(level) {
                EnvFilter::try_new(filter).expect(filter);
            }
        }
    }
}
