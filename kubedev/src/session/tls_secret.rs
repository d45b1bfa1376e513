//! The Secret of an app that terminates TLS itself (`--tls-secret`): checked before
//! anything changes, where the role may read it (a missing Secret would hold the agent's
//! pods until the timeout), and the same for every intercept that shares the agent.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::SessionError;
use crate::workload::{WorkloadError, WorkloadRef};

/// The keys of a `kubernetes.io/tls` Secret the agent reads.
const KEYS: [&str; 2] = ["tls.crt", "tls.key"];

/// Fails where Secret `name` is missing or lacks a key; a role that may not read Secrets
/// leaves the check to the kubelet.
pub(super) async fn check_tls_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), SessionError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => check_keys(&secret, name).map_err(SessionError::Choice),
        Ok(None) => Err(SessionError::Choice(format!(
            "secret {name} not found in namespace {namespace}: --tls-secret names the Secret \
             with the app's certificate and key (`kubectl create secret tls {name} --cert=FILE \
             --key=FILE -n {namespace}`)"
        ))),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(err) => Err(WorkloadError::from_api(err, "get", "secrets", namespace).into()),
    }
}

fn check_keys(secret: &Secret, name: &str) -> Result<(), String> {
    let data = secret.data.as_ref();
    match KEYS
        .iter()
        .find(|key| !data.is_some_and(|data| data.contains_key(**key)))
    {
        Some(key) => Err(format!(
            "secret {name} has no {key}: --tls-secret takes a kubernetes.io/tls Secret \
             (tls.crt and tls.key)"
        )),
        None => Ok(()),
    }
}

/// Fails where an intercept asking for `asked` cannot share the agent on `workload`, which
/// terminates TLS with `running` (or not at all); one that does not ask shares it as it is.
pub(super) fn check_same_tls(
    running: Option<&str>,
    asked: Option<&str>,
    workload: &WorkloadRef,
) -> Result<(), SessionError> {
    let refusal = match (running, asked) {
        (None, Some(_)) => format!(
            "the intercepts on {workload} read its requests without TLS: --tls-secret can \
             join only once they have left"
        ),
        (Some(running), Some(asked)) if running != asked => {
            format!("the agent on {workload} terminates TLS with secret {running}, not {asked}")
        }
        _ => return Ok(()),
    };
    Err(SessionError::Choice(format!(
        "cannot intercept {workload}: {refusal}"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::workload::WorkloadKind;

    #[test]
    fn a_tls_secret_needs_the_certificate_and_the_key() {
        let with = |keys: &[&str]| Secret {
            data: Some(
                (keys.iter())
                    .map(|key| ((*key).to_owned(), ByteString(b"pem".to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        };
        assert_eq!(
            check_keys(&with(&["tls.crt", "tls.key"]), "web-tls"),
            Ok(())
        );
        let refused = check_keys(&with(&["tls.crt"]), "web-tls").expect_err("no key");
        assert!(
            refused.contains("secret web-tls has no tls.key"),
            "{refused}"
        );
        assert!(check_keys(&Secret::default(), "web-tls").is_err());
    }

    #[test]
    fn intercepts_share_an_agent_only_with_its_tls() {
        let web = WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
        };
        assert!(check_same_tls(Some("web-tls"), None, &web).is_ok());
        assert!(check_same_tls(Some("web-tls"), Some("web-tls"), &web).is_ok());
        assert!(check_same_tls(None, None, &web).is_ok());
        let plain = check_same_tls(None, Some("web-tls"), &web).expect_err("refused");
        assert!(plain.to_string().contains("without TLS"), "{plain}");
        let other = check_same_tls(Some("web-tls"), Some("api-tls"), &web).expect_err("refused");
        assert!(
            other
                .to_string()
                .contains("with secret web-tls, not api-tls"),
            "{other}"
        );
    }
}
