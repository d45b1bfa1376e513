//! Acting as another user (`--as`, `--as-group`), as kubectl does: the API server checks
//! that the kubeconfig's user may impersonate, then authorizes every request as the user
//! (and groups) named.

use kube::config::AuthInfo;

use super::ClusterError;

/// Makes `auth` act as `user`, in `groups`: the flags take the place of the kubeconfig's
/// whole impersonation (`as`, `as-groups`, `as-uid`, `as-user-extra`). Groups without a
/// user are refused, as kubectl refuses them.
pub(super) fn impersonate(
    auth: &mut AuthInfo,
    user: Option<&str>,
    groups: &[String],
) -> Result<(), ClusterError> {
    match user {
        Some(user) => {
            auth.impersonate = Some(user.to_owned());
            auth.impersonate_groups = (!groups.is_empty()).then(|| groups.to_vec());
            auth.impersonate_uid = None;
            auth.impersonate_user_extra = None;
            Ok(())
        }
        None if groups.is_empty() => Ok(()),
        None => Err(ClusterError::GroupsWithoutUser),
    }
}

/// A short name for who the client is: the API `server`, the kubeconfig's `user` entry
/// and whom `auth` impersonates. Each identity gets a tunneld of its own, which never acts
/// for another, whatever the contexts are named.
pub(super) fn identity(server: &str, user: &str, auth: &AuthInfo) -> String {
    let mut parts = vec![format!("server:{server}"), format!("user:{user}")];
    parts.extend(auth.impersonate.iter().map(|name| format!("as:{name}")));
    let groups = auth.impersonate_groups.iter().flatten();
    parts.extend(groups.map(|group| format!("group:{group}")));
    parts.extend(auth.impersonate_uid.iter().map(|uid| format!("uid:{uid}")));
    for (key, values) in auth.impersonate_user_extra.iter().flatten() {
        parts.extend(values.iter().map(|value| format!("extra:{key}:{value}")));
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    digest_name(&parts)
}

/// 16 hex digits of the SHA-256 of `parts`, each ended by a NUL: a short name that two
/// different lists of parts do not share.
pub(crate) fn digest_name(parts: &[&str]) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        digest.update(part.as_bytes());
        digest.update(b"\0");
    }
    digest.finish().as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_replace_the_kubeconfigs_identity() {
        let mut auth = AuthInfo {
            impersonate: Some("from-kubeconfig".into()),
            impersonate_groups: Some(vec!["kubeconfig-group".into()]),
            impersonate_uid: Some("1234".into()),
            ..AuthInfo::default()
        };
        impersonate(&mut auth, Some("alice"), &[]).expect("a user alone");
        assert_eq!(auth.impersonate.as_deref(), Some("alice"));
        assert_eq!(auth.impersonate_groups, None);
        assert_eq!(auth.impersonate_uid, None);

        impersonate(&mut auth, Some("bob"), &["team".into(), "ops".into()]).expect("groups");
        assert_eq!(
            auth.impersonate_groups,
            Some(vec!["team".to_owned(), "ops".to_owned()])
        );
    }

    #[test]
    fn groups_need_a_user() {
        let mut auth = AuthInfo::default();
        assert!(matches!(
            impersonate(&mut auth, None, &["team".into()]),
            Err(ClusterError::GroupsWithoutUser)
        ));
        assert_eq!(auth.impersonate_groups, None, "nothing set");
        impersonate(&mut auth, None, &[]).expect("no impersonation");
        assert_eq!(auth.impersonate, None);
    }

    #[test]
    fn each_identity_has_its_own_name() {
        let server = "https://10.0.0.1:6443";
        let identity_as = |user: &str, groups: &[&str]| {
            let mut auth = AuthInfo::default();
            let groups: Vec<String> = groups.iter().map(|&g| g.to_owned()).collect();
            impersonate(&mut auth, Some(user), &groups).expect("identity");
            identity(server, "dev", &auth)
        };
        let alice = identity_as("alice", &[]);
        assert_eq!(alice, identity_as("alice", &[]));
        assert_eq!(alice.len(), 16);
        assert_ne!(alice, identity_as("alice", &["team"]));
        assert_ne!(
            identity_as("alice", &["team"]),
            identity_as("alice", &["ops"])
        );
        assert_ne!(identity_as("ali", &["ce"]), identity_as("alice", &[]));
        let plain = AuthInfo::default();
        assert_ne!(
            alice,
            identity(server, "dev", &plain),
            "impersonating counts"
        );
        assert_ne!(
            identity(server, "dev", &plain),
            identity("https://10.0.0.2:6443", "dev", &plain),
            "another cluster"
        );
        assert_ne!(
            identity(server, "dev", &plain),
            identity(server, "admin", &plain),
            "another kubeconfig user"
        );
        let with_uid = AuthInfo {
            impersonate: Some("alice".into()),
            impersonate_uid: Some("1234".into()),
            ..AuthInfo::default()
        };
        assert_ne!(identity(server, "dev", &with_uid), alice, "the uid counts");
    }
}
