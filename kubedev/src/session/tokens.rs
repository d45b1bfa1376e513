//! The sessions' tokens, kept out of pod specs: one Secret per namespace ([`TOKENS_SECRET`],
//! created with kubedev's Role) holds each agent's token under a key of its own, and the
//! agent reads it through a `secretKeyRef`. Someone who may read the workload (or its
//! pods) but not that Secret never sees a token; the Role grants `get` and `update` on that
//! Secret by name, and nothing on any other.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::SessionError;
use crate::inject::TOKENS_SECRET;
use crate::workload::{
    POD_GAP_KEY_PREFIX, WorkloadError, WorkloadRef, retry_on_conflict, write_params,
};

/// The key in [`TOKENS_SECRET`] of the token of the agent that run `owner` adds to
/// `workload` (`deployment.web.RUN`): one run's, never a racing run's.
pub(super) fn token_key(workload: &WorkloadRef, owner: &str) -> String {
    format!("{}.{}.{owner}", workload.kind.resource(), workload.name)
}

/// The namespace's tokens' Secret, as kubedev reads and writes it.
pub(super) struct TokensSecret<'a> {
    api: Api<Secret>,
    namespace: &'a str,
}

impl<'a> TokensSecret<'a> {
    pub(super) fn new(client: &kube::Client, namespace: &'a str) -> Self {
        let api = Api::namespaced(client.clone(), namespace);
        Self { api, namespace }
    }

    /// The Secret, if the namespace has it.
    pub(super) async fn read(&self) -> Result<Option<Secret>, SessionError> {
        self.api
            .get_opt(TOKENS_SECRET)
            .await
            .map_err(|err| self.api_error(err, "get"))
    }

    /// Writes `secret` back, failing if it changed since it was read.
    pub(super) async fn write(&self, secret: &Secret) -> Result<(), SessionError> {
        self.api
            .replace(TOKENS_SECRET, &write_params(), secret)
            .await
            .map(drop)
            .map_err(|err| self.api_error(err, "update"))
    }

    fn api_error(&self, err: kube::Error, verb: &'static str) -> SessionError {
        WorkloadError::from_api(err, verb, "secrets", self.namespace).into()
    }
}

/// Keeps `token` under `key`.
pub(super) async fn store_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
    token: &str,
) -> Result<(), SessionError> {
    let tokens = TokensSecret::new(client, namespace);
    retry_on_conflict(|| async {
        let mut secret = the_secret(&tokens).await?;
        let value = ByteString(token.as_bytes().to_vec());
        secret
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value);
        tokens.write(&secret).await
    })
    .await
}

/// The tokens' Secret, which the Role's manifest creates: kubedev may not create Secrets
/// (a right to would let its users mint ServiceAccount tokens). Only an Opaque one is
/// used.
async fn the_secret(tokens: &TokensSecret<'_>) -> Result<Secret, SessionError> {
    let namespace = tokens.namespace;
    let missing = || {
        SessionError::Refused(format!(
            "namespace {namespace} has no Secret {TOKENS_SECRET}, where sessions keep their \
             tokens: it comes with kubedev's Role; ask whoever grants it to apply \
             `kubectl intercept role` in the namespace"
        ))
    };
    let secret = tokens.read().await?.ok_or_else(missing)?;
    usable(secret, namespace)
}

/// `secret`, if kubedev can keep tokens in it: Opaque, and not made immutable (which the
/// Role's `update` allows once and only an admin can undo, by deleting and applying it
/// again).
fn usable(secret: Secret, namespace: &str) -> Result<Secret, SessionError> {
    let again = "ask whoever grants kubedev's Role to delete it and apply `kubectl intercept \
                 role` again";
    if let Some(other) = secret.type_.as_deref().filter(|type_| *type_ != "Opaque") {
        return Err(SessionError::Refused(format!(
            "Secret {TOKENS_SECRET} in namespace {namespace} is of type {other}, not Opaque: \
             kubedev keeps no token there; {again}"
        )));
    }
    if secret.immutable == Some(true) {
        return Err(SessionError::Refused(format!(
            "Secret {TOKENS_SECRET} in namespace {namespace} was made immutable: no session \
             can keep or drop its token there; {again}"
        )));
    }
    Ok(secret)
}

/// The token under `key`, if any.
pub(super) async fn read_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
) -> Result<Option<String>, SessionError> {
    let secret = TokensSecret::new(client, namespace).read().await?;
    let value = secret.and_then(|secret| secret.data?.remove(key));
    Ok(value.and_then(|bytes| String::from_utf8(bytes.0).ok()))
}

/// Drops the token under `key`; the Secret stays, for the next sessions.
pub(super) async fn forget_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
) -> Result<(), SessionError> {
    let tokens = TokensSecret::new(client, namespace);
    retry_on_conflict(|| async {
        let Some(secret) = tokens.read().await? else {
            return Ok(());
        };
        let mut secret = usable(secret, namespace)?;
        let removed = secret.data.as_mut().and_then(|data| data.remove(key));
        match removed {
            Some(_) => tokens.write(&secret).await,
            None => Ok(()),
        }
    })
    .await
}

/// Keeps in `secret` only the tokens whose key is in `kept` or ends in a run id that is;
/// whether any went.
pub(super) fn keep_only(secret: &mut Secret, kept: &[&str]) -> bool {
    let Some(data) = secret.data.as_mut() else {
        return false;
    };
    let before = data.len();
    data.retain(|key, _| {
        let run = key.rsplit('.').next().unwrap_or_default();
        // A pod's gap is its own to close (`crate::workload::restore_expired_gaps`).
        key.starts_with(POD_GAP_KEY_PREFIX) || kept.contains(&key.as_str()) || kept.contains(&run)
    });
    data.len() != before
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tests_fake_api::{FakeApi, NAMESPACE};

    use super::*;

    #[test]
    fn the_sweep_keeps_the_pods_gaps_and_the_live_runs_tokens() {
        let value = || ByteString(b"x".to_vec());
        let mut secret = Secret {
            data: Some(BTreeMap::from([
                ("pod-gap.web".to_owned(), value()),
                ("deployment.web.r1".to_owned(), value()),
                ("deployment.api.r2".to_owned(), value()),
            ])),
            ..Secret::default()
        };
        assert!(keep_only(&mut secret, &["r2"]));
        let kept: Vec<_> = secret.data.expect("data").into_keys().collect();
        assert_eq!(kept, ["deployment.api.r2", "pod-gap.web"]);
    }

    #[tokio::test]
    async fn a_secret_made_immutable_or_of_another_type_is_left_alone_saying_what_to_do() {
        let changes = [
            json!({"immutable": true}),
            json!({"type": "kubernetes.io/service-account-token"}),
        ];
        for change in changes {
            let fake = FakeApi::with_web_app(json!(8080));
            let mut secret = fake.secret(TOKENS_SECRET).expect("the Secret");
            for (field, value) in change.as_object().expect("fields") {
                secret[field] = value.clone();
            }
            fake.put_secret(secret);
            let secret = fake.secret(TOKENS_SECRET);
            let client = fake.client();
            let writes = fake.write_count();

            let storing = store_token(&client, NAMESPACE, "deployment.web.run", "secret").await;
            let forgetting = forget_token(&client, NAMESPACE, "deployment.web.run").await;
            for failed in [storing, forgetting] {
                let said = failed.expect_err("refused").to_string();
                assert!(said.contains("delete it and apply"), "{said}");
            }
            assert_eq!(fake.write_count(), writes, "nothing written");
            assert_eq!(fake.secret(TOKENS_SECRET), secret);
        }
    }
}
