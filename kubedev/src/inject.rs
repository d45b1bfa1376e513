//! Adding the agent to a pod template, without a webhook: the plugins rewrite the
//! workload's template themselves and keep the original (see [`crate::session`]) so that
//! restoring gives it back exactly.
//!
//! The agent container gets the app container's `env` and `envFrom` under
//! [`APP_ENV_PREFIX`] (the kubelet resolves secrets, configMaps and fieldRefs for it) and
//! its volume mounts under [`VOLUMES_ROOT`] (read-only for ingest). It runs as the app's
//! user where that is set, but with none of the app's privileges ([`AGENT_USER`] otherwise;
//! see `inject/hardening.rs`).
//!
//! - **intercept**: for each intercepted port the agent listens on a free port and takes
//!   over the Service's target: a named targetPort moves from the app's port to the
//!   agent's (probes of the app that used the name get the number instead); a numeric one
//!   is pointed at a name the agent's port gets ([`Injected::service_targets`]). The app
//!   keeps running and gets every connection no workstation takes.
//! - **replace**: the app container is removed; the agent listens on its ports, under the
//!   same names.
//! - **ingest**: only the agent is added; no traffic moves.
//!
//! An app that terminates TLS itself has the agent terminate it too, with the app's
//! certificate from a Secret (`inject/tls.rs`).

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector, ServicePort, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::mode::Mode;

mod hardening;
mod references;
mod tls;
pub use hardening::{
    AGENT_USER, agent_resources, check_agent_resources, default_agent_resources,
    parse_resource_list,
};
use kubedev_protocol::{
    AGENT_CONFIG_ENV, AGENT_POD_UID_ENV, AGENT_PORT, AGENT_TOKEN_ENV, APP_ENV_PREFIX, AgentConfig,
    Listener, Transport, VOLUMES_ROOT,
};
use references::prefix_references;
pub use tls::{TLS_VOLUME, secret_of as tls_secret_of};

/// The agent container's name.
pub const AGENT_CONTAINER: &str = "kubedev-agent";
/// The Secret of kubedev's own that holds the sessions' tokens, one key per workload: the
/// agents read theirs from it, so no pod spec holds a token.
pub const TOKENS_SECRET: &str = "kubedev-session-tokens";
/// The pod label that marks a session's pods (its value is the session name).
pub const SESSION_LABEL: &str = "kubedev.io/session";
/// The first port tried for the agent's intercept listeners.
const FIRST_LISTEN_PORT: u16 = 7330;

/// A Service's `targetPort`, which intercept takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port name, looked up in the app container.
    Named(String),
    /// A port number.
    Number(u16),
}

impl TargetPort {
    /// The target of a Service port: its `targetPort`, else its own port number, as the
    /// API server defaults it. `None` for a number out of range.
    pub fn of_service_port(port: &ServicePort) -> Option<Self> {
        match &port.target_port {
            Some(target) => Self::from_int_or_string(target),
            None => u16::try_from(port.port).ok().map(Self::Number),
        }
    }

    /// Reads a `targetPort` as the API server stores it (a number may come as a string).
    fn from_int_or_string(value: &IntOrString) -> Option<Self> {
        match value {
            IntOrString::Int(number) => u16::try_from(*number).ok().map(Self::Number),
            IntOrString::String(name) => match name.parse::<u16>() {
                Ok(number) => Some(Self::Number(number)),
                Err(_) => Some(Self::Named(name.clone())),
            },
        }
    }
}

/// What to inject.
#[derive(Debug, Clone)]
pub struct InjectSpec<'a> {
    /// Which mode the agent serves.
    pub mode: Mode,
    /// The session's name, which labels the pods.
    pub session: &'a str,
    /// The app container.
    pub container: &'a str,
    /// The agent's image reference.
    pub agent_image: &'a str,
    /// The key of the session's token in [`TOKENS_SECRET`], from which the agent reads it.
    pub token_key: &'a str,
    /// intercept: the Service target ports to take over.
    pub intercepted: &'a [TargetPort],
    /// What the agent asks for and may use ([`default_agent_resources`] unless the user
    /// says otherwise).
    pub resources: &'a ResourceRequirements,
    /// intercept: the `kubernetes.io/tls` Secret of an app that terminates TLS itself.
    pub tls_secret: Option<&'a str>,
}

/// The rewritten template, and what else must change with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The pod template with the agent.
    pub template: PodTemplateSpec,
    /// Numeric Service targetPorts to point at the agent.
    pub service_targets: Vec<ServiceTarget>,
    /// The agent's listeners, by the app port they stand for.
    pub listeners: Vec<Listener>,
}

/// A Service whose targetPort is `number` is pointed at the agent's port of this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The Service's numeric targetPort.
    pub number: u16,
    /// The name of the agent's port that now stands for it.
    pub agent_port_name: String,
}

/// Why the agent cannot go into a pod template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The container asked for is not in the template.
    #[error("the pod template has no container {0:?}")]
    NoSuchContainer(String),
    /// A Service targets a port name the app container does not declare.
    #[error("container {container:?} has no port named {port:?}")]
    NoSuchPort {
        /// The app container.
        container: String,
        /// The port name.
        port: String,
    },
    /// The template has an agent already.
    #[error("the pods already have a kubedev agent: end that session first (`leave`)")]
    AlreadyInjected,
    /// Every port the agent could take is in use in the pod.
    #[error("no free port for the agent in the pod")]
    NoFreePort,
    /// The pods use the node's network namespace.
    #[error(
        "the pods use the node's network (hostNetwork: true): the agent's port would be the \
         node's loopback, and a port it takes over every node interface's, so kubedev does not \
         join them; run a copy of the workload without hostNetwork to develop against"
    )]
    HostNetwork,
    /// The agent's configuration could not be serialized.
    #[error("the agent's configuration cannot be written: {0}")]
    Config(String),
}

/// Adds the agent to `template` for `spec`.
pub fn inject(template: &PodTemplateSpec, spec: &InjectSpec<'_>) -> Result<Injected, InjectError> {
    let mut template = template.clone();
    let pod = template.spec.get_or_insert_with(Default::default);
    if pod.containers.iter().any(|c| c.name == AGENT_CONTAINER) {
        return Err(InjectError::AlreadyInjected);
    }
    if pod.host_network == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    let app_index = pod
        .containers
        .iter()
        .position(|c| c.name == spec.container)
        .ok_or_else(|| InjectError::NoSuchContainer(spec.container.to_owned()))?;
    let used_ports: Vec<u16> = pod
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .chain([AGENT_PORT])
        .collect();
    let (app, mut taken) = match spec.mode {
        Mode::Intercept => {
            let app = &mut pod.containers[app_index];
            let taken = take_over(app, spec.intercepted, used_ports)?;
            (app.clone(), taken)
        }
        Mode::Replace => {
            let app = pod.containers.remove(app_index);
            let taken = replace(&app);
            (app, taken)
        }
        Mode::Ingest => (pod.containers[app_index].clone(), AgentPorts::default()),
    };
    if spec.tls_secret.is_some() {
        tls::terminate(&mut taken.listeners);
    }
    let ports = taken.ports.iter().map(|p| p.container_port);
    hardening::allow_ports(pod, ports.filter_map(|port| u16::try_from(port).ok()));
    let security = hardening::agent_security(&app, pod.security_context.as_ref());
    let mut agent = agent_container(&app, spec, taken.ports, &taken.listeners)?;
    hardening::serve_no_token(&mut agent, pod.volumes.as_deref().unwrap_or_default());
    if let Some(secret) = spec.tls_secret {
        tls::mount_secret(pod, &mut agent, secret);
    }
    pod.containers.push(Container {
        security_context: Some(security),
        resources: Some(spec.resources.clone()),
        ..agent
    });
    label(&mut template, spec.session);
    Ok(Injected {
        template,
        service_targets: taken.service_targets,
        listeners: taken.listeners,
    })
}

/// The ports the agent gets, what it does on each, and the Service targets to point at it.
#[derive(Debug, Default)]
struct AgentPorts {
    ports: Vec<ContainerPort>,
    listeners: Vec<Listener>,
    service_targets: Vec<ServiceTarget>,
}

/// intercept: the agent listens on a free port for each of `targets`; a named target's name
/// moves from `app`'s port to the agent's, a numeric one gets a name of its own for the
/// Service to target.
fn take_over(
    app: &mut Container,
    targets: &[TargetPort],
    mut used_ports: Vec<u16>,
) -> Result<AgentPorts, InjectError> {
    let mut taken = AgentPorts::default();
    for target in targets {
        let listen = free_port(&used_ports)?;
        used_ports.push(listen);
        let (app_port, name) = match target {
            TargetPort::Named(name) => (take_port_name(app, name)?, name.clone()),
            TargetPort::Number(number) => {
                let name = format!("kd-{number}");
                taken.service_targets.push(ServiceTarget {
                    number: *number,
                    agent_port_name: name.clone(),
                });
                (*number, name)
            }
        };
        taken.ports.push(ContainerPort {
            name: Some(name),
            container_port: i32::from(listen),
            ..ContainerPort::default()
        });
        taken.listeners.push(Listener {
            port: listen,
            app_port,
            app_running: true,
            transport: Transport::Tcp,
            tls: false,
        });
    }
    Ok(taken)
}

/// replace: the agent listens on every TCP and UDP port the app declared, as the app did.
fn replace(app: &Container) -> AgentPorts {
    let mut taken = AgentPorts::default();
    for port in app.ports.iter().flatten() {
        let Some(transport) = transport_of(port) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.container_port) else {
            continue;
        };
        taken.ports.push(ContainerPort {
            name: port.name.clone(),
            container_port: port.container_port,
            protocol: port.protocol.clone(),
            ..ContainerPort::default()
        });
        taken.listeners.push(Listener {
            port: number,
            app_port: number,
            app_running: false,
            transport,
            tls: false,
        });
    }
    taken
}

/// The transport of a container port the agent can take over (SCTP it cannot).
pub fn transport_of(port: &ContainerPort) -> Option<Transport> {
    match port.protocol.as_deref() {
        None | Some("TCP") => Some(Transport::Tcp),
        Some("UDP") => Some(Transport::Udp),
        Some(_) => None,
    }
}

fn label(template: &mut PodTemplateSpec, session: &str) {
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(SESSION_LABEL.to_owned(), session.to_owned());
}

fn free_port(used: &[u16]) -> Result<u16, InjectError> {
    (FIRST_LISTEN_PORT..FIRST_LISTEN_PORT + 100)
        .find(|port| !used.contains(port))
        .ok_or(InjectError::NoFreePort)
}

/// Removes `name` from the app container's port (the agent's port takes it) and returns
/// the port's number; the app's probes and hooks that used the name get the number.
fn take_port_name(app: &mut Container, name: &str) -> Result<u16, InjectError> {
    let port = app
        .ports
        .iter_mut()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .ok_or_else(|| InjectError::NoSuchPort {
            container: app.name.clone(),
            port: name.to_owned(),
        })?;
    port.name = None;
    let number = port.container_port;
    let by_number = IntOrString::Int(number);
    let renamed = |value: &mut IntOrString| {
        if *value == IntOrString::String(name.to_owned()) {
            *value = by_number.clone();
        }
    };
    for probe in [
        &mut app.liveness_probe,
        &mut app.readiness_probe,
        &mut app.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        rename_in_probe(probe, renamed);
    }
    if let Some(lifecycle) = &mut app.lifecycle {
        for handler in [&mut lifecycle.post_start, &mut lifecycle.pre_stop]
            .into_iter()
            .flatten()
        {
            if let Some(http) = &mut handler.http_get {
                renamed(&mut http.port);
            }
            if let Some(tcp) = &mut handler.tcp_socket {
                renamed(&mut tcp.port);
            }
        }
    }
    u16::try_from(number).map_err(|_| InjectError::NoSuchPort {
        container: app.name.clone(),
        port: name.to_owned(),
    })
}

fn rename_in_probe(probe: &mut Probe, renamed: impl Fn(&mut IntOrString)) {
    if let Some(http) = &mut probe.http_get {
        renamed(&mut http.port);
    }
    if let Some(tcp) = &mut probe.tcp_socket {
        renamed(&mut tcp.port);
    }
}

/// The agent's own pod's uid, from the downward API: its handshake proofs name it.
pub fn pod_uid_env() -> EnvVar {
    EnvVar {
        name: AGENT_POD_UID_ENV.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.uid".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn agent_container(
    app: &Container,
    spec: &InjectSpec<'_>,
    ports: Vec<ContainerPort>,
    listeners: &[Listener],
) -> Result<Container, InjectError> {
    let config = AgentConfig {
        listeners: listeners.to_vec(),
        read_only_volumes: spec.mode == Mode::Ingest,
    };
    let mut env = vec![
        EnvVar {
            name: AGENT_TOKEN_ENV.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: TOKENS_SECRET.to_owned(),
                    key: spec.token_key.to_owned(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        pod_uid_env(),
        EnvVar {
            name: AGENT_CONFIG_ENV.to_owned(),
            value: Some(
                serde_json::to_string(&config)
                    .map_err(|err| InjectError::Config(err.to_string()))?,
            ),
            ..EnvVar::default()
        },
    ];
    let app_env = app.env.as_deref().unwrap_or_default();
    env.extend(app_env.iter().enumerate().map(|(index, var)| {
        // The kubelet expands references to variables defined earlier in the list only.
        let earlier: Vec<&str> = app_env[..index].iter().map(|v| v.name.as_str()).collect();
        EnvVar {
            name: format!("{APP_ENV_PREFIX}{}", var.name),
            value: var.value.as_deref().map(|v| prefix_references(v, &earlier)),
            value_from: var.value_from.clone(),
        }
    }));
    let env_from: Vec<EnvFromSource> = app
        .env_from
        .iter()
        .flatten()
        .map(|source| EnvFromSource {
            prefix: Some(format!(
                "{APP_ENV_PREFIX}{}",
                source.prefix.as_deref().unwrap_or("")
            )),
            ..source.clone()
        })
        .collect();
    let mounts = served_mounts(app, spec.mode == Mode::Ingest);
    Ok(Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(spec.agent_image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: (!ports.is_empty()).then_some(ports),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        // A crashing agent's last words reach the pod status, so the plugin can show them.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    })
}

/// The app's volume mounts as the agent serves them: under [`VOLUMES_ROOT`], read-only
/// where the app's are or `read_only` says.
fn served_mounts(app: &Container, read_only: bool) -> Vec<VolumeMount> {
    app.volume_mounts
        .iter()
        .flatten()
        .map(|mount| VolumeMount {
            mount_path: format!("{VOLUMES_ROOT}{}", mount.mount_path),
            read_only: (read_only || mount.read_only == Some(true)).then_some(true),
            ..mount.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests;
