//! Import loops: modules of one crate that depend on each other, directly or around a
//! circle. A module and its ancestors are one unit here (a child may use what its parent
//! declares, and the parent its children); what a parent only re-exports counts as the
//! module it comes from.

use std::collections::{BTreeMap, BTreeSet};

use super::names::Names;
use super::sources::ModulePath;

/// How deep re-exports of re-exports are followed.
const REEXPORT_DEPTH: usize = 8;

/// One module naming another, first on `line` of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) from: ModulePath,
    pub(crate) to: ModulePath,
    pub(crate) line: usize,
}

/// Modules that depend on each other, and the edges that close the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loop {
    pub(crate) modules: Vec<ModulePath>,
    pub(crate) edges: Vec<Edge>,
}

/// The import loops among the modules of one crate.
pub(crate) fn import_loops(modules: &BTreeMap<ModulePath, Names>) -> Vec<Loop> {
    let edges = edges(modules);
    let mut graph: BTreeMap<&ModulePath, BTreeSet<&ModulePath>> = BTreeMap::new();
    for edge in &edges {
        graph.entry(&edge.from).or_default().insert(&edge.to);
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| Loop {
            edges: edges
                .iter()
                .filter(|e| component.contains(&&e.from) && component.contains(&&e.to))
                .cloned()
                .collect(),
            modules: {
                let mut modules: Vec<ModulePath> = component.into_iter().cloned().collect();
                modules.sort();
                modules
            },
        })
        .collect()
}

/// Every dependency between two modules neither of which holds the other, with the line
/// of its first reference.
fn edges(modules: &BTreeMap<ModulePath, Names>) -> Vec<Edge> {
    let mut edges: BTreeMap<(ModulePath, ModulePath), usize> = BTreeMap::new();
    for (from, names) in modules {
        for reference in &names.references {
            let Some(to) = resolve(modules, from, &reference.segments, 0) else {
                continue;
            };
            if from.starts_with(&to) || to.starts_with(from) {
                continue;
            }
            let line = edges.entry((from.clone(), to)).or_insert(reference.line);
            *line = (*line).min(reference.line);
        }
    }
    edges
        .into_iter()
        .map(|((from, to), line)| Edge { from, to, line })
        .collect()
}

/// The module `segments` (a path written in module `from`) leads to: the longest run of
/// module names, then, where the next name is a re-export there, the module it comes
/// from. None for paths that leave the crate.
fn resolve(
    modules: &BTreeMap<ModulePath, Names>,
    from: &ModulePath,
    segments: &[String],
    depth: usize,
) -> Option<ModulePath> {
    let (mut module, mut rest) = match segments.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &segments[1..]),
        Some("self") => (from.clone(), &segments[1..]),
        Some("super") => {
            let mut module = from.clone();
            let mut rest = segments;
            while rest.first().is_some_and(|segment| segment == "super") {
                module.pop();
                rest = &rest[1..];
            }
            (module, rest)
        }
        // Relative to `from` (a re-export of a child's item), or another crate.
        Some(first) if modules.contains_key(&child(from, first)) => (from.clone(), segments),
        _ => return None,
    };
    while let Some(next) = rest.first().map(|name| child(&module, name)) {
        if !modules.contains_key(&next) {
            break;
        }
        module = next;
        rest = &rest[1..];
    }
    let reexported = rest
        .first()
        .and_then(|name| modules.get(&module)?.reexports.get(name))
        .filter(|_| depth < REEXPORT_DEPTH)
        .and_then(|path| resolve(modules, &module, path, depth + 1));
    Some(reexported.unwrap_or(module))
}

fn child(module: &ModulePath, name: &str) -> ModulePath {
    let mut child = module.clone();
    child.push(name.to_owned());
    child
}

/// Tarjan's strongly connected components of `graph`.
fn strongly_connected<'a>(
    graph: &BTreeMap<&'a ModulePath, BTreeSet<&'a ModulePath>>,
) -> Vec<Vec<&'a ModulePath>> {
    #[derive(Default)]
    struct Search<'a> {
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        components: Vec<Vec<&'a ModulePath>>,
    }
    fn visit<'a>(
        node: &'a ModulePath,
        graph: &BTreeMap<&'a ModulePath, BTreeSet<&'a ModulePath>>,
        search: &mut Search<'a>,
    ) {
        let index = search.index.len();
        search.index.insert(node, index);
        search.low.insert(node, index);
        search.stack.push(node);
        for &next in graph.get(node).into_iter().flatten() {
            let low = match search.index.get(next) {
                None => {
                    visit(next, graph, search);
                    search.low[next]
                }
                Some(&next_index) if search.stack.contains(&next) => next_index,
                Some(_) => continue,
            };
            let own = search.low[node].min(low);
            search.low.insert(node, own);
        }
        if search.low[node] == index {
            let at = search.stack.iter().position(|&n| n == node).unwrap_or(0);
            let component = search.stack.split_off(at);
            search.components.push(component);
        }
    }
    let mut search = Search::default();
    for &node in graph.keys() {
        if !search.index.contains_key(node) {
            visit(node, graph, &mut search);
        }
    }
    search.components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::names;

    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<ModulePath, Names> {
        files
            .iter()
            .map(|(module, source)| {
                let path = module
                    .split("::")
                    .filter(|part| !part.is_empty())
                    .map(str::to_owned)
                    .collect();
                (path, names(&syn::parse_file(source).expect("parses")))
            })
            .collect()
    }

    fn loops_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        import_loops(&crate_of(files))
            .into_iter()
            .map(|found| found.modules.iter().map(|m| m.join("::")).collect())
            .collect()
    }

    #[test]
    fn siblings_naming_each_other_are_a_loop() {
        let found = loops_of(&[
            ("", "mod a; mod b;"),
            ("a", "use super::b::B; pub struct A;"),
            ("b", "pub struct B; fn f(_: crate::a::A) {}"),
        ]);
        assert_eq!(found, [vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn a_parent_and_its_children_are_no_loop() {
        let found = loops_of(&[
            ("", "mod session;"),
            (
                "session",
                "mod start; pub use start::start; pub fn random_id() {}",
            ),
            ("session::start", "use super::random_id; pub fn start() {}"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_re_export_counts_as_the_module_it_comes_from() {
        let found = loops_of(&[
            ("", "mod session;"),
            ("session", "mod join; mod start; pub use start::Started;"),
            (
                "session::start",
                "use super::join::join; pub struct Started;",
            ),
            ("session::join", "use super::Started; pub fn join() {}"),
        ]);
        assert_eq!(
            found,
            [vec![
                "session::join".to_owned(),
                "session::start".to_owned()
            ]]
        );
    }

    #[test]
    fn one_way_dependencies_are_no_loop() {
        let found = loops_of(&[
            ("", "mod a; mod b; mod c;"),
            ("a", "use crate::b::B; use crate::c::C;"),
            ("b", "use crate::c::C; pub struct B;"),
            ("c", "pub struct C;"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }
}
