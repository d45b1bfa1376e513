//! An intercept joining the agent another intercept of the workload added: whether it may
//! (each intercept that takes requests needs a filter of its own), and its filter recorded
//! beside theirs, with nothing in the pods changed.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use kube::api::Api;
use serde_json::Value;

use super::error::corrupt;
use super::lease::holder_of;
use super::ports::intercepted_ports;
use super::record::{Joined, RECORD_ANNOTATION, Record};
use super::routing::{ports_of, ports_undone};
use super::service::choose_service;
use super::tls_secret::check_same_tls;
use super::tokens::read_token;
use super::{Plan, SessionError, Started};
use crate::inject::{self, SESSION_LABEL};
use crate::mode::Mode;
use crate::workload::{Workload, WorkloadError, WorkloadRef};
use kubedev_protocol::{AGENT_CONFIG_ENV, AGENT_TOKEN_ENV, AgentConfig};

/// Fails, naming who holds it, where the session already on the workload cannot take
/// `plan` beside it.
pub(super) async fn check_shareable(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    existing: &Record,
) -> Result<(), SessionError> {
    let Some(reason) = refusal(existing, plan) else {
        return Ok(());
    };
    let holder = match existing.owner.as_deref() {
        Some(owner) => holder_of(client, namespace, owner).await,
        None => None,
    };
    let held_by = holder
        .map(|holder| format!(" (held by {})", holder.describe()))
        .unwrap_or_default();
    Err(SessionError::Refused(format!(
        "cannot {} {}: {reason}{held_by}",
        plan.mode, plan.workload
    )))
}

/// Why `plan` cannot share the workload whose record is `existing`, if it cannot:
/// intercepts that take requests need a filter each, and no two the same; wiretaps share
/// with any intercept.
pub(super) fn refusal(existing: &Record, plan: &Plan) -> Option<String> {
    if existing.mode != Mode::Intercept || plan.mode != Mode::Intercept {
        return Some(format!(
            "it already has a kubedev session ({} {:?}): it ends with `leave {}` (by whoever \
             holds it, or with --force)",
            existing.mode, existing.name, existing.name
        ));
    }
    if let Some(taken) = existing
        .sessions()
        .find(|session| session.name == plan.name)
    {
        return Some(format!(
            "a session named {:?} is already on it: choose another --name",
            taken.name
        ));
    }
    if plan.wiretap {
        return None;
    }
    let mut takers = existing
        .sessions()
        .filter(|session| !session.wiretap)
        .peekable();
    let Some(filter) = &plan.filter else {
        return takers.peek().map(|first| {
            format!(
                "intercept {:?} is already on it: a second intercept needs an HTTP filter \
                 (--http-header or --http-path-prefix) that the first does not have, or \
                 --wiretap to get copies; to take more of its ports, end {:?} and start one \
                 session with a --port for each",
                first.name, first.name
            )
        });
    };
    takers.find_map(|taker| match taker.filter {
        None => Some(format!(
            "intercept {:?} takes every request on it: it must leave before filtered \
             intercepts can share",
            taker.name
        )),
        Some(other) if other == filter => Some(format!(
            "intercept {:?} already takes the requests this filter matches",
            taker.name
        )),
        Some(_) => None,
    })
}

/// Adds an intercept with its own HTTP filter to the agent already on `workload`: nothing
/// in the pods changes, so nothing restarts.
pub(super) async fn join(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    mut workload: Workload,
    mut record: Record,
) -> Result<Started, SessionError> {
    let original: PodTemplateSpec = serde_json::from_value(record.template.clone())
        .map_err(|err| corrupt(&plan.workload, format!("the recorded pod template: {err}")))?;
    let current = workload.template()?;
    let service = as_recorded(
        choose_service(client, namespace, &original, plan).await?,
        &record,
    )?;
    let (_, forwards) = intercepted_ports(&service, &original, &record.container, plan)?;
    let (config, token) = running_agent(&current, &plan.workload)?;
    let running_tls = current.spec.as_ref().and_then(inject::tls_secret_of);
    check_same_tls(running_tls, plan.tls_secret.as_deref(), &plan.workload)?;
    let token = match token {
        AgentToken::Given(token) => token,
        AgentToken::InSecret(key) => read_token(client, namespace, &key)
            .await?
            .ok_or_else(|| corrupt(&plan.workload, "its agent's token is gone from its Secret"))?,
    };
    if let Some(missing) = forwards
        .iter()
        .find(|f| !config.listeners.iter().any(|l| l.app_port == f.app_port))
    {
        return Err(SessionError::Choice(format!(
            "cannot intercept {}: the intercepts on it do not take port {}; join with the \
             same ports",
            plan.workload, missing.app_port
        )));
    }
    // The pods keep the label of the session that added the agent, even after it left.
    let label = current
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|labels| labels.get(SESSION_LABEL))
        .ok_or_else(|| corrupt(&plan.workload, "the pods have no session label"))?;
    // Everything that can fail is done before the write, which is the join's only change:
    // waiting for the Services too.
    let agents = workload.agent_selector(label)?;
    record.joined.push(Joined {
        name: plan.name.clone(),
        filter: plan.filter.clone(),
        wiretap: plan.wiretap,
        owner: Some(plan.owner.clone()),
    });
    wait_for_services(client, namespace, &record, plan.timeout).await?;
    workload
        .annotate(client, RECORD_ANNOTATION, record.to_annotation())
        .await?;
    Ok(Started {
        agents,
        workload,
        record,
        token,
        forwards,
    })
}

/// `service` with the ports it had before the session pointed them at the agent, as
/// `record` keeps them: `--port` names those (a numeric targetPort now names the agent's
/// port, `kd-8080`, which the app's template does not declare).
fn as_recorded(mut service: Service, record: &Record) -> Result<Service, SessionError> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let Some(recorded) = record.services.iter().find(|s| s.name == name) else {
        return Ok(service);
    };
    let ports = serde_json::from_value(recorded.ports.clone()).map_err(|err| {
        corrupt(
            &format!("service {name}"),
            format!("its recorded ports: {err}"),
        )
    })?;
    if let Some(spec) = service.spec.as_mut() {
        spec.ports = ports;
    }
    Ok(service)
}

/// How often a joining session looks at the Services it waits for.
const SERVICE_POLL: Duration = Duration::from_millis(500);

/// Waits until the Services the agent takes over are pointed at it: the session that added
/// the agent does so only once its pods are ready, and a session joining before then would
/// find them "taken back".
async fn wait_for_services(
    client: &kube::Client,
    namespace: &str,
    record: &Record,
    timeout: Duration,
) -> Result<(), SessionError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    for recorded in &record.services {
        let Some(applied) = &recorded.applied_ports else {
            continue;
        };
        loop {
            let service = services
                .get_opt(&recorded.name)
                .await
                .map_err(|err| WorkloadError::from_api(err, "get", "services", namespace))?;
            let live = service.as_ref().map_or(Value::Null, ports_of);
            let Some(pending) = ports_undone(applied, &live) else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(SessionError::Refused(format!(
                    "service/{}: {pending} after {timeout:?}: the session that added the \
                     agent has not turned it there (is it still starting?)",
                    recorded.name
                )));
            }
            tokio::time::sleep(SERVICE_POLL).await;
        }
    }
    Ok(())
}

/// Where the agent's token is, as its template says.
enum AgentToken {
    /// In the template itself (an agent of an earlier release).
    Given(String),
    /// Under this key of the tokens' Secret.
    InSecret(String),
}

/// The configuration of the agent in `template`, and where its token is, as the session
/// that added it wrote them.
fn running_agent(
    template: &PodTemplateSpec,
    workload: &WorkloadRef,
) -> Result<(AgentConfig, AgentToken), SessionError> {
    let agent = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .find(|c| c.name == inject::AGENT_CONTAINER)
        .ok_or_else(|| {
            corrupt(
                workload,
                "the workload's record says it has an agent, but its pods have none",
            )
        })?;
    let agent_var = |name: &str| agent.env.iter().flatten().find(|var| var.name == name);
    let agent_env = |name: &str| agent_var(name).and_then(|var| var.value.clone());
    let config = agent_env(AGENT_CONFIG_ENV)
        .ok_or_else(|| corrupt(workload, "the agent has no configuration"))?;
    let config = serde_json::from_str(&config).map_err(|err| {
        corrupt(
            workload,
            format!("the agent's configuration is unreadable: {err}"),
        )
    })?;
    let in_secret = agent_var(AGENT_TOKEN_ENV)
        .and_then(|var| var.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|reference| AgentToken::InSecret(reference.key.clone()));
    let token = agent_env(AGENT_TOKEN_ENV)
        .map(AgentToken::Given)
        .or(in_secret)
        .ok_or_else(|| corrupt(workload, "the agent has no session token"))?;
    Ok((config, token))
}
