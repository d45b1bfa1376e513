//! Who may use tunneld's control socket. Whoever connects can add sessions, read the
//! containers' environment (secrets) and open their volumes, so each connection's user, as
//! the kernel reports it (`SO_PEERCRED`), must be one tunneld serves: today the user it
//! runs as. The socket's mode and directory already keep others out; this holds even where
//! they do not.

/// The users whose connections tunneld serves.
#[derive(Debug, Clone)]
pub(super) struct AllowedPeers {
    uids: Vec<u32>,
}

impl AllowedPeers {
    /// Only the user tunneld runs as.
    pub(super) fn this_user() -> Self {
        Self {
            uids: vec![kubedev::private_files::own_uid()],
        }
    }

    /// Refuses a connection from user `uid` (process `pid`) unless it is allowed; the
    /// refusal says who it was.
    pub(super) fn check(&self, uid: u32, pid: Option<i32>) -> Result<(), String> {
        if self.uids.contains(&uid) {
            return Ok(());
        }
        let allowed: Vec<String> = self.uids.iter().map(ToString::to_string).collect();
        Err(format!(
            "refused a control connection from uid {uid} (pid {}): tunneld serves uid {} only",
            pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
            allowed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_user_tunneld_runs_as_is_served() {
        let peers = AllowedPeers::this_user();
        let own = kubedev::private_files::own_uid();
        assert!(peers.check(own, Some(1)).is_ok());
        let refusal = peers.check(own + 1, Some(4321)).expect_err("another user");
        assert!(refusal.contains(&format!("uid {}", own + 1)), "{refusal}");
        assert!(refusal.contains("pid 4321"), "{refusal}");
    }
}
