//! The three modes, one a plugin: what a session does with the app container and its
//! traffic.

/// What a session does with the app container and its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `kubectl intercept`: chosen Service ports come to the workstation; the app keeps running.
    Intercept,
    /// `kubectl replace-container`: the app container leaves; all its traffic comes here.
    Replace,
    /// `kubectl ingest`: no traffic moves; the environment and volumes are read here.
    Ingest,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Intercept => "intercept",
            Self::Replace => "replace",
            Self::Ingest => "ingest",
        })
    }
}
