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
use crate::workload::{WorkloadError, WorkloadRef, retry_on_conflict, write_params};

/// The key in [`TOKENS_SECRET`] of the token of the agent that run `owner` adds to
/// `workload` (`deployment.web.RUN`): one run's, never a racing run's.
pub(super) fn token_key(workload: &WorkloadRef, owner: &str) -> String {
    format!("{}.{}.{owner}", workload.kind.resource(), workload.name)
}

fn secrets(client: &kube::Client, namespace: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), namespace)
}

fn api_error(err: kube::Error, verb: &'static str, namespace: &str) -> SessionError {
    WorkloadError::from_api(err, verb, "secrets", namespace).into()
}

/// Keeps `token` under `key`.
pub(super) async fn store_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
    token: &str,
) -> Result<(), SessionError> {
    let api = secrets(client, namespace);
    retry_on_conflict(|| async {
        let mut secret = the_secret(&api, namespace).await?;
        let value = ByteString(token.as_bytes().to_vec());
        secret
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value);
        write(&api, namespace, &secret).await
    })
    .await
}

/// The tokens' Secret, which the Role's manifest creates: kubedev may not create Secrets
/// (a right to would let its users mint ServiceAccount tokens). Only an Opaque one is
/// used.
async fn the_secret(api: &Api<Secret>, namespace: &str) -> Result<Secret, SessionError> {
    let missing = || {
        SessionError::Refused(format!(
            "namespace {namespace} has no Secret {TOKENS_SECRET}, where sessions keep their \
             tokens: it comes with kubedev's Role; ask whoever grants it to apply \
             `kubectl intercept role` in the namespace"
        ))
    };
    let secret = read(api, namespace).await?.ok_or_else(missing)?;
    match secret.type_.as_deref() {
        None | Some("Opaque") => Ok(secret),
        Some(other) => Err(SessionError::Refused(format!(
            "Secret {TOKENS_SECRET} in namespace {namespace} is of type {other}, not Opaque: \
             kubedev keeps no token there; ask whoever grants kubedev's Role to apply it again"
        ))),
    }
}

/// The token under `key`, if any.
pub(super) async fn read_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
) -> Result<Option<String>, SessionError> {
    let secret = read(&secrets(client, namespace), namespace).await?;
    let value = secret.and_then(|secret| secret.data?.remove(key));
    Ok(value.and_then(|bytes| String::from_utf8(bytes.0).ok()))
}

/// Drops the token under `key`; the Secret stays, for the next sessions.
pub(super) async fn forget_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
) -> Result<(), SessionError> {
    let api = secrets(client, namespace);
    retry_on_conflict(|| async {
        let Some(mut secret) = read(&api, namespace).await? else {
            return Ok(());
        };
        let removed = secret.data.as_mut().and_then(|data| data.remove(key));
        match removed {
            Some(_) => write(&api, namespace, &secret).await,
            None => Ok(()),
        }
    })
    .await
}

/// The tokens' Secret, if the namespace has it.
pub(super) async fn read_secret(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<Secret>, SessionError> {
    read(&secrets(client, namespace), namespace).await
}

/// Writes `secret` back, failing if it changed since it was read.
pub(super) async fn write_secret(
    client: &kube::Client,
    namespace: &str,
    secret: &Secret,
) -> Result<(), SessionError> {
    write(&secrets(client, namespace), namespace, secret).await
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
        kept.contains(&key.as_str()) || kept.contains(&run)
    });
    data.len() != before
}

async fn read(api: &Api<Secret>, namespace: &str) -> Result<Option<Secret>, SessionError> {
    api.get_opt(TOKENS_SECRET)
        .await
        .map_err(|err| api_error(err, "get", namespace))
}

async fn write(api: &Api<Secret>, namespace: &str, secret: &Secret) -> Result<(), SessionError> {
    api.replace(TOKENS_SECRET, &write_params(), secret)
        .await
        .map(drop)
        .map_err(|err| api_error(err, "update", namespace))
}
