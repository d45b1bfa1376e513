//! The app's variables as the agent gets them: under a prefix, so references between them
//! must name the prefixed copies.

use kubedev_protocol::APP_ENV_PREFIX;

/// `$(NAME)` references to the app's own variables must name their prefixed copies; the
/// kubelet leaves `$$(NAME)` (an escaped reference) and names it does not know as they are.
pub(super) fn prefix_references(value: &str, app_names: &[&str]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$$") {
            out.push_str("$$");
            rest = escaped;
        } else if let Some(reference) = after
            .strip_prefix("$(")
            .and_then(|r| r.find(')').map(|end| &r[..end]))
            .filter(|name| app_names.contains(name))
        {
            out.push_str(&format!("$({APP_ENV_PREFIX}{reference})"));
            rest = &after[reference.len() + 3..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}
