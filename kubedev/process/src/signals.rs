//! The signals that stop a kubedev process cleanly: Ctrl-C (SIGINT), SIGTERM, and SIGHUP
//! (a closed terminal). The plugins end their session on them, tunneld undoes what it
//! changed on the machine, and the agent exits at once (as PID 1 of its container it gets
//! no default handling: without this, SIGTERM would be ignored and every pod would wait out
//! its grace period).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop signals, listened for. From then on they no longer kill the process, and one
/// that arrives before [`StopSignals::recv`] is asked is kept for it.
#[derive(Debug)]
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Starts listening for them.
    pub fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Completes when one of them arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}
