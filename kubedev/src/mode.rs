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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_is_written_and_recorded_under_one_name() {
        for (mode, name) in [
            (Mode::Intercept, "intercept"),
            (Mode::Replace, "replace"),
            (Mode::Ingest, "ingest"),
        ] {
            assert_eq!(mode.to_string(), name);
            let recorded = serde_json::to_string(&mode).expect("json");
            assert_eq!(recorded, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Mode>(&recorded).ok(), Some(mode));
        }
    }
}
