//! What a module names of its own crate (paths from `crate`, `super` or `self`, in `use`
//! items, types and expressions), and what it re-exports.

use std::collections::BTreeMap;

use syn::visit::Visit;

/// A path into the crate, and the line it is named on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub(crate) segments: Vec<String>,
    pub(crate) line: usize,
}

/// The crate-relative names of one module's file (test modules left out).
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) references: Vec<Reference>,
    /// Each name the module re-exports (`pub use`, any visibility but private), and the
    /// path it stands for, as written.
    pub(crate) reexports: BTreeMap<String, Vec<String>>,
}

/// The names `file` uses and re-exports.
pub(crate) fn names(file: &syn::File) -> Names {
    let mut names = Names::default();
    names.visit_file(file);
    names
}

/// The first segment of a path into the crate.
fn starts_in_crate(first: &str) -> bool {
    matches!(first, "crate" | "super" | "self")
}

impl Names {
    fn add_use(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>, exported: bool) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.add_use(&path.tree, prefix, exported);
                prefix.pop();
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.add_use(tree, prefix, exported);
                }
            }
            syn::UseTree::Name(name) => self.add_leaf(prefix, &name.ident, &name.ident, exported),
            syn::UseTree::Rename(rename) => {
                self.add_leaf(prefix, &rename.ident, &rename.rename, exported);
            }
            syn::UseTree::Glob(glob) => self.add_reference(prefix.clone(), glob.star_token.span),
        }
    }

    fn add_leaf(
        &mut self,
        prefix: &[String],
        ident: &syn::Ident,
        name: &syn::Ident,
        exported: bool,
    ) {
        let mut path = prefix.to_vec();
        // `use a::b::{self}` names module `a::b` itself.
        if ident != "self" {
            path.push(ident.to_string());
        }
        if exported {
            self.reexports.insert(name.to_string(), path.clone());
        }
        self.add_reference(path, ident.span());
    }

    fn add_reference(&mut self, segments: Vec<String>, span: proc_macro2::Span) {
        if segments.first().is_some_and(|first| starts_in_crate(first)) {
            self.references.push(Reference {
                segments,
                line: span.start().line,
            });
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let exported = !matches!(item.vis, syn::Visibility::Inherited);
        self.add_use(&item.tree, &mut Vec::new(), exported);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        if let Some(first) = path.segments.first() {
            self.add_reference(segments, first.ident.span());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }
}

/// Whether `attrs` hold `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(source: &str) -> Names {
        names(&syn::parse_file(source).expect("parses"))
    }

    fn paths(names: &Names) -> Vec<String> {
        names
            .references
            .iter()
            .map(|reference| reference.segments.join("::"))
            .collect()
    }

    #[test]
    fn uses_types_and_calls_into_the_crate_are_references() {
        let names = names_of(
            "use super::{Plan, error::{self, corrupt as broken}};\n\
             use std::time::Duration;\n\
             use crate::control::*;\n\
             fn f(p: &crate::session::Plan) { super::start::start(); self::g(); }\n\
             #[cfg(test)] mod tests { use crate::hidden::X; }",
        );
        assert_eq!(
            paths(&names),
            [
                "super::Plan",
                "super::error",
                "super::error::corrupt",
                "crate::control",
                "crate::session::Plan",
                "super::start::start",
                "self::g",
            ]
        );
        assert_eq!(names.references[0].line, 1);
        assert!(names.reexports.is_empty());
    }

    #[test]
    fn public_uses_are_re_exports_under_their_new_name() {
        let names = names_of(
            "pub use plan::{Plan, Started as Begun};\npub(crate) use super::x::Y;\nuse z::W;",
        );
        let reexport = |name: &str| names.reexports.get(name).map(|path| path.join("::"));
        assert_eq!(reexport("Plan").as_deref(), Some("plan::Plan"));
        assert_eq!(reexport("Begun").as_deref(), Some("plan::Started"));
        assert_eq!(reexport("Y").as_deref(), Some("super::x::Y"));
        assert_eq!(reexport("W"), None);
    }
}
