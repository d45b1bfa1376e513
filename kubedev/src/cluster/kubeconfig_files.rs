//! The kubeconfig as kubectl reads it: `--kubeconfig FILE`, else every file `KUBECONFIG`
//! lists that exists, merged in order (a missing one is skipped, as client-go does), else
//! ~/.kube/config.

use std::path::{Path, PathBuf};

use kube::config::Kubeconfig;

use super::ClusterError;

/// Reads the kubeconfig: `given` (`--kubeconfig`), else `KUBECONFIG`'s files, else the
/// default file.
pub fn read_kubeconfig(given: Option<&Path>) -> Result<Kubeconfig, ClusterError> {
    if let Some(path) = given {
        return read_file(path);
    }
    match std::env::var_os("KUBECONFIG").filter(|listed| !listed.is_empty()) {
        Some(listed) => merged(&std::env::split_paths(&listed).collect::<Vec<_>>()),
        None => Kubeconfig::read().map_err(|source| ClusterError::Read { source }),
    }
}

/// The files of `listed` that exist, merged in order: the first to set a value wins.
fn merged(listed: &[PathBuf]) -> Result<Kubeconfig, ClusterError> {
    let mut existing = listed.iter().filter(|path| path.exists());
    let Some(first) = existing.next() else {
        return Err(ClusterError::NoneListed {
            listed: listed.to_vec(),
        });
    };
    let mut kubeconfig = read_file(first)?;
    for path in existing {
        kubeconfig =
            kubeconfig
                .merge(read_file(path)?)
                .map_err(|source| ClusterError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
    }
    Ok(kubeconfig)
}

fn read_file(path: &Path) -> Result<Kubeconfig, ClusterError> {
    Kubeconfig::read_from(path).map_err(|source| ClusterError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_skipped_and_the_first_file_wins() {
        let dir = std::env::temp_dir().join(format!("kubedev-kubeconfigs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, context: &str| {
            let path = dir.join(name);
            let text = format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: {context}\ncontexts:\n- name: \
                 {context}\n  context: {{cluster: c, user: u}}\n"
            );
            std::fs::write(&path, text).expect("write");
            path
        };
        let (first, second) = (write("a.yaml", "first"), write("b.yaml", "second"));
        let listed = [dir.join("missing.yaml"), first, second];

        let kubeconfig = merged(&listed).expect("the files that exist");
        assert_eq!(kubeconfig.current_context.as_deref(), Some("first"));
        assert_eq!(kubeconfig.contexts.len(), 2);
        let none = merged(&listed[..1]).expect_err("none exists");
        assert!(none.to_string().contains("missing.yaml"), "{none}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
