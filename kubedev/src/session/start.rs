//! Starting a session: the agent injected into the workload (or an intercept joining the
//! agent already there), the Service pointed at it, and the pods awaited; rolled back on
//! any failure.

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};

use super::error::corrupt;
use super::join::{check_shareable, join};
use super::leave::leave;
use super::ports::{choose_container, container_serving, intercepted_ports, replaced_ports};
use super::reclaim::sessions_in;
use super::record::{
    FLUX_PAUSED, FLUX_RECONCILE, RECORD_ANNOTATION, Record, ServiceRecord, record_of,
};
use super::service::{
    choose_service, point_ports_at_agent, point_service_at_agent, wait_until_pointed,
};
use super::tls_secret::check_tls_secret;
use super::tokens::{forget_token, store_token, token_key};
use super::{Plan, SessionError, Started, random_id};
use crate::control::Forward;
use crate::inject::{self, InjectSpec, ServiceTarget, TargetPort};
use crate::mode::Mode;
use crate::workload::{OldPods, Progress, Workload, retry_on_conflict, wait_for_pods};

/// Injects the agent for `plan` and waits for the pods; on any failure after the workload
/// changed, restores it before returning the error.
pub async fn start(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    progress: impl FnMut(&Progress),
) -> Result<Started, SessionError> {
    refuse_a_name_in_use(client, namespace, plan).await?;
    if let Some(secret) = &plan.tls_secret {
        check_tls_secret(client, namespace, secret).await?;
    }
    let (started, service_targets) =
        match retry_on_conflict(|| write_session(client, namespace, plan)).await? {
            Written::Joined(started) => return Ok(started),
            Written::Injected {
                started,
                service_targets,
            } => (started, service_targets),
        };
    let ready = async {
        // A replaced container is stopped only once its pods are gone, not terminating.
        let old_pods = match plan.mode {
            Mode::Replace => OldPods::Gone,
            Mode::Intercept | Mode::Ingest => OldPods::Terminating,
        };
        let wanted = (true, old_pods);
        wait_for_pods(client, &started.workload, wanted, plan.timeout, progress).await?;
        // Only now, with every pod's agent ready, does the Service turn to it: until then
        // the app in the same pods serves it, and a start that fails never touches it.
        if let Some(service) = started.record.services.first() {
            retry_on_conflict(|| {
                point_service_at_agent(client, namespace, service, &service_targets)
            })
            .await?;
            wait_until_pointed(
                client,
                namespace,
                &service.name,
                &service_targets,
                plan.timeout,
            )
            .await?;
        }
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
    if let Some(controller) = workload.controller() {
        return Err(SessionError::Refused(format!(
            "{} is managed by {controller}, which would undo any change: name the workload \
             that owns it instead, e.g. its Deployment (every replica gets the agent)",
            plan.workload
        )));
    }
    if let Some(why) = workload.refusal() {
        return Err(SessionError::Refused(why));
    }
    if let Some(existing) = record_of(&workload)? {
        check_shareable(client, namespace, plan, &existing).await?;
        return Ok(Written::Joined(
            join(client, namespace, plan, workload, existing).await?,
        ));
    }
    let template = workload.template()?;
    let (container, service) = choose_targets(client, namespace, &template, plan).await?;
    let (targets, forwards) = ports_to_take(plan, &template, &container, service.as_ref())?;
    let token = random_id()?;
    let token_key = token_key(&plan.workload, &plan.owner);
    let injected = inject::inject(
        &template,
        &InjectSpec {
            mode: plan.mode,
            session: &plan.name,
            container: &container,
            agent_image: &plan.agent_image,
            token_key: &token_key,
            intercepted: &targets,
            resources: &plan.agent_resources,
            tls_secret: plan.tls_secret.as_deref(),
        },
    )?;
    // The Service is recorded only where the session changes it.
    let changed_service = service.filter(|_| !injected.service_targets.is_empty());
    let template = serde_json::to_value(&injected.template)
        .map_err(|err| corrupt(&plan.workload, format!("the new pod template: {err}")))?;
    let changes = Changes {
        template: &template,
        service: changed_service.as_ref(),
        service_targets: &injected.service_targets,
    };
    let mut record = new_record(plan, &workload, container, changes)?;
    record.token_key = Some(token_key.clone());
    if plan.pause_flux && workload.annotation(FLUX_RECONCILE) != Some(FLUX_PAUSED) {
        workload.stage_annotation(FLUX_RECONCILE, Some(FLUX_PAUSED));
        record.paused_flux = true;
    }
    // Everything that can fail is done before the write: after it, only the pods' wait
    // remains, which rolls back.
    let agents = workload.agent_selector(&plan.name)?;
    store_token(client, namespace, &token_key, &token).await?;
    let written = workload
        .write(
            client,
            template,
            RECORD_ANNOTATION,
            Some(record.to_annotation()),
        )
        .await;
    forget_unused_token(client, namespace, &token_key, written).await?;
    Ok(Written::Injected {
        started: Started {
            agents,
            workload,
            record,
            token,
            forwards,
        },
        service_targets: injected.service_targets,
    })
}

/// Drops the token under `key` if the workload's write (`written`) failed: nothing uses it,
/// and a conflict's retry stores a new one.
async fn forget_unused_token(
    client: &kube::Client,
    namespace: &str,
    key: &str,
    written: Result<(), crate::workload::WorkloadError>,
) -> Result<(), SessionError> {
    let Err(err) = written else {
        return Ok(());
    };
    if let Err(forgetting) = forget_token(client, namespace, key).await {
        tracing::warn!("dropping an unused session token: {forgetting}");
    }
    Err(err.into())
}

/// Fails where a session on another workload of the namespace has `plan`'s name: `leave
/// NAME` and tunneld know a session by its name.
async fn refuse_a_name_in_use(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
) -> Result<(), SessionError> {
    for (workload, record) in sessions_in(client, namespace).await? {
        let named = record.sessions().any(|session| session.name == plan.name);
        if named && workload.reference != plan.workload {
            return Err(SessionError::Choice(format!(
                "a session named {:?} is already on {} in namespace {namespace}: choose \
                 another name with --name",
                plan.name, workload.reference
            )));
        }
    }
    Ok(())
}

/// The app container `plan` is about and, for an intercept, the Service it takes over.
async fn choose_targets(
    client: &kube::Client,
    namespace: &str,
    template: &PodTemplateSpec,
    plan: &Plan,
) -> Result<(String, Option<Service>), SessionError> {
    let chosen = choose_container(template, plan.container.as_deref(), &plan.workload);
    // Several containers and no -c: an intercept's Service target port may tell which.
    let inferable = plan.mode == Mode::Intercept && plan.container.is_none();
    let chosen = match chosen {
        Err(err) if !inferable => return Err(err),
        chosen => chosen,
    };
    let service = match plan.mode {
        Mode::Intercept => Some(choose_service(client, namespace, template, plan).await?),
        Mode::Replace | Mode::Ingest => None,
    };
    let container = match (chosen, &service) {
        (Ok(container), _) => container,
        (Err(ambiguous), Some(service)) => {
            container_serving(service, template, plan)?.ok_or(ambiguous)?
        }
        (Err(err), None) => return Err(err),
    };
    Ok((container, service))
}

/// What a new session changes: the template it writes, and the Service whose ports it
/// points at the agent, if any.
struct Changes<'a> {
    template: &'a serde_json::Value,
    service: Option<&'a Service>,
    service_targets: &'a [ServiceTarget],
}

/// The record of a new session on `workload`: `plan`, the original template and Service
/// ports, and what the session makes of them.
fn new_record(
    plan: &Plan,
    workload: &Workload,
    container: String,
    changes: Changes<'_>,
) -> Result<Record, SessionError> {
    let mut record = Record {
        name: plan.name.clone(),
        filter: plan.filter.clone(),
        wiretap: plan.wiretap,
        joined: Vec::new(),
        mode: plan.mode,
        container,
        template: workload.stored_template()?.clone(),
        applied: Some(changes.template.clone()),
        services: Vec::new(),
        paused_flux: false,
        token_key: None,
        owner: Some(plan.owner.clone()),
        replicas: Some(workload.replicas()),
        managers: workload.managed_fields().map(<[_]>::to_vec),
    };
    if let Some(service) = changes.service {
        let name = service.metadata.name.clone().unwrap_or_default();
        let ports = service.spec.as_ref().and_then(|s| s.ports.clone());
        let mut applied = ports.clone().unwrap_or_default();
        point_ports_at_agent(&name, &mut applied, changes.service_targets)?;
        let json = |ports| {
            serde_json::to_value(ports)
                .map_err(|err| corrupt(&plan.workload, format!("its Service's ports: {err}")))
        };
        let annotations = service.metadata.annotations.as_ref();
        let paused = annotations
            .and_then(|a| a.get(FLUX_RECONCILE))
            .map(String::as_str);
        record.services.push(ServiceRecord {
            ports: json(ports)?,
            applied_ports: Some(json(Some(applied))?),
            paused_flux: plan.pause_flux && paused != Some(FLUX_PAUSED),
            managers: service.metadata.managed_fields.clone(),
            name,
        });
    }
    Ok(record)
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
