//! Session names: what `--name` may be, and the name a session gets without one. The
//! default carries the user's login name (`web-alice`), so that teammates intercepting the
//! same workload, or each running `connect`, do not take each other's names.

/// The longest session name: it is a label value on the session's pods.
pub const LONGEST_NAME: usize = 63;

/// Checks a name given with `--name`: a label value that is also a DNS subdomain
/// (lowercase letters, digits, `-` and `.`; each part between dots starting and ending
/// with a letter or digit), as a pod's name must be.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() <= LONGEST_NAME && crate::workload::is_dns_subdomain(name) {
        return Ok(());
    }
    Err(format!(
        "invalid session name {name:?}: at most {LONGEST_NAME} lowercase letters, digits, \
         '-' and '.', each part between dots starting and ending with a letter or digit"
    ))
}

/// The name of a session on `base` (a workload's name, or `connect`) when `--name` gives
/// none: `base-USER`, shortened to a valid name where it is too long.
pub fn default_name(base: &str) -> String {
    default_name_for(base, user_name().as_deref())
}

fn default_name_for(base: &str, user: Option<&str>) -> String {
    let user = user.map(label_of).filter(|user| !user.is_empty());
    let room = match &user {
        Some(user) => LONGEST_NAME.saturating_sub(user.len() + 1),
        None => LONGEST_NAME,
    };
    let base = trim_ends(&base[..base.len().min(room)]);
    match user {
        Some(user) if base.is_empty() => user,
        Some(user) => format!("{base}-{user}"),
        None => base.to_owned(),
    }
}

/// `text` as a part of a name: lowercase, runs of other characters as one `-`, at most
/// 20 characters.
fn label_of(text: &str) -> String {
    let mut label = String::new();
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(20);
    trim_ends(&label).to_owned()
}

fn trim_ends(text: &str) -> &str {
    text.trim_matches(|c: char| c == '-' || c == '.')
}

/// The login name of the user this process runs as.
#[cfg(unix)]
pub(crate) fn user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .or_else(|| std::env::var("USER").ok())
}

/// The login name of the user this process runs as.
#[cfg(windows)]
pub(crate) fn user_name() -> Option<String> {
    std::env::var("USERNAME").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_name_carries_the_users_login_name() {
        assert_eq!(default_name_for("web", Some("alice")), "web-alice");
        assert_eq!(
            default_name_for("connect", Some("Bob.Smith")),
            "connect-bob-smith"
        );
        assert_eq!(default_name_for("web", Some("_")), "web");
        assert_eq!(default_name_for("web", None), "web");
        for user in ["alice", "Bob Smith", "x"] {
            check_name(&default_name_for("web", Some(user))).expect(user);
        }
    }

    #[test]
    fn a_long_workload_name_is_shortened_to_a_valid_session_name() {
        let long = format!("{}-api", "a".repeat(60));
        let name = default_name_for(&long, Some("alice"));
        assert_eq!(name.len(), LONGEST_NAME);
        assert!(name.ends_with("-alice"), "{name}");
        check_name(&name).expect("valid");
        let dotted = format!("{}.{}", "b".repeat(56), "c".repeat(10));
        check_name(&default_name_for(&dotted, Some("alice"))).expect("valid");
    }

    #[test]
    fn names_that_are_no_label_value_are_refused() {
        for good in ["web", "web-alice", "a.b", "0"] {
            check_name(good).expect(good);
        }
        for bad in [
            "",
            "Web",
            "web_1",
            "-web",
            "web.",
            "a..b",
            "a.-b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
