//! Which tunneld the plugins run.

use std::path::{Path, PathBuf};

/// The krew plugins whose archives hold a tunneld.
const PLUGINS: [&str; 3] = ["intercept", "ingest", "replace-container"];

/// The tunneld the plugins start: `$KUBEDEV_TUNNELD`, else the tunneld beside this
/// plugin, else the one in krew's store for this version (krew on Windows copies a plugin
/// into its `bin` directory where it may not link it, leaving tunneld behind in the
/// store), else PATH's.
pub fn tunneld_binary() -> PathBuf {
    let name = format!("tunneld{}", std::env::consts::EXE_SUFFIX);
    std::env::var_os("KUBEDEV_TUNNELD")
        .map(PathBuf::from)
        .or_else(|| {
            let beside = std::env::current_exe().ok()?.with_file_name(&name);
            beside.exists().then_some(beside)
        })
        .or_else(|| {
            let root = krew_root()?;
            in_krew_store(&root, &name).find(|path| path.exists())
        })
        .unwrap_or_else(|| PathBuf::from("tunneld"))
}

/// krew's root: `$KREW_ROOT`, else `~/.krew` (`%USERPROFILE%\.krew` on Windows); never a
/// relative one, which would be wherever the plugin runs (a repository could plant one).
fn krew_root() -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("KREW_ROOT").or_else(|| {
        absolute(if cfg!(windows) { "USERPROFILE" } else { "HOME" }).map(|home| home.join(".krew"))
    })
}

/// Where each plugin of this version keeps its tunneld in krew's store at `root`.
fn in_krew_store<'a>(root: &'a Path, name: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    let version = concat!("v", env!("CARGO_PKG_VERSION"));
    PLUGINS
        .iter()
        .map(move |plugin| root.join("store").join(plugin).join(version).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krews_store_holds_a_tunneld_per_plugin_of_this_version() {
        let found: Vec<PathBuf> = in_krew_store(Path::new("/home/dev/.krew"), "tunneld").collect();
        let version = concat!("v", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            found[0],
            Path::new("/home/dev/.krew/store/intercept")
                .join(version)
                .join("tunneld")
        );
        assert_eq!(found.len(), 3);
    }
}
