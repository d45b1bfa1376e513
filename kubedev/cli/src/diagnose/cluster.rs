//! The checks against the cluster: the API server's round-trip time, every permission of
//! the Role, and the agent image run once on a node.

use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, PostParams};

use super::{Check, Outcome};
use crate::config::{agent_image_from_env, publish_hint};
use crate::manage::ROLE;
use crate::pinning::image_to_run;
use kubedev::cluster::Connection;
use kubedev::mode::Mode;
use kubedev::session::{self, image_trial};

/// How many times the API server's round trip is timed; the median is shown.
const ROUND_TRIPS: usize = 3;

/// How long the agent image may take to be pulled and run once.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(90);

/// The API server, the Role and the agent image, each shown by `show` as it is done.
pub(super) async fn checks(
    mode: Mode,
    connection: &Connection,
    show: &dyn Fn(&Check),
) -> anyhow::Result<Vec<Check>> {
    let mut checks = vec![api_server(connection).await];
    show(&checks[0]);
    if checks[0].outcome == Outcome::Failed {
        return Ok(checks);
    }
    for check in [
        role(mode, connection).await?,
        image(mode, connection).await?,
    ] {
        show(&check);
        checks.push(check);
    }
    Ok(checks)
}

/// Whether the API server answers, and how long a round trip takes.
async fn api_server(connection: &Connection) -> Check {
    let mut times = Vec::new();
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        if let Err(err) = connection.client.apiserver_version().await {
            return Check::new(
                "api server",
                Outcome::Failed,
                format!("{} does not answer: {err}", connection.server),
                Some(
                    "check the kubeconfig's server and credentials (`kubectl version`), and \
                     HTTPS_PROXY/NO_PROXY if a proxy is on the way"
                        .into(),
                ),
            );
        }
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    Check::ok(
        "api server",
        format!(
            "{} answers in {} ms (median of {ROUND_TRIPS})",
            connection.server,
            median.as_millis()
        ),
    )
}

/// One permission of the Role: verb, API group, resource (with subresource), name.
type Permission = (String, String, String, Option<String>);

/// Every permission the Role grants, as `kubectl auth can-i` would ask about it.
fn permissions() -> anyhow::Result<Vec<Permission>> {
    let role = ROLE.split("\n---\n").next().unwrap_or(ROLE);
    let role: Role = serde_saphyr::from_str(role)?;
    let mut wanted = Vec::new();
    for rule in role.rules.into_iter().flatten() {
        let names = rule
            .resource_names
            .map_or(vec![None], |names| names.into_iter().map(Some).collect());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        wanted.push((verb.clone(), group.clone(), resource.clone(), name.clone()));
                    }
                }
            }
        }
    }
    Ok(wanted)
}

/// Whether the user has every permission of the Role in the namespace.
async fn role(mode: Mode, connection: &Connection) -> anyhow::Result<Check> {
    let namespace = &connection.namespace;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(connection.client.clone());
    let wanted = permissions()?;
    let answers = futures::future::join_all(wanted.iter().map(|permission| {
        let review = access_review(permission, namespace);
        let reviews = &reviews;
        async move { reviews.create(&PostParams::default(), &review).await }
    }))
    .await;
    let mut missing = Vec::new();
    for ((verb, _, resource, _), answer) in wanted.iter().zip(answers) {
        let allowed = answer?.status.is_some_and(|status| status.allowed);
        if !allowed {
            missing.push(format!("{verb} {resource}"));
        }
    }
    if missing.is_empty() {
        return Ok(Check::ok(
            "role",
            format!(
                "every permission kubedev needs in {namespace} ({} checked)",
                wanted.len()
            ),
        ));
    }
    let command = crate::command_of(mode);
    Ok(Check::new(
        "role",
        Outcome::Failed,
        format!("not allowed in {namespace}: {}", missing.join(", ")),
        Some(format!(
            "ask the namespace's admin for kubedev's Role:\n\
             {command} role -n {namespace} | kubectl apply -f -\n\
             kubectl create rolebinding kubedev-$USER -n {namespace} --role kubedev-developer --user $USER"
        )),
    ))
}

/// The review of one permission in `namespace`.
fn access_review(permission: &Permission, namespace: &str) -> SelfSubjectAccessReview {
    let (verb, group, resource, name) = permission;
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource.to_owned(), Some(sub.to_owned())),
        None => (resource.clone(), None),
    };
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.clone()),
                group: Some(group.clone()),
                resource: Some(resource),
                subresource,
                name: name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    }
}

/// Whether a node pulls and runs the agent image, and the agent's version.
async fn image(mode: Mode, connection: &Connection) -> anyhow::Result<Check> {
    let context = connection.context.as_deref();
    let (image, source) = agent_image_from_env(context)?;
    let image = image_to_run(image, &source, context);
    let (client, namespace) = (&connection.client, &connection.namespace);
    let owner = session::random_id()?;
    let trial = image_trial::try_agent_image(client, namespace, &image, &owner, TRIAL_TIMEOUT);
    let tried = tokio::select! {
        tried = trial => tried,
        _ = tokio::signal::ctrl_c() => {
            image_trial::remove_trial_pods(client, namespace).await;
            anyhow::bail!("stopped: the agent image's trial pod is deleted");
        }
    };
    Ok(match tried {
        Ok(trial) => {
            let version = trial.version.trim_start_matches("kubedev-agent").trim();
            let skew = version != env!("CARGO_PKG_VERSION");
            Check::new(
                "agent image",
                if skew { Outcome::Warning } else { Outcome::Ok },
                format!("{image} runs on node {} (agent {version})", trial.node),
                skew.then(|| {
                    format!(
                        "the agent is not the plugin's version ({}): use the image of this \
                         release ({} config set-agent-image ...:{})",
                        env!("CARGO_PKG_VERSION"),
                        crate::command_of(mode),
                        env!("CARGO_PKG_VERSION")
                    )
                }),
            )
        }
        Err(err) => Check::new(
            "agent image",
            Outcome::Failed,
            format!("{image}: {err}"),
            Some(publish_hint(mode, &image, &source)),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roles_permissions_are_asked_one_by_one_with_subresources_and_names() {
        let wanted = permissions().expect("the Role reads");
        let has = |verb: &str, resource: &str| {
            wanted.iter().any(|(v, _, r, _)| v == verb && r == resource)
        };
        assert!(has("update", "deployments") && has("create", "pods/portforward"));
        let secret = wanted
            .iter()
            .find(|(verb, _, resource, _)| verb == "update" && resource == "secrets")
            .expect("the tokens' Secret");
        assert_eq!(secret.3.as_deref(), Some("kubedev-session-tokens"));
        let review = access_review(
            &(
                "create".into(),
                String::new(),
                "pods/portforward".into(),
                None,
            ),
            "shop",
        );
        let attributes = review.spec.resource_attributes.expect("attributes");
        assert_eq!(attributes.resource.as_deref(), Some("pods"));
        assert_eq!(attributes.subresource.as_deref(), Some("portforward"));
        assert_eq!(attributes.namespace.as_deref(), Some("shop"));
    }
}
