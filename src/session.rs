//! A session's life in the cluster: injecting the agent into a workload (and, for a numeric
//! targetPort, pointing its Service at the agent), and restoring both exactly.
//!
//! Before anything changes, the original pod template and Service ports are recorded in an
//! annotation on the workload ([`RECORD_ANNOTATION`]): whoever ends the session, this run
//! or a later one after a crash, puts back exactly what was there.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::Forward;
use crate::inject::{self, InjectSpec, Mode, SESSION_LABEL, TargetPort};
use crate::protocol::{AGENT_CONFIG_ENV, AGENT_TOKEN_ENV, AgentConfig, HttpFilter, Transport};
use crate::workload::{Progress, Workload, WorkloadRef, retry_on_conflict, wait_for_pods};

/// The workload annotation holding a session's [`Record`] (JSON).
pub const RECORD_ANNOTATION: &str = "kubedev.io/session";

/// What a session changed, and the originals to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The session that added the agent; its name labels the pods.
    pub name: String,
    /// intercept: its HTTP filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<HttpFilter>,
    /// Intercepts with other HTTP filters that share the agent (see [`start`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<Joined>,
    pub mode: Mode,
    pub container: String,
    /// The pod template exactly as it was.
    pub template: Value,
    /// Services whose ports were changed, with their original ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRecord>,
    /// The run of the plugin that started the session (a random id): tunneld, ending the
    /// session of a plugin that died, ends only that run's, never a namesake's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// An intercept that joined an existing one, with a different HTTP filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub name: String,
    pub filter: HttpFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What taking a session off a [`Record`] leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// No session of that name.
    NotThere,
    /// The session of that name belongs to another run of a plugin: left as it is.
    NotOwned,
    /// Taken off; this many sessions remain and keep the agent.
    OthersRemain(usize),
    /// It was the last one: the workload is to be restored.
    Last,
}

impl Record {
    /// Takes session `name` off the record, if it is there and (with `owner`) that run's.
    /// The first session leaving hands the agent over to the next that joined.
    pub fn remove(&mut self, name: &str, owner: Option<&str>) -> Removal {
        let recorded_owner = if self.name == name {
            self.owner.as_deref()
        } else if let Some(joined) = self.joined.iter().find(|j| j.name == name) {
            joined.owner.as_deref()
        } else {
            return Removal::NotThere;
        };
        if owner.is_some() && recorded_owner != owner {
            return Removal::NotOwned;
        }
        if self.joined.is_empty() {
            return Removal::Last;
        }
        if self.name == name {
            let heir = self.joined.remove(0);
            self.name = heir.name;
            self.filter = Some(heir.filter);
            self.owner = heir.owner;
        } else {
            self.joined.retain(|joined| joined.name != name);
        }
        Removal::OthersRemain(self.sessions().count())
    }

    /// Whether the session's container mounts any volume (in the original template).
    pub fn container_has_volumes(&self) -> bool {
        self.template
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("name").and_then(Value::as_str) == Some(self.container.as_str()))
            .filter_map(|c| c.get("volumeMounts").and_then(Value::as_array))
            .any(|mounts| !mounts.is_empty())
    }

    /// Every session on the workload: the one that added the agent, then those that joined.
    pub fn sessions(&self) -> impl Iterator<Item = (&str, Option<&HttpFilter>)> {
        std::iter::once((self.name.as_str(), self.filter.as_ref())).chain(
            self.joined
                .iter()
                .map(|joined| (joined.name.as_str(), Some(&joined.filter))),
        )
    }

    /// Why an intercept named `name` with `filter` cannot share this workload, if it cannot:
    /// every intercept on it needs a filter, and no two the same.
    fn refuses_to_share(
        &self,
        name: &str,
        mode: Mode,
        filter: Option<&HttpFilter>,
    ) -> Option<String> {
        if self.mode != Mode::Intercept || mode != Mode::Intercept {
            return Some(format!(
                "it already has a kubedev session ({} {:?}): end it first with `leave {}`",
                self.mode, self.name, self.name
            ));
        }
        if let Some((taken, _)) = self.sessions().find(|(existing, _)| *existing == name) {
            return Some(format!(
                "a session named {taken:?} is already on it: choose another --name"
            ));
        }
        let Some(filter) = filter else {
            return Some(format!(
                "intercept {:?} is already on it: a second intercept needs an HTTP filter \
                 (--http-header or --http-path-prefix) that the first does not have",
                self.name
            ));
        };
        self.sessions()
            .find_map(|(existing, existing_filter)| match existing_filter {
                None => Some(format!(
                    "intercept {existing:?} takes every request on it: it must leave before \
                 filtered intercepts can share"
                )),
                Some(other) if other == filter => Some(format!(
                    "intercept {existing:?} already takes the requests this filter matches"
                )),
                Some(_) => None,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub ports: Value,
}

/// A port the user asked for: `LOCAL[:REMOTE]`, REMOTE a service port (intercept) or a
/// container port (replace), by number or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub local: u16,
    pub remote: Option<String>,
}

impl std::str::FromStr for PortMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (local, remote) = match text.split_once(':') {
            Some((local, remote)) if !remote.is_empty() => (local, Some(remote.to_owned())),
            Some(_) => return Err(format!("invalid port {text:?}: expected LOCAL[:REMOTE]")),
            None => (text, None),
        };
        let local = local
            .parse()
            .map_err(|_| format!("invalid local port {local:?} in {text:?}"))?;
        Ok(Self { local, remote })
    }
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub name: String,
    pub workload: WorkloadRef,
    pub container: Option<String>,
    pub agent_image: String,
    pub ports: Vec<PortMapping>,
    /// intercept: the Service to take over (needed when several select the pods).
    pub service: Option<String>,
    /// Where intercepted connections go on the workstation.
    pub address: String,
    /// intercept: only the HTTP requests that match come here.
    pub filter: Option<HttpFilter>,
    pub timeout: Duration,
    /// This run of the plugin (see [`Record::owner`]).
    pub owner: String,
}

/// A session live in the cluster.
#[derive(Debug, Clone)]
pub struct Started {
    pub workload: Workload,
    pub record: Record,
    pub token: String,
    /// The label selector of the session's agent pods.
    pub agents: String,
    pub forwards: Vec<Forward>,
}

/// Injects the agent for `plan` and waits for the pods; on any failure after the workload
/// changed, restores it before returning the error.
pub async fn start(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    progress: impl FnMut(&Progress),
) -> anyhow::Result<Started> {
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
        anyhow::Ok(())
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
        return Err(match restored {
            Ok(_) => err.context(format!("{} was restored", plan.workload)),
            Err(restore_err) => err.context(format!(
                "restoring {} failed too: {restore_err:#}",
                plan.workload
            )),
        });
    }
    Ok(started)
}

/// What writing a session onto its workload did.
enum Written {
    /// The session joined the agent already there: nothing restarts.
    Joined(Started),
    /// The agent was injected; the Service's ports go to `service_targets` once it runs.
    Injected {
        started: Started,
        service_targets: Vec<(u16, String)>,
    },
}

/// Reads the workload and records `plan` on it, injecting the agent or joining the one
/// there; one attempt, which fails if the workload changed since it was read.
async fn write_session(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
) -> anyhow::Result<Written> {
    let mut workload = Workload::get(client, namespace, &plan.workload).await?;
    anyhow::ensure!(
        !workload.is_controlled(),
        "{} is managed by another workload (its owner would undo any change): name the \
         owner, e.g. its Deployment, instead",
        plan.workload
    );
    if let Some(existing) = record_of(&workload)? {
        if let Some(reason) = existing.refuses_to_share(&plan.name, plan.mode, plan.filter.as_ref())
        {
            anyhow::bail!("cannot intercept {}: {reason}", plan.workload);
        }
        return Ok(Written::Joined(
            join(client, namespace, plan, workload, existing).await?,
        ));
    }
    let template = workload.template()?;
    let container = choose_container(&template, plan.container.as_deref(), &plan.workload)?;
    let (targets, service, forwards) = match plan.mode {
        Mode::Intercept => {
            let service = choose_service(client, namespace, &template, plan).await?;
            let (targets, forwards) = intercepted_ports(&service, &template, &container, plan)?;
            (targets, Some(service), forwards)
        }
        Mode::Replace => {
            let forwards = replaced_ports(&template, &container, plan)?;
            (Vec::new(), None, forwards)
        }
        Mode::Ingest => (Vec::new(), None, Vec::new()),
    };
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
        joined: Vec::new(),
        mode: plan.mode,
        container: container.clone(),
        template: workload
            .template_value()
            .cloned()
            .context("workload without a template")?,
        services: Vec::new(),
        owner: Some(plan.owner.clone()),
    };
    if let Some(service) = service.filter(|_| !injected.service_targets.is_empty()) {
        record.services.push(ServiceRecord {
            name: service.metadata.name.clone().unwrap_or_default(),
            ports: serde_json::to_value(service.spec.as_ref().and_then(|s| s.ports.as_ref()))?,
        });
    }
    let annotation = serde_json::to_string(&record)?;
    workload
        .write(
            client,
            serde_json::to_value(&injected.template)?,
            RECORD_ANNOTATION,
            Some(annotation),
        )
        .await?;
    Ok(Written::Injected {
        started: Started {
            agents: format!("{},{SESSION_LABEL}={}", workload.selector()?, plan.name),
            workload,
            record,
            token,
            forwards,
        },
        service_targets: injected.service_targets,
    })
}

/// What leaving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// The workload is as it was before the first session.
    Restored,
    /// Other intercepts remain on the workload.
    OthersRemain(usize),
    /// The session of that name is another run's (see [`Record::owner`]): nothing changed.
    NotOwned,
}

/// Ends session `name` on `reference`, if it is `owner`'s run's (any run's without one).
/// The last session to leave puts back what was changed, and waits for the pods; one that
/// joined an intercept only removes itself. A workload without that session is left alone.
pub async fn leave(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    name: &str,
    owner: Option<&str>,
    timeout: Duration,
    progress: impl FnMut(&Progress),
) -> anyhow::Result<Left> {
    match retry_on_conflict(|| remove_session(client, namespace, reference, name, owner)).await? {
        Removed::Settled(left) => Ok(left),
        Removed::Restored(workload) => {
            wait_for_pods(client, &workload, false, timeout, progress).await?;
            Ok(Left::Restored)
        }
    }
}

/// What removing a session from its workload's record did.
enum Removed {
    /// Nothing is left to wait for (the session was not there, is another run's, or others
    /// remain on the agent).
    Settled(Left),
    /// The original template and Service are back; the pods are rolling out.
    Restored(Box<Workload>),
}

/// Reads the workload and takes session `name` off it; one attempt, which fails if the
/// workload changed since it was read.
async fn remove_session(
    client: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    name: &str,
    owner: Option<&str>,
) -> anyhow::Result<Removed> {
    let mut workload = Workload::get(client, namespace, reference).await?;
    let Some(mut record) = record_of(&workload)? else {
        return Ok(Removed::Settled(Left::Restored));
    };
    match record.remove(name, owner) {
        Removal::NotThere => {
            return Ok(Removed::Settled(Left::OthersRemain(
                record.sessions().count(),
            )));
        }
        Removal::NotOwned => return Ok(Removed::Settled(Left::NotOwned)),
        Removal::OthersRemain(count) => {
            workload
                .annotate(client, RECORD_ANNOTATION, serde_json::to_string(&record)?)
                .await?;
            return Ok(Removed::Settled(Left::OthersRemain(count)));
        }
        Removal::Last => {}
    }
    // Putting the Service's ports back is idempotent, so a retry after a conflict on the
    // workload does it again harmlessly.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for original in &record.services {
        let mut service = services
            .get(&original.name)
            .await
            .with_context(|| format!("service {} to restore", original.name))?;
        if let Some(spec) = service.spec.as_mut() {
            spec.ports = serde_json::from_value(original.ports.clone())?;
        }
        services
            .replace(&original.name, &PostParams::default(), &service)
            .await
            .map_err(|err| crate::cluster::explain(err, "update", "services", namespace))?;
    }
    workload
        .write(client, record.template, RECORD_ANNOTATION, None)
        .await?;
    Ok(Removed::Restored(Box::new(workload)))
}

/// Adds an intercept with its own HTTP filter to the agent already on `workload`: nothing
/// in the pods changes, so nothing restarts.
async fn join(
    client: &kube::Client,
    namespace: &str,
    plan: &Plan,
    mut workload: Workload,
    mut record: Record,
) -> anyhow::Result<Started> {
    let original: PodTemplateSpec = serde_json::from_value(record.template.clone())?;
    let current = workload.template()?;
    let service = choose_service(client, namespace, &original, plan).await?;
    let (_, forwards) = intercepted_ports(&service, &original, &record.container, plan)?;
    let agent = current
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .find(|c| c.name == inject::AGENT_CONTAINER)
        .context("the workload's record says it has an agent, but its pods have none")?;
    let agent_env = |name: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|var| var.name == name)
            .and_then(|var| var.value.clone())
    };
    let config: AgentConfig =
        serde_json::from_str(&agent_env(AGENT_CONFIG_ENV).unwrap_or_default()).unwrap_or_default();
    if let Some(missing) = forwards
        .iter()
        .find(|f| !config.listeners.iter().any(|l| l.app_port == f.app_port))
    {
        anyhow::bail!(
            "cannot intercept {}: the intercepts on it do not take port {}; join with the \
             same ports",
            plan.workload,
            missing.app_port
        );
    }
    let token = agent_env(AGENT_TOKEN_ENV).context("the agent has no session token")?;
    record.joined.push(Joined {
        name: plan.name.clone(),
        filter: plan
            .filter
            .clone()
            .context("a joining intercept has a filter")?,
        owner: Some(plan.owner.clone()),
    });
    workload
        .annotate(client, RECORD_ANNOTATION, serde_json::to_string(&record)?)
        .await?;
    // The pods keep the label of the session that added the agent, even after it left.
    let label = current
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|labels| labels.get(SESSION_LABEL))
        .context("the pods have no session label")?
        .clone();
    Ok(Started {
        agents: format!("{},{SESSION_LABEL}={label}", workload.selector()?),
        workload,
        record,
        token,
        forwards,
    })
}

/// The session recorded on `workload`, if any.
pub fn record_of(workload: &Workload) -> anyhow::Result<Option<Record>> {
    workload
        .annotation(RECORD_ANNOTATION)
        .map(|text| {
            serde_json::from_str(text).with_context(|| {
                format!(
                    "{} has an unreadable {RECORD_ANNOTATION} annotation",
                    workload.reference
                )
            })
        })
        .transpose()
}

fn choose_container(
    template: &PodTemplateSpec,
    wanted: Option<&str>,
    workload: &WorkloadRef,
) -> anyhow::Result<String> {
    let names: Vec<&str> = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter().map(|c| c.name.as_str()))
        .collect();
    match (wanted, names.as_slice()) {
        (Some(wanted), _) if names.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), _) => anyhow::bail!(
            "{workload} has no container {wanted:?}; its containers: {}",
            names.join(", ")
        ),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => anyhow::bail!(
            "{workload} has several containers ({}): choose one with -c",
            names.join(", ")
        ),
    }
}

async fn choose_service(
    client: &kube::Client,
    namespace: &str,
    template: &PodTemplateSpec,
    plan: &Plan,
) -> anyhow::Result<Service> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let listed = services
        .list(&Default::default())
        .await
        .map_err(|err| crate::cluster::explain(err, "list", "services", namespace))?;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut matching: Vec<Service> = listed
        .items
        .into_iter()
        .filter(|service| selects(service, &labels))
        .collect();
    let names: Vec<String> = matching
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    match &plan.service {
        Some(wanted) => {
            let index = names.iter().position(|n| n == wanted).with_context(|| {
                format!(
                    "service {wanted:?} does not select the pods of {}{}",
                    plan.workload,
                    listing(" (these do: ", &names)
                )
            })?;
            Ok(matching.swap_remove(index))
        }
        None if matching.len() == 1 => Ok(matching.remove(0)),
        None if matching.is_empty() => anyhow::bail!(
            "no Service in namespace {namespace} selects the pods of {}: intercept works on \
             Service traffic",
            plan.workload
        ),
        None => anyhow::bail!(
            "several Services select the pods of {} ({}): choose one with --service",
            plan.workload,
            names.join(", ")
        ),
    }
}

fn listing(prefix: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("{prefix}{})", names.join(", "))
    }
}

fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .is_some_and(|selector| {
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
}

/// The Service ports the user named, as the targets the agent takes over and where their
/// connections go on the workstation.
fn intercepted_ports(
    service: &Service,
    template: &PodTemplateSpec,
    container: &str,
    plan: &Plan,
) -> anyhow::Result<(Vec<TargetPort>, Vec<Forward>)> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let ports: Vec<&ServicePort> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .collect();
    let describe = || {
        ports
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{n} ({})", p.port),
                None => p.port.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    anyhow::ensure!(
        !plan.ports.is_empty(),
        "say which port to intercept with --port LOCAL[:SERVICE-PORT]"
    );
    let mut targets = Vec::new();
    let mut forwards = Vec::new();
    for mapping in &plan.ports {
        let port = match &mapping.remote {
            Some(remote) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(remote) || p.port.to_string() == *remote)
                .with_context(|| {
                    format!(
                        "service {name} has no TCP port {remote:?}; its ports: {}",
                        describe()
                    )
                })?,
            None if ports.len() == 1 => &ports[0],
            None => anyhow::bail!(
                "service {name} has several ports ({}): choose one with --port {}:PORT",
                describe(),
                mapping.local
            ),
        };
        let target = port
            .target_port
            .as_ref()
            .and_then(TargetPort::from_int_or_string)
            .unwrap_or(TargetPort::Number(u16::try_from(port.port)?));
        let app_port = match &target {
            TargetPort::Number(number) => *number,
            TargetPort::Named(wanted) => named_port(template, container, wanted).with_context(|| {
                format!(
                    "service {name} targets port {wanted:?}, which container {container} does not declare"
                )
            })?,
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
        forwards.push(Forward {
            app_port,
            local_host: plan.address.clone(),
            local_port: mapping.local,
            filter: plan.filter.clone(),
            transport: Transport::Tcp,
        });
    }
    Ok((targets, forwards))
}

fn named_port(template: &PodTemplateSpec, container: &str, name: &str) -> Option<u16> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// replace: every TCP port of the container goes to the same port locally, unless the
/// user mapped it (`--port LOCAL:CONTAINER-PORT`).
fn replaced_ports(
    template: &PodTemplateSpec,
    container: &str,
    plan: &Plan,
) -> anyhow::Result<Vec<Forward>> {
    let declared: Vec<(Option<String>, u16, Transport)> = template
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .filter(|c| c.name == container)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let number = u16::try_from(p.container_port).ok()?;
            Some((p.name.clone(), number, inject::transport_of(p)?))
        })
        .collect();
    let mut forwards: Vec<Forward> = declared
        .iter()
        .map(|(_, number, transport)| Forward {
            app_port: *number,
            local_host: plan.address.clone(),
            local_port: *number,
            filter: None,
            transport: *transport,
        })
        .collect();
    let mut numbers: Vec<u16> = declared.iter().map(|(_, number, _)| *number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    for mapping in &plan.ports {
        let remote = mapping.remote.as_deref();
        // A number (or name) can stand for a TCP and a UDP port at once, as DNS's 53 does.
        let number = match remote {
            Some(remote) => declared.iter().find_map(|(name, number, _)| {
                (name.as_deref() == Some(remote) || number.to_string() == remote).then_some(*number)
            }),
            None if numbers.len() == 1 => numbers.first().copied(),
            None => None,
        }
        .with_context(|| {
            format!(
                "container {container} declares no port {}",
                remote.unwrap_or("(give --port LOCAL:CONTAINER-PORT)")
            )
        })?;
        for forward in forwards.iter_mut().filter(|f| f.app_port == number) {
            forward.local_port = mapping.local;
        }
    }
    Ok(forwards)
}

async fn point_service_at_agent(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    targets: &[(u16, String)],
) -> anyhow::Result<()> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let mut service = services.get(name).await?;
    for port in service
        .spec
        .iter_mut()
        .flat_map(|spec| spec.ports.iter_mut().flatten())
    {
        let target = port
            .target_port
            .as_ref()
            .and_then(TargetPort::from_int_or_string)
            .unwrap_or(TargetPort::Number(u16::try_from(port.port)?));
        if let Some((_, agent_name)) = targets
            .iter()
            .find(|(number, _)| target == TargetPort::Number(*number))
        {
            port.target_port = Some(IntOrString::String(agent_name.clone()));
        }
    }
    services
        .replace(name, &PostParams::default(), &service)
        .await
        .map_err(|err| crate::cluster::explain(err, "update", "services", namespace))?;
    Ok(())
}

/// A fresh random id (session tokens, plugin runs): 128 random bits, hex.
pub fn random_id() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;
