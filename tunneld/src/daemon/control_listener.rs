//! The control channel's listening side. On Unix, a socket in a directory of this user's
//! own that no one else may enter, whose every client must run as this user
//! ([`super::peers`]); on Windows, a loopback port whose clients must first send the key
//! in the endpoint file ([`kubedev::tunneld::ControlListener`]).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kubedev::tunneld::ControlStream;

/// How often refused connections are logged, at most: anyone on the machine can connect to
/// a loopback port, and must not fill tunneld's log.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(60);

/// How many connections may be waiting to prove their key at once (Windows): each waits
/// up to 5 seconds, and anyone on the machine can open them.
#[cfg(windows)]
const UNPROVEN_AT_MOST: usize = 32;

/// Refused connections, logged one line per [`REFUSALS_LOGGED_EVERY`] at most.
#[derive(Debug, Default)]
struct Refusals {
    /// When one was last logged, and how many were refused since.
    since: Mutex<Option<(Instant, u64)>>,
}

impl Refusals {
    /// Logs `refusal` if none was logged lately, with how many were refused meanwhile;
    /// counts it otherwise.
    fn note(&self, refusal: &str) {
        if let Some(line) = self.line_for(refusal) {
            tracing::warn!("{line}");
        }
    }

    /// The line to log for `refusal`, if one is due.
    fn line_for(&self, refusal: &str) -> Option<String> {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((logged, count)) = &mut *since
            && logged.elapsed() < REFUSALS_LOGGED_EVERY
        {
            *count += 1;
            return None;
        }
        let line = match since.take() {
            Some((_, count @ 1..)) => {
                format!("{refusal} (and {count} more refused since the last one logged)")
            }
            _ => refusal.to_owned(),
        };
        *since = Some((Instant::now(), 0));
        Some(line)
    }

    /// The line for the refusals counted since the last one logged, if any.
    fn unreported(&mut self) -> Option<String> {
        let since = self.since.get_mut().unwrap_or_else(|e| e.into_inner());
        match since.take() {
            Some((_, count @ 1..)) => Some(format!(
                "{count} more control connections refused since the last one logged"
            )),
            _ => None,
        }
    }
}

impl Drop for Refusals {
    /// Logs the refusals not yet reported, so that none goes unsaid.
    fn drop(&mut self) {
        if let Some(line) = self.unreported() {
            tracing::warn!("{line}");
        }
    }
}

/// Where tunneld takes control connections.
#[derive(Debug)]
pub(super) struct ControlListener {
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
    #[cfg(unix)]
    peers: super::peers::AllowedPeers,
    #[cfg(windows)]
    listener: kubedev::tunneld::ControlListener,
    /// Room for connections still to prove their key.
    #[cfg(windows)]
    unproven: tokio::sync::Semaphore,
    /// The connections refused, for the log.
    refusals: Refusals,
}

impl ControlListener {
    /// Binds the control socket (made with mode 0600, in a directory made with mode 0700
    /// if missing), refusing if another tunneld answers there and replacing a socket file
    /// a dead one left behind.
    #[cfg(unix)]
    pub(super) async fn bind(socket: &Path) -> anyhow::Result<Self> {
        use tokio::net::{UnixListener, UnixStream};
        private_parent(socket)?;
        if UnixStream::connect(socket).await.is_ok() {
            anyhow::bail!("another tunneld is already serving {}", socket.display());
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("listen on {}", socket.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            peers: super::peers::AllowedPeers::this_user(),
            refusals: Refusals::default(),
        })
    }

    /// Listens on a loopback port and writes the endpoint file `socket` that names it,
    /// refusing if another tunneld answers there.
    #[cfg(windows)]
    pub(super) async fn bind(socket: &Path) -> anyhow::Result<Self> {
        private_parent(socket)?;
        let listener = kubedev::tunneld::ControlListener::bind(socket)
            .await
            .with_context(|| format!("serve {}", socket.display()))?;
        Ok(Self {
            listener,
            unproven: tokio::sync::Semaphore::new(UNPROVEN_AT_MOST),
            refusals: Refusals::default(),
        })
    }

    /// Removes the socket, or on Windows the endpoint file if it is still this tunneld's.
    pub(super) fn remove(&self, socket: &Path) {
        #[cfg(unix)]
        let _ = std::fs::remove_file(socket);
        #[cfg(windows)]
        self.listener.remove_endpoint(socket);
    }

    /// The next connection, not yet admitted.
    pub(super) async fn accept(&self) -> std::io::Result<ControlStream> {
        #[cfg(unix)]
        return self.listener.accept().await.map(|(stream, _)| stream);
        #[cfg(windows)]
        return self.listener.accept().await;
    }

    /// Takes `stream` if its peer may use tunneld. A refusal, which says who it was, is
    /// logged before the stream closes, so the log has it by the time the peer sees the end.
    pub(super) async fn admit(&self, mut stream: ControlStream) -> Option<ControlStream> {
        match self.check(&mut stream).await {
            Ok(()) => Some(stream),
            Err(refusal) => {
                self.refusals.note(&refusal);
                drop(stream);
                None
            }
        }
    }

    /// Whether the peer of `stream` may use tunneld.
    #[cfg(unix)]
    async fn check(&self, stream: &mut ControlStream) -> Result<(), String> {
        match stream.peer_cred() {
            Ok(peer) => self.peers.check(peer.uid(), peer.pid()),
            Err(err) => Err(format!("refused a control connection: its user: {err}")),
        }
    }

    /// Whether the peer of `stream` proves the key, while there is room to wait for it.
    #[cfg(windows)]
    async fn check(&self, stream: &mut ControlStream) -> Result<(), String> {
        match self.unproven.try_acquire() {
            Ok(_room) => self.listener.admit(stream).await,
            Err(_) => Err(format!(
                "refused a control connection: {UNPROVEN_AT_MOST} others are still to prove \
                 their key"
            )),
        }
    }
}

/// Makes the control socket's directory tunneld's own.
fn private_parent(socket: &Path) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        kubedev::private_files::private_dir(dir)
            .context("the control socket's directory must be tunneld's own")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_after_the_first_are_counted_and_reported_at_the_end() {
        let mut refusals = Refusals::default();
        assert_eq!(refusals.line_for("refused").as_deref(), Some("refused"));
        for _ in 0..4 {
            assert_eq!(refusals.line_for("refused"), None, "counted, not logged");
        }
        assert_eq!(
            refusals.unreported().as_deref(),
            Some("4 more control connections refused since the last one logged")
        );
        assert_eq!(refusals.unreported(), None, "reported once");
    }

    #[test]
    fn the_next_line_due_says_how_many_were_counted() {
        let refusals = Refusals::default();
        let long_ago = Instant::now().checked_sub(REFUSALS_LOGGED_EVERY * 2);
        *refusals.since.lock().expect("lock") = long_ago.map(|at| (at, 3));
        assert_eq!(
            refusals.line_for("refused").as_deref(),
            Some("refused (and 3 more refused since the last one logged)")
        );
    }
}
