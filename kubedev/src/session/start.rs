//! Starting a session: the agent injected into the workload (or an intercept joining the
//! agent already there), the Service pointed at it, and the pods awaited; rolled back on
//! any failure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};

use super::SessionError;
use super::error::corrupt;
use super::lease::holder_of;
use super::leave::leave;
use super::ports::{
    PortMapping, choose_container, container_serving, intercepted_ports, replaced_ports,
};
use super::random_id;
use super::record::{Joined, RECORD_ANNOTATION, Record, ServiceRecord, record_of};
use super::service::{choose_service, point_service_at_agent};
use crate::control::Forward;
use crate::inject::{self, InjectSpec, Mode, SESSION_LABEL, ServiceTarget, TargetPort};
use crate::workload::{Progress, Workload, WorkloadRef, retry_on_conflict, wait_for_pods};
use kubedev_protocol::{AGENT_CONFIG_ENV, AGENT_TOKEN_ENV, AgentConfig, HttpFilter};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which plugin asks.
    pub mode: Mode,
    /// The session's name (the workload's, unless `--name` says otherwise).
    pub name: String,
    /// The workload to change.
    pub workload: WorkloadRef,
    /// The app container (`-c`; needed when the pods have several).
    pub container: Option<String>,
    /// The agent's image reference.
    pub agent_image: String,
    /// The ports asked for (`--port`).
    pub ports: Vec<PortMapping>,
    /// intercept: the Service to take over (needed when several select the pods).
    pub service: Option<String>,
    /// Where intercepted connections go on the workstation.
    pub address: String,
    /// intercept: only the HTTP requests that match come here.
    pub filter: Option<HttpFilter>,
    /// intercept: copies come here, and the app still answers.
    pub wiretap: bool,
    /// How long to wait for the pods.
    pub timeout: Duration,
    /// This run of the plugin (see [`Record::owner`]).
    pub owner: String,
}

/// A session live in the cluster.
#[derive(Debug, Clone)]
pub struct Started {
    /// The workload as written.
    pub workload: Workload,
    /// What the session recorded on it.
    pub record: Record,
    /// The secret its agents take.
    pub token: String,
    /// The label selector of the session's agent pods.
    pub agents: String,
    /// Where the connections the agents take over go on this machine.
    pub forwards: Vec<Forward>,
}

/// Injects the agent for `plan` and waits for the pods; on any failure after the workload
/// changed, restores it before returning the error.
pub async fn start(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    progress: impl FnMut(&Progress),
) -> Result<Started, SessionError> {
    let (started, service_targets) =
        match retry_on_conflict(|| write_session(client, namespace, plan)).await? {
            Written::Joined(started) => return Ok(started),
            Written::Injected {
                started,
                service_targets,
            } => (started, service_targets),
        };
    let ready = async {
        if let Some(service) = started.record.services.first() {
            retry_on_conflict(|| {
                point_service_at_agent(client, namespace, &service.name, &service_targets)
            })
            .await?;
        }
        wait_for_pods(client, &started.workload, true, plan.timeout, progress).await?;
        Ok::<_, SessionError>(())
    };
    if let Err(err) = ready.await {
        let restored = leave(
            client,
            namespace,
            &plan.workload,
            &plan.name,
            Some(&plan.owner),
            plan.timeout,
            |_| {},
        )
        .await;
        let workload = plan.workload.to_string();
        let source = Box::new(err);
        return Err(match restored {
            Ok(_) => SessionError::RolledBack { workload, source },
            Err(restore) => SessionError::NotRolledBack {
                workload,
                restore: Box::new(restore),
                source,
            },
        });
    }
    Ok(started)
}

/// What writing a session onto its workload did.
pub(super) enum Written {
    /// The session joined the agent already there: nothing restarts.
    Joined(Started),
    /// The agent was injected; the Service's ports go to `service_targets` once it runs.
    Injected {
        started: Started,
        service_targets: Vec<ServiceTarget>,
    },
}

/// Reads the workload and records `plan` on it, injecting the agent or joining the one
/// there; one attempt, which fails if the workload changed since it was read.
pub(super) async fn write_session(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
) -> Result<Written, SessionError> {
    let mut workload = Workload::get(client, namespace, &plan.workload).await?;
    if workload.is_controlled() {
        return Err(SessionError::Refused(format!(
            "{} is managed by another workload (its owner would undo any change): name the \
             owner, e.g. its Deployment, instead",
            plan.workload
        )));
    }
    if let Some(existing) = record_of(&workload)? {
        if let Some(reason) = existing.refuses_to_share(plan) {
            let holder = match existing.owner.as_deref() {
                Some(owner) => holder_of(client, namespace, owner).await,
                None => None,
            };
            let held_by = holder
                .map(|holder| format!(" (held by {})", holder.describe()))
                .unwrap_or_default();
            return Err(SessionError::Refused(format!(
                "cannot {} {}: {reason}{held_by}",
                plan.mode, plan.workload
            )));
        }
        return Ok(Written::Joined(
            join(client, namespace, plan, workload, existing).await?,
        ));
    }
    let template = workload.template()?;
    let chosen = choose_container(&template, plan.container.as_deref(), &plan.workload);
    // Several containers and no -c: an intercept's Service target port may tell which.
    let inferable = plan.mode == Mode::Intercept && plan.container.is_none();
    let chosen = match chosen {
        Err(err) if !inferable => return Err(err),
        chosen => chosen,
    };
    let service = match plan.mode {
        Mode::Intercept => Some(choose_service(client, namespace, &template, plan).await?),
        Mode::Replace | Mode::Ingest => None,
    };
    let container = match (chosen, &service) {
        (Ok(container), _) => container,
        (Err(ambiguous), Some(service)) => {
            container_serving(service, &template, plan)?.ok_or(ambiguous)?
        }
        (Err(err), None) => return Err(err),
    };
    let (targets, forwards) = ports_to_take(plan, &template, &container, service.as_ref())?;
    let token = random_id()?;
    let injected = inject::inject(
        &template,
        &InjectSpec {
            mode: plan.mode,
            session: &plan.name,
            container: &container,
            agent_image: &plan.agent_image,
            token: &token,
            intercepted: &targets,
        },
    )?;
    let mut record = Record {
        name: plan.name.clone(),
        filter: plan.filter.clone(),
        wiretap: plan.wiretap,
        joined: Vec::new(),
        mode: plan.mode,
        container: container.clone(),
        template: workload.stored_template()?.clone(),
        services: Vec::new(),
        owner: Some(plan.owner.clone()),
    };
    if let Some(service) = service.filter(|_| !injected.service_targets.is_empty()) {
        record.services.push(ServiceRecord {
            name: service.metadata.name.clone().unwrap_or_default(),
            ports: serde_json::to_value(service.spec.as_ref().and_then(|s| s.ports.as_ref()))
                .map_err(|err| corrupt(&plan.workload, format!("its Service's ports: {err}")))?,
        });
    }
    let template = serde_json::to_value(&injected.template)
        .map_err(|err| corrupt(&plan.workload, format!("the new pod template: {err}")))?;
    workload
        .write(
            client,
            template,
            RECORD_ANNOTATION,
            Some(record.to_annotation()),
        )
        .await?;
    Ok(Written::Injected {
        started: Started {
            agents: workload.agent_selector(&plan.name)?,
            workload,
            record,
            token,
            forwards,
        },
        service_targets: injected.service_targets,
    })
}

/// The app's ports the agent takes for `plan` (intercept: of `service`, the Service it takes
/// over), and where their connections go on the workstation.
fn ports_to_take(
    plan: &Plan,
    template: &PodTemplateSpec,
    container: &str,
    service: Option<&Service>,
) -> Result<(Vec<TargetPort>, Vec<Forward>), SessionError> {
    Ok(match (service, plan.mode) {
        (Some(service), _) => intercepted_ports(service, template, container, plan)?,
        (None, Mode::Replace) => (Vec::new(), replaced_ports(template, container, plan)?),
        (None, _) => (Vec::new(), Vec::new()),
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
    let service = choose_service(client, namespace, &original, plan).await?;
    let (_, forwards) = intercepted_ports(&service, &original, &record.container, plan)?;
    let (config, token) = running_agent(&current, &plan.workload)?;
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
    record.joined.push(Joined {
        name: plan.name.clone(),
        filter: plan.filter.clone(),
        wiretap: plan.wiretap,
        owner: Some(plan.owner.clone()),
    });
    workload
        .annotate(client, RECORD_ANNOTATION, record.to_annotation())
        .await?;
    // The pods keep the label of the session that added the agent, even after it left.
    let label = current
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|labels| labels.get(SESSION_LABEL))
        .ok_or_else(|| corrupt(&plan.workload, "the pods have no session label"))?
        .clone();
    Ok(Started {
        agents: workload.agent_selector(&label)?,
        workload,
        record,
        token,
        forwards,
    })
}

/// The configuration and token of the agent in `template`, as the session that added it
/// wrote them.
fn running_agent(
    template: &PodTemplateSpec,
    workload: &WorkloadRef,
) -> Result<(AgentConfig, String), SessionError> {
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
    let agent_env = |name: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|var| var.name == name)
            .and_then(|var| var.value.clone())
    };
    let config = agent_env(AGENT_CONFIG_ENV)
        .ok_or_else(|| corrupt(workload, "the agent has no configuration"))?;
    let config = serde_json::from_str(&config).map_err(|err| {
        corrupt(
            workload,
            format!("the agent's configuration is unreadable: {err}"),
        )
    })?;
    let token = agent_env(AGENT_TOKEN_ENV)
        .ok_or_else(|| corrupt(workload, "the agent has no session token"))?;
    Ok((config, token))
}
