//! The Rust sources of the tree: which crate each belongs to, its module path, and
//! whether it is production code (everything but tests and their support).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A module path inside its crate (`["session", "start"]`); empty for the crate root.
pub(crate) type ModulePath = Vec<String>;

/// One Rust source file.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// Relative to the repository's top directory.
    pub(crate) path: PathBuf,
    /// The folder of the crate it belongs to (`kubedev/cli`).
    pub(crate) krate: PathBuf,
    /// Its module in that crate; none for files that are crate roots of their own
    /// (binaries under `src/bin`, integration tests, build scripts).
    pub(crate) module: Option<ModulePath>,
    /// Not a test and not test support.
    pub(crate) production: bool,
    /// A module of unit tests (`tests.rs`, `*_tests.rs`).
    pub(crate) unit_tests: bool,
}

/// Every Rust file git tracks, or would track, below `top`, with its crate and module.
pub(crate) fn sources(top: &Path) -> anyhow::Result<Vec<Source>> {
    let files = git_files(top)?;
    let crates: Vec<PathBuf> = files
        .iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "Cargo.toml"))
        .map(|path| path.parent().map(Path::to_path_buf).unwrap_or_default())
        .collect();
    Ok(files
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter_map(|path| {
            let krate = crate_of(&path, &crates)?;
            let relative = path.strip_prefix(&krate).ok()?.to_path_buf();
            Some(Source {
                module: module_path(&relative),
                production: is_production(&path),
                unit_tests: is_unit_tests(&path),
                krate,
                path,
            })
        })
        .collect())
}

/// The modules of each crate but its unit tests, by crate folder: module path -> file.
pub(crate) fn modules_by_crate(
    sources: &[Source],
) -> BTreeMap<&Path, BTreeMap<&ModulePath, &Path>> {
    let mut crates: BTreeMap<&Path, BTreeMap<&ModulePath, &Path>> = BTreeMap::new();
    for source in sources.iter().filter(|source| !source.unit_tests) {
        if let Some(module) = &source.module {
            crates
                .entry(source.krate.as_path())
                .or_default()
                .insert(module, source.path.as_path());
        }
    }
    crates
}

fn git_files(top: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(top)
        .output()
        .context("running git ls-files")?;
    if !output.status.success() {
        bail!(
            "git ls-files: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let listed = String::from_utf8(output.stdout).context("git ls-files printed non-UTF-8")?;
    // A deleted file is still listed until the deletion is staged.
    Ok(listed
        .split('\0')
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .filter(|path| top.join(path).exists())
        .collect())
}

/// The innermost crate folder holding `path`.
fn crate_of(path: &Path, crates: &[PathBuf]) -> Option<PathBuf> {
    crates
        .iter()
        .filter(|krate| path.starts_with(krate))
        .max_by_key(|krate| krate.components().count())
        .cloned()
}

/// The module of a file at `relative` in its crate: `src/lib.rs` and `src/main.rs` are
/// the root, `src/a/b.rs` is `a::b`; none outside `src/` and under `src/bin/`.
fn module_path(relative: &Path) -> Option<ModulePath> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) != Some("src")
        || parts.get(1).map(String::as_str) == Some("bin")
    {
        return None;
    }
    parts.remove(0);
    let file = parts.pop()?;
    match file.as_str() {
        "lib.rs" | "main.rs" if parts.is_empty() => {}
        _ => parts.push(file.strip_suffix(".rs")?.to_owned()),
    }
    Some(parts)
}

/// Production code: not under a `tests` folder, not a module of unit tests, not a fuzz
/// target.
fn is_production(path: &Path) -> bool {
    let in_tests = path.iter().any(|part| part == "tests" || part == "fuzz");
    !is_unit_tests(path) && !in_tests
}

/// A module of unit tests: `tests.rs` or `*_tests.rs`.
fn is_unit_tests(path: &Path) -> bool {
    path.file_stem()
        .map(|stem| stem.to_string_lossy())
        .is_some_and(|name| name == "tests" || name.ends_with("_tests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_map_to_modules_as_rustc_finds_them() {
        let module = |path: &str| module_path(Path::new(path));
        assert_eq!(module("src/lib.rs"), Some(vec![]));
        assert_eq!(module("src/main.rs"), Some(vec![]));
        assert_eq!(module("src/session.rs"), Some(vec!["session".to_owned()]));
        assert_eq!(
            module("src/session/start.rs"),
            Some(vec!["session".to_owned(), "start".to_owned()])
        );
        assert_eq!(module("src/bin/probe.rs"), None);
        assert_eq!(module("tests/loopback.rs"), None);
        assert_eq!(module("build.rs"), None);
    }

    #[test]
    fn tests_and_their_support_are_not_production() {
        assert!(is_production(Path::new("kubedev/src/session/start.rs")));
        assert!(is_production(Path::new("bench/src/soak.rs")));
        assert!(!is_production(Path::new("kubedev/src/session/tests.rs")));
        assert!(!is_production(Path::new(
            "kubedev/src/session/lease_tests.rs"
        )));
        assert!(!is_production(Path::new("agent-image/tests/loopback.rs")));
        assert!(!is_production(Path::new("tests/e2e/src/lib.rs")));
        assert!(!is_production(Path::new("fuzz/fuzz_targets/handshake.rs")));
    }

    #[test]
    fn a_file_belongs_to_its_innermost_crate() {
        let crates = [PathBuf::from("kubedev"), PathBuf::from("kubedev/cli")];
        assert_eq!(
            crate_of(Path::new("kubedev/cli/src/run.rs"), &crates),
            Some(PathBuf::from("kubedev/cli"))
        );
        assert_eq!(
            crate_of(Path::new("kubedev/src/lib.rs"), &crates),
            Some(PathBuf::from("kubedev"))
        );
        assert_eq!(crate_of(Path::new("bench/src/main.rs"), &crates), None);
    }
}
