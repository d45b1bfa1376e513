//! The sessions' tokens, kept out of pod specs: one Secret of kubedev's own per namespace
//! ([`TOKENS_SECRET`]) holds each agent's token under its workload's key, and the agent
//! reads it through a `secretKeyRef`. Someone who may read the workload (or its pods)
//! but not that Secret never sees a token; the Role grants `get` on that Secret by name.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams};

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

/// Keeps `token` under `key`, creating the Secret the first time.
pub(super) async fn store_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
    token: &str,
) -> Result<(), SessionError> {
    let api = secrets(client, namespace);
    retry_on_conflict(|| async {
        let value = ByteString(token.as_bytes().to_vec());
        let Some(mut secret) = read(&api, namespace).await? else {
            return create(&api, namespace, key, value).await;
        };
        secret
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value);
        write(&api, namespace, &secret).await
    })
    .await
}

/// Creates the Secret with `value` under `key`. Another run creating it first makes this a
/// conflict: the retry reads it and adds to it.
async fn create(
    api: &Api<Secret>,
    namespace: &str,
    key: &str,
    value: ByteString,
) -> Result<(), SessionError> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TOKENS_SECRET.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "kubedev".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(key.to_owned(), value)])),
        ..Secret::default()
    };
    match api.create(&write_params(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let raced = kube::core::Status::failure("created meanwhile", "Conflict").with_code(409);
            Err(api_error(
                kube::Error::Api(raced.boxed()),
                "create",
                namespace,
            ))
        }
        Err(err) => Err(api_error(err, "create", namespace)),
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

/// Drops the token under `key`; the Secret goes with the last one.
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
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        if data.remove(key).is_none() {
            return Ok(());
        }
        if !data.is_empty() {
            return write(&api, namespace, &secret).await;
        }
        match api.delete(TOKENS_SECRET, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(err) => Err(api_error(err, "delete", namespace)),
        }
    })
    .await
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
