//! Files and functions longer than a reader can take in at once.

use proc_macro2::Span;
use syn::visit::Visit;

/// The most lines a production file may have.
pub(crate) const FILE_LIMIT: usize = 500;
/// The most lines any function may have, from `fn` to its closing brace.
pub(crate) const FUNCTION_LIMIT: usize = 80;

/// A function over [`FUNCTION_LIMIT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LongFunction {
    pub(crate) name: String,
    /// Where its `fn` is.
    pub(crate) line: usize,
    pub(crate) lines: usize,
}

/// The functions of `file` (methods and nested functions too) over [`FUNCTION_LIMIT`].
pub(crate) fn long_functions(file: &syn::File) -> Vec<LongFunction> {
    let mut finder = Finder::default();
    finder.visit_file(file);
    finder.found
}

#[derive(Default)]
struct Finder {
    found: Vec<LongFunction>,
}

impl Finder {
    fn measure(&mut self, name: &syn::Ident, fn_token: Span, body_close: Span) {
        let line = fn_token.start().line;
        let lines = body_close.end().line + 1 - line;
        if lines > FUNCTION_LIMIT {
            self.found.push(LongFunction {
                name: name.to_string(),
                line,
                lines,
            });
        }
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        let close = item.block.brace_token.span.close();
        self.measure(&item.sig.ident, item.sig.fn_token.span, close);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        let close = item.block.brace_token.span.close();
        self.measure(&item.sig.ident, item.sig.fn_token.span, close);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            let close = block.brace_token.span.close();
            self.measure(&item.sig.ident, item.sig.fn_token.span, close);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, body_lines: usize) -> String {
        let body = "    let _ = 1;\n".repeat(body_lines);
        format!("fn {name}() {{\n{body}}}\n")
    }

    #[test]
    fn a_function_counts_from_fn_to_its_closing_brace() {
        let source = format!(
            "{}\n{}\nstruct S;\nimpl S {{\n{}}}\n",
            function("short", 78),
            function("long", 79),
            function("method", 90)
        );
        let file = syn::parse_file(&source).expect("parses");
        let found = long_functions(&file);
        let names: Vec<(&str, usize)> = found.iter().map(|f| (f.name.as_str(), f.lines)).collect();
        assert_eq!(names, [("long", 81), ("method", 92)]);
    }

    #[test]
    fn test_functions_count_too() {
        let source = format!(
            "#[cfg(test)]\nmod tests {{\n{}}}\n",
            function("long_test", 100)
        );
        let file = syn::parse_file(&source).expect("parses");
        assert_eq!(long_functions(&file).len(), 1);
    }
}
