use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use serde_json::json;

use super::*;

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "web",
                "image": "web:1",
                "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "metrics", "containerPort": 9090},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}
                ],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "URL", "value": "http://$(HOST):80/$$(HOST)/$(OTHER)/$(LATER)"},
                    {"name": "LATER", "value": "defined after its use"}
                ],
                "envFrom": [{"secretRef": {"name": "creds"}}, {"prefix": "DB_", "configMapRef": {"name": "db"}}],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/data"},
                    {"name": "config", "mountPath": "/etc/web", "readOnly": true}
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": "metrics"}},
                "securityContext": {"runAsUser": 1000}
            }, {
                "name": "sidecar",
                "image": "sidecar:1",
                "ports": [{"name": "side", "containerPort": 7330}]
            }]
        }
    }))
    .expect("valid template")
}

static RESOURCES: std::sync::LazyLock<k8s_openapi::api::core::v1::ResourceRequirements> =
    std::sync::LazyLock::new(default_agent_resources);

fn spec<'a>(mode: Mode, intercepted: &'a [TargetPort]) -> InjectSpec<'a> {
    InjectSpec {
        mode,
        session: "web-dev",
        container: "web",
        agent_image: "agent:1",
        token_key: "deployment.web",
        intercepted,
        resources: &RESOURCES,
        tls_secret: None,
    }
}

fn container<'a>(template: &'a PodTemplateSpec, name: &str) -> &'a Container {
    template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("container {name}"))
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
    container.env.iter().flatten().find(|v| v.name == name)
}

#[test]
fn intercept_of_a_named_port_moves_the_name_to_the_agent() {
    let targets = [TargetPort::Named("http".into())];
    let injected = inject(&template(), &spec(Mode::Intercept, &targets)).expect("injected");
    let app = container(&injected.template, "web");
    let agent = container(&injected.template, AGENT_CONTAINER);

    let app_http = app
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == 8080);
    assert_eq!(app_http.and_then(|p| p.name.as_deref()), None);
    // 7330 is the sidecar's: the agent takes the next free port.
    let agent_ports = agent.ports.as_ref().expect("agent ports");
    assert_eq!(agent_ports.len(), 1);
    assert_eq!(agent_ports[0].name.as_deref(), Some("http"));
    assert_eq!(agent_ports[0].container_port, 7331);
    assert_eq!(
        injected.listeners,
        [Listener {
            port: 7331,
            app_port: 8080,
            app_running: true,
            transport: Transport::Tcp,
            tls: false,
        }]
    );
    assert!(injected.service_targets.is_empty());

    // The probe that named the port now uses its number; the other keeps its name.
    let readiness = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(readiness.map(|h| &h.port), Some(&IntOrString::Int(8080)));
    let liveness = app
        .liveness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref());
    assert_eq!(
        liveness.map(|t| &t.port),
        Some(&IntOrString::String("metrics".into()))
    );
}

#[test]
fn an_app_that_terminates_tls_gives_the_agent_its_secret_alone() {
    let targets = [TargetPort::Named("http".into())];
    let spec = InjectSpec {
        tls_secret: Some("web-tls"),
        ..spec(Mode::Intercept, &targets)
    };
    let injected = inject(&template(), &spec).expect("injected");
    assert!(injected.listeners.iter().all(|listener| listener.tls));
    let agent = container(&injected.template, AGENT_CONTAINER);
    let config = env_value(agent, AGENT_CONFIG_ENV).and_then(|var| var.value.as_deref());
    assert!(
        config.is_some_and(|c| c.contains("\"tls\":true")),
        "{config:?}"
    );
    let mounted = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == TLS_VOLUME);
    let mounted = mounted.expect("the secret mounted");
    assert_eq!(
        (mounted.mount_path.as_str(), mounted.read_only),
        (kubedev_protocol::TLS_DIR, Some(true))
    );
    let pod = injected.template.spec.as_ref().expect("a pod spec");
    assert_eq!(tls_secret_of(pod), Some("web-tls"));
    let app = container(&injected.template, "web");
    let app_mounts = app.volume_mounts.iter().flatten();
    assert!(
        app_mounts.clone().all(|m| m.name != TLS_VOLUME),
        "the app's mounts stay its own"
    );
    let plain = inject(&template(), &self::spec(Mode::Intercept, &targets)).expect("injected");
    assert_eq!(
        tls_secret_of(plain.template.spec.as_ref().expect("spec")),
        None
    );
}

#[test]
fn intercept_of_a_numeric_port_names_the_agent_port_for_the_service() {
    let targets = [TargetPort::Number(8080)];
    let injected = inject(&template(), &spec(Mode::Intercept, &targets)).expect("injected");
    assert_eq!(
        injected.service_targets,
        [ServiceTarget {
            number: 8080,
            agent_port_name: "kd-8080".to_owned()
        }]
    );
    let agent = container(&injected.template, AGENT_CONTAINER);
    assert_eq!(
        agent.ports.as_ref().expect("ports")[0].name.as_deref(),
        Some("kd-8080")
    );
    // The app's own port keeps its name: nothing refers to it.
    let app = container(&injected.template, "web");
    assert_eq!(
        app.ports.as_ref().expect("ports")[0].name.as_deref(),
        Some("http")
    );
}

#[test]
fn agent_gets_the_app_environment_under_a_prefix() {
    let injected = inject(&template(), &spec(Mode::Ingest, &[])).expect("injected");
    let agent = container(&injected.template, AGENT_CONTAINER);
    // The token only by reference: no pod spec holds it.
    let token = env_value(agent, AGENT_TOKEN_ENV).expect("the token's variable");
    assert_eq!(token.value, None);
    let reference = token
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref());
    let reference = reference.expect("a reference to the tokens' Secret");
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        (TOKENS_SECRET, "deployment.web")
    );
    assert_eq!(
        env_value(agent, "KUBEDEV_APP_GREETING").and_then(|v| v.value.as_deref()),
        Some("hello")
    );
    // References to the app's earlier variables follow the prefix; escaped ones, unknown
    // ones and later ones (which the kubelet does not expand) stay as they are.
    assert_eq!(
        env_value(agent, "KUBEDEV_APP_URL").and_then(|v| v.value.as_deref()),
        Some("http://$(KUBEDEV_APP_HOST):80/$$(HOST)/$(OTHER)/$(LATER)")
    );
    let host = env_value(agent, "KUBEDEV_APP_HOST").expect("fieldRef copied");
    assert!(host.value_from.is_some());
    let prefixes: Vec<_> = agent
        .env_from
        .iter()
        .flatten()
        .map(|s| s.prefix.as_deref())
        .collect();
    assert_eq!(prefixes, [Some("KUBEDEV_APP_"), Some("KUBEDEV_APP_DB_")]);
}

#[test]
fn agent_sees_the_volumes_under_its_root_read_only_for_ingest() {
    let injected = inject(&template(), &spec(Mode::Ingest, &[])).expect("injected");
    let agent = container(&injected.template, AGENT_CONTAINER);
    let mounts: Vec<_> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/kubedev/volumes/var/data", Some(true)),
            ("/kubedev/volumes/etc/web", Some(true))
        ]
    );
    assert!(agent.ports.is_none(), "ingest moves no traffic");

    let targets = [TargetPort::Named("http".into())];
    let injected = inject(&template(), &spec(Mode::Intercept, &targets)).expect("injected");
    let agent = container(&injected.template, AGENT_CONTAINER);
    let data = agent.volume_mounts.iter().flatten().next().expect("mount");
    assert_eq!(data.read_only, None, "read-write for intercept");
    // The app's user, so files written through the mount are the app's; nothing more.
    let security = agent.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(agent.resources.is_some(), "requests and limits of its own");
}

#[test]
fn no_service_account_token_of_the_pod_is_served() {
    let mut template = template();
    let pod = template.spec.as_mut().expect("spec");
    // Kubernetes' own token, and one a webhook adds for a cloud's workload identity.
    for (volume, path) in [
        (
            "kube-api-access-x1",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ),
        (
            "aws-iam-token",
            "/var/run/secrets/eks.amazonaws.com/serviceaccount",
        ),
    ] {
        pod.volumes.get_or_insert_with(Vec::new).push(
            serde_json::from_value(json!({
                "name": volume,
                "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}
            }))
            .expect("volume"),
        );
        pod.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: volume.into(),
                mount_path: path.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
    let injected = inject(&template, &spec(Mode::Ingest, &[])).expect("injected");
    let agent = container(&injected.template, AGENT_CONTAINER);
    let paths: Vec<_> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["/kubedev/volumes/var/data", "/kubedev/volumes/etc/web"]
    );
}

#[test]
fn replace_removes_the_app_and_listens_on_its_tcp_and_udp_ports() {
    let injected = inject(&template(), &spec(Mode::Replace, &[])).expect("injected");
    let pod = injected.template.spec.as_ref().expect("spec");
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["sidecar", AGENT_CONTAINER]);
    let agent = container(&injected.template, AGENT_CONTAINER);
    let ports: Vec<_> = agent
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port, p.protocol.as_deref()))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("http"), 8080, None),
            (Some("metrics"), 9090, None),
            (Some("dns"), 53, Some("UDP"))
        ]
    );
    assert!(injected.listeners.iter().all(|l| !l.app_running));
    let transports: Vec<_> = injected.listeners.iter().map(|l| l.transport).collect();
    assert_eq!(transports, [Transport::Tcp, Transport::Tcp, Transport::Udp]);
}

#[test]
fn pods_are_labelled_with_the_session() {
    let injected = inject(&template(), &spec(Mode::Ingest, &[])).expect("injected");
    let labels = injected
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    assert_eq!(
        labels.get(SESSION_LABEL).map(String::as_str),
        Some("web-dev")
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
}

#[test]
fn bad_requests_are_refused() {
    let mut other = spec(Mode::Ingest, &[]);
    other.container = "nope";
    assert_eq!(
        inject(&template(), &other),
        Err(InjectError::NoSuchContainer("nope".into()))
    );
    let targets = [TargetPort::Named("grpc".into())];
    assert_eq!(
        inject(&template(), &spec(Mode::Intercept, &targets)),
        Err(InjectError::NoSuchPort {
            container: "web".into(),
            port: "grpc".into()
        })
    );
    let once = inject(&template(), &spec(Mode::Ingest, &[])).expect("injected");
    assert_eq!(
        inject(&once.template, &spec(Mode::Ingest, &[])),
        Err(InjectError::AlreadyInjected)
    );
}

#[test]
fn pods_on_the_nodes_network_are_refused_with_why() {
    let mut on_node = template();
    if let Some(pod) = on_node.spec.as_mut() {
        pod.host_network = Some(true);
    }
    for mode in [Mode::Intercept, Mode::Replace, Mode::Ingest] {
        let refused = inject(&on_node, &spec(mode, &[])).expect_err("hostNetwork");
        assert!(matches!(refused, InjectError::HostNetwork), "{refused}");
        assert!(
            refused.to_string().contains("hostNetwork: true"),
            "{refused}"
        );
    }
}
