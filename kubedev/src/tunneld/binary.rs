//! Which tunneld the plugins run.

use std::path::PathBuf;

/// The tunneld the plugins start: `$KUBEDEV_TUNNELD`, else the tunneld beside this
/// plugin, else PATH's.
pub fn tunneld_binary() -> PathBuf {
    std::env::var_os("KUBEDEV_TUNNELD")
        .map(PathBuf::from)
        .or_else(|| {
            let beside = std::env::current_exe()
                .ok()?
                .with_file_name(format!("tunneld{}", std::env::consts::EXE_SUFFIX));
            beside.exists().then_some(beside)
        })
        .unwrap_or_else(|| PathBuf::from("tunneld"))
}
