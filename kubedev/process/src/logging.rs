//! Logging of the daemons (agent, tunneld): plain lines on stderr, readable in
//! `kubectl logs` and in tunneld's log file, at the level `KUBEDEV_LOG` sets (default info).

/// Sends the process's log to stderr, at the level `KUBEDEV_LOG` sets (default info).
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEDEV_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
}
