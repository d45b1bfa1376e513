//! `limits` (run by `make lint`): fails, naming each place, where the tree breaks the
//! project's limits: a production file over 500 lines (tests and their support may be
//! longer), a function over 80 lines anywhere, or an import loop between the modules of a
//! crate (its unit tests left out).

mod lengths;
mod loops;
mod names;
mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use lengths::{FILE_LIMIT, FUNCTION_LIMIT, long_functions};
use loops::import_loops;
use names::{Names, names};
use sources::{ModulePath, modules_by_crate, sources};

fn main() -> ExitCode {
    let top = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    match check(&top) {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("limits: {} problem(s) (see STYLE.md)", problems.len());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("limits: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Every problem in the tree at `top`, one line each.
fn check(top: &Path) -> anyhow::Result<Vec<String>> {
    let sources = sources(top)?;
    let mut problems = Vec::new();
    let mut parsed: BTreeMap<&Path, syn::File> = BTreeMap::new();
    for source in &sources {
        let path = &source.path;
        let text = std::fs::read_to_string(top.join(path))
            .with_context(|| format!("reading {}", path.display()))?;
        let lines = text.lines().count();
        if source.production && lines > FILE_LIMIT {
            problems.push(format!(
                "{}: {lines} lines (limit {FILE_LIMIT}): split it by concept",
                path.display()
            ));
        }
        let file = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        for long in long_functions(&file) {
            problems.push(format!(
                "{}:{}: fn {} is {} lines (limit {FUNCTION_LIMIT})",
                path.display(),
                long.line,
                long.name,
                long.lines
            ));
        }
        parsed.insert(path, file);
    }
    for (krate, modules) in modules_by_crate(&sources) {
        let names: BTreeMap<ModulePath, Names> = modules
            .iter()
            .filter_map(|(module, path)| Some(((*module).clone(), names(parsed.get(path)?))))
            .collect();
        for found in import_loops(&names) {
            problems.push(describe_loop(krate, &modules, &found));
        }
    }
    Ok(problems)
}

/// An import loop, with where each of its edges is named.
fn describe_loop(
    krate: &Path,
    files: &BTreeMap<&ModulePath, &Path>,
    found: &loops::Loop,
) -> String {
    let name = |module: &ModulePath| match module.is_empty() {
        true => "crate".to_owned(),
        false => module.join("::"),
    };
    let modules: Vec<String> = found.modules.iter().map(name).collect();
    let mut text = format!(
        "{}: import loop between {}",
        krate.display(),
        modules.join(", ")
    );
    for edge in &found.edges {
        let file = files
            .get(&edge.from)
            .map_or_else(String::new, |f| f.display().to_string());
        text.push_str(&format!(
            "\n    {file}:{}: {} uses {}",
            edge.line,
            name(&edge.from),
            name(&edge.to)
        ));
    }
    text
}
