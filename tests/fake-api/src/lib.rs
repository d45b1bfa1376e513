//! A fake Kubernetes API server for tests of the logic that talks to the cluster:
//! Deployments (with optimistic concurrency: a write with a stale resourceVersion, or one
//! the test asked to be refused, gets 409), Services, Leases, and pods that follow each
//! Deployment's current template at once, all ready. It counts every write, so a test can
//! check what reached the "cluster". Unit tests use it in process ([`FakeApi::client`]);
//! component tests give a program its address on loopback ([`FakeApi::serve`]).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The namespace of [`FakeApi::with_web_app`]'s objects.
pub const NAMESPACE: &str = "shop";

/// Deployment `web`: two replicas of one container with the named port `http` (8080).
pub fn web_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NAMESPACE, "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}
                }]}
            }
        }
    })
}

/// Service `web` selecting the Deployment's pods, port 80 to `target_port`.
pub fn web_service(target_port: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": target_port, "protocol": "TCP"}]
        }
    })
}

/// The cluster's objects, shared by the client and the test.
#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    deployments: BTreeMap<String, Value>,
    services: BTreeMap<String, Value>,
    leases: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    /// Deployment writes to refuse with a conflict, as if its controller wrote first.
    conflicts: usize,
    /// Service writes are refused as a Role without `update services` refuses them.
    services_forbidden: bool,
    /// How many writes went through.
    writes: usize,
    next_version: u64,
}

impl FakeApi {
    /// A cluster with [`web_deployment`] and [`web_service`] in [`NAMESPACE`].
    pub fn with_web_app(target_port: Value) -> Self {
        let fake = Self::default();
        fake.add_deployment(web_deployment());
        fake.add_service(web_service(target_port));
        // As kubedev's Role manifest creates it.
        fake.put_secret(json!({"metadata": {"name": "kubedev-session-tokens"}, "type": "Opaque"}));
        fake
    }

    /// A client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.answer(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Serves plain HTTP on a free port of 127.0.0.1 for as long as the runtime runs; the
    /// address goes into a kubeconfig as `http://ADDRESS`.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let fake = fake.clone();
                let service = hyper::service::service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(connection), service),
                );
            }
        });
        Ok(address)
    }

    /// Stores a Deployment (JSON, as the API server returns it).
    pub fn add_deployment(&self, mut object: Value) {
        let mut state = self.lock();
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-deployment-{}", name_of(&object)));
        }
        let object = state.versioned(object);
        let name = name_of(&object);
        state.deployments.insert(name, object);
    }

    /// Stores a Service.
    pub fn add_service(&self, object: Value) {
        let mut state = self.lock();
        let object = state.versioned(object);
        let name = name_of(&object);
        state.services.insert(name, object);
    }

    /// Deployment `name` as stored now.
    pub fn deployment(&self, name: &str) -> Value {
        self.lock().deployments[name].clone()
    }

    /// Service `name` as stored now.
    pub fn service(&self, name: &str) -> Value {
        self.lock().services[name].clone()
    }

    /// Secret `name` as stored now, if there is one.
    pub fn secret(&self, name: &str) -> Option<Value> {
        self.lock().secrets.get(name).cloned()
    }

    /// Lease `name` as stored now, if there is one.
    pub fn lease(&self, name: &str) -> Option<Value> {
        self.lock().leases.get(name).cloned()
    }

    /// Stores a Secret, replacing one of the same name.
    pub fn put_secret(&self, object: Value) {
        let mut state = self.lock();
        let object = state.versioned(object);
        let name = name_of(&object);
        state.secrets.insert(name, object);
    }

    /// Stores a Lease, replacing one of the same name.
    pub fn put_lease(&self, object: Value) {
        let mut state = self.lock();
        let object = state.versioned(object);
        let name = name_of(&object);
        state.leases.insert(name, object);
    }

    /// The next `count` writes of a Deployment are refused with 409.
    pub fn refuse_writes(&self, count: usize) {
        self.lock().conflicts = count;
    }

    /// Every later write of a Service is refused (403).
    pub fn forbid_service_writes(&self) {
        self.lock().services_forbidden = true;
    }

    /// How many writes went through.
    pub fn write_count(&self) -> usize {
        self.lock().writes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => return status(StatusCode::BAD_REQUEST, &err.to_string()),
        };
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut state = self.lock();
        let method = &parts.method;
        let answered = match segments.as_slice() {
            ["apis", "apps", "v1", "namespaces", _, rest @ ..] => state.apps(method, rest, &body),
            ["api", "v1", "namespaces", _, rest @ ..] => state.core(method, rest, &query, &body),
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                _,
                rest @ ..,
            ] => state.coordination(method, rest, &body),
            [
                "apis",
                "discovery.k8s.io",
                "v1",
                "namespaces",
                _,
                "endpointslices",
            ] if method == Method::GET => Some(list(Vec::new())),
            _ => None,
        };
        answered.unwrap_or_else(|| status(StatusCode::NOT_FOUND, &format!("no {method} {path}")))
    }
}

enum Kind {
    Deployment,
    Service,
    Lease,
    Secret,
}

impl State {
    /// Deployments (StatefulSets, ReplicaSets and DaemonSets: none), below `namespaces/NS/`.
    fn apps(
        &mut self,
        method: &Method,
        rest: &[&str],
        body: &[u8],
    ) -> Option<Response<Full<Bytes>>> {
        Some(match (method.clone(), rest) {
            (Method::GET, ["deployments"]) => list(self.deployments.values().cloned().collect()),
            (Method::GET, ["statefulsets" | "replicasets" | "daemonsets"]) => list(Vec::new()),
            (Method::GET, ["replicasets", name]) => {
                let mut current = self.deployments.values().map(replica_set_of);
                found(current.find(|rs| name_of(rs) == *name).as_ref())
            }
            (Method::GET, ["deployments", name]) => found(self.deployments.get(*name)),
            (Method::PUT, ["deployments", name]) => {
                if self.conflicts > 0 {
                    self.conflicts -= 1;
                    return Some(status(StatusCode::CONFLICT, "the object has been modified"));
                }
                self.replace(Kind::Deployment, name, body)
            }
            _ => return None,
        })
    }

    /// Services and pods, below `namespaces/NS/`.
    fn core(
        &mut self,
        method: &Method,
        rest: &[&str],
        query: &str,
        body: &[u8],
    ) -> Option<Response<Full<Bytes>>> {
        Some(match (method.clone(), rest) {
            (Method::GET, ["services"]) => list(self.services.values().cloned().collect()),
            (Method::GET, ["services", name]) => found(self.services.get(*name)),
            (Method::PUT, ["services", _]) if self.services_forbidden => {
                status(StatusCode::FORBIDDEN, "services is forbidden")
            }
            (Method::PUT, ["services", name]) => self.replace(Kind::Service, name, body),
            (Method::GET, ["pods"]) => list(self.pods(query)),
            (Method::GET, ["secrets", name]) => found(self.secrets.get(*name)),
            (Method::POST, ["secrets"]) => self.create(Kind::Secret, body),
            (Method::PUT, ["secrets", name]) => self.replace(Kind::Secret, name, body),
            (Method::DELETE, ["secrets", name]) => match self.secrets.remove(*name) {
                Some(_) => status(StatusCode::OK, "deleted"),
                None => status(StatusCode::NOT_FOUND, "not found"),
            },
            _ => return None,
        })
    }

    /// Leases, below `namespaces/NS/`.
    fn coordination(
        &mut self,
        method: &Method,
        rest: &[&str],
        body: &[u8],
    ) -> Option<Response<Full<Bytes>>> {
        Some(match (method.clone(), rest) {
            (Method::GET, ["leases"]) => list(self.leases.values().cloned().collect()),
            (Method::POST, ["leases"]) => self.create(Kind::Lease, body),
            (Method::GET, ["leases", name]) => found(self.leases.get(*name)),
            (Method::PUT, ["leases", name]) => self.replace(Kind::Lease, name, body),
            (Method::DELETE, ["leases", name]) => match self.leases.remove(*name) {
                Some(_) => status(StatusCode::OK, "deleted"),
                None => status(StatusCode::NOT_FOUND, "not found"),
            },
            _ => return None,
        })
    }

    fn versioned(&mut self, mut object: Value) -> Value {
        self.next_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        object
    }

    /// A write, refused unless it carries the stored resourceVersion.
    fn replace(&mut self, kind: Kind, name: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "unreadable object");
        };
        let store = match kind {
            Kind::Deployment => &mut self.deployments,
            Kind::Service => &mut self.services,
            Kind::Lease => &mut self.leases,
            Kind::Secret => &mut self.secrets,
        };
        let Some(stored) = store.get_mut(name) else {
            return status(StatusCode::NOT_FOUND, name);
        };
        if stored["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
            return status(StatusCode::CONFLICT, "the object has been modified");
        }
        self.next_version += 1;
        let uid = stored["metadata"]["uid"].clone();
        *stored = object;
        stored["metadata"]["uid"] = uid;
        stored["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        self.writes += 1;
        json_response(StatusCode::OK, stored)
    }

    /// A new Lease or Secret; one of the same name is refused with 409 (AlreadyExists).
    fn create(&mut self, kind: Kind, body: &[u8]) -> Response<Full<Bytes>> {
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "unreadable object");
        };
        let name = name_of(&object);
        let taken = match kind {
            Kind::Secret => self.secrets.contains_key(&name),
            _ => self.leases.contains_key(&name),
        };
        if taken {
            return status(StatusCode::CONFLICT, "already exists");
        }
        let object = self.versioned(object);
        self.writes += 1;
        let response = json_response(StatusCode::CREATED, &object);
        match kind {
            Kind::Secret => self.secrets.insert(name, object),
            _ => self.leases.insert(name, object),
        };
        response
    }

    /// Every Deployment's replicas, running its current template, ready, whose labels
    /// match the query's label selector.
    fn pods(&self, query: &str) -> Vec<Value> {
        let selector: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .filter(|(key, _)| key == "labelSelector")
            .flat_map(|(_, labels)| {
                labels
                    .split(',')
                    .filter_map(|label| label.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut pods = Vec::new();
        for (name, deployment) in &self.deployments {
            let template = &deployment["spec"]["template"];
            let labels = &template["metadata"]["labels"];
            if !selector.iter().all(|(k, v)| labels[k] == json!(v)) {
                continue;
            }
            let replica_set = replica_set_of(deployment);
            let mut labels = labels.clone();
            labels[TEMPLATE_HASH] = replica_set["metadata"]["labels"][TEMPLATE_HASH].clone();
            let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
            for index in 0..replicas {
                pods.push(json!({
                    "metadata": {
                        "name": format!("{name}-{index}"),
                        "labels": labels,
                        "ownerReferences": [controller("ReplicaSet", &replica_set)]
                    },
                    "spec": template["spec"],
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}
                }));
            }
        }
        pods
    }
}

/// The label a Deployment's ReplicaSet and its pods share, naming their template.
const TEMPLATE_HASH: &str = "pod-template-hash";

/// The ReplicaSet a Deployment's current template runs in, as the controller makes it.
fn replica_set_of(deployment: &Value) -> Value {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    deployment["spec"]["template"].to_string().hash(&mut hasher);
    let hash = format!("{:x}", hasher.finish() & 0xff_ffff_ffff);
    let name = format!("{}-{hash}", name_of(deployment));
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "uid": format!("uid-rs-{name}"),
            "labels": {TEMPLATE_HASH: hash},
            "ownerReferences": [controller("Deployment", deployment)]
        }
    })
}

/// An owner reference to `owner` (of `kind`) as its controller.
fn controller(kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name_of(owner),
        "uid": owner["metadata"]["uid"],
        "controller": true
    })
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn found(object: Option<&Value>) -> Response<Full<Bytes>> {
    match object {
        Some(object) => json_response(StatusCode::OK, object),
        None => status(StatusCode::NOT_FOUND, "not found"),
    }
}

fn list(items: Vec<Value>) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
    )
}

fn status(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let reason = code.canonical_reason().unwrap_or_default().replace(' ', "");
    json_response(
        code,
        &json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        }),
    )
}

fn json_response(code: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(value.to_string().into_bytes().into()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}
