//! Helpers for the end-to-end tests: the local cluster that `tests/cluster/cluster.sh up`
//! started, a throwaway namespace per test, kubectl, and the test images' workloads.

pub mod converge;
pub mod delay_line;
pub mod developer;
pub mod krew;
pub mod network_helper;
pub mod node;
pub mod tls;
pub mod wine;
pub mod workstation;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

/// Images the harness imports into the cluster (tests/cluster/lib/config.sh).
pub const ECHO_IMAGE: &str = "localhost/kubedev-test/echo:0.1.0";
pub const CLIENT_IMAGE: &str = "localhost/kubedev-test/client:0.1.0";
/// The agent image, which the harness pushes to its registry (REGISTRY_REPOSITORY in
/// tests/cluster/lib/config.sh) and the kubelet pulls from there.
pub const AGENT_IMAGE: &str = concat!(
    "10.201.0.1:5000/kubedev/kubedev-agent:",
    env!("CARGO_PKG_VERSION")
);

/// The repository's top directory.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Where the binaries under test are: `KUBEDEV_BIN_DIR` (`make bench` takes its release
/// build), else the debug build `make test-e2e` makes.
pub fn build_dir() -> PathBuf {
    std::env::var_os("KUBEDEV_BIN_DIR")
        .map_or_else(|| repo_dir().join("target/debug"), PathBuf::from)
}

/// Runs `ip` with `args`, failing the test if it fails.
pub(crate) fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// Asserts that `answer` (to `what`) came from a pod of the echo app `echo`.
pub fn assert_echo(answer: &str, what: &str) {
    assert!(
        answer.starts_with("echo from echo-"),
        "{what} answered by the echo pod: {answer:?}"
    );
}

/// A number no other call in this process returns, for names of things tests create.
pub fn unique_suffix() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How long a test waits for the cluster to converge before failing.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The running local cluster.
#[derive(Debug, Clone)]
pub struct TestCluster {
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub dev_kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

impl TestCluster {
    /// The cluster in `$KUBEDEV_CLUSTER_DIR` (default `/var/lib/kubedev-cluster`).
    /// Panics with instructions when it is not up: an e2e test never skips.
    pub fn get() -> Self {
        let dir = PathBuf::from(
            std::env::var("KUBEDEV_CLUSTER_DIR")
                .unwrap_or_else(|_| "/var/lib/kubedev-cluster".into()),
        );
        let cluster = Self {
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            dev_kubeconfig: dir.join("dev.kubeconfig"),
            kubectl: dir.join("bin/kubectl"),
            dir,
        };
        assert!(
            cluster.admin_kubeconfig.exists() && cluster.kubectl.exists(),
            "no test cluster in {}: start it with `tests/cluster/cluster.sh up` (or run `make test`)",
            cluster.dir.display()
        );
        cluster
    }

    /// The API server's address, from the admin kubeconfig.
    pub fn api_server_ip(&self) -> String {
        let kubeconfig = std::fs::read_to_string(&self.admin_kubeconfig).expect("read kubeconfig");
        let server = kubeconfig
            .lines()
            .find_map(|line| line.trim().strip_prefix("server: https://"))
            .expect("server in kubeconfig");
        server.split(':').next().expect("host").to_owned()
    }

    /// The test probe (tests/fixtures), for use in workstations.
    pub fn probe(&self) -> String {
        self.dir.join("bin/probe").display().to_string()
    }

    /// A client with cluster-admin rights.
    pub async fn admin_client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig)
            .expect("admin kubeconfig is readable");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("admin kubeconfig is valid");
        kube::Client::try_from(config).expect("client")
    }

    /// Kills the kube-apiserver (SIGKILL) and starts it again with the same arguments,
    /// returning once it is ready; nothing else of the cluster stops.
    pub fn restart_apiserver(&self) {
        let script = repo_dir().join("tests/cluster/cluster.sh");
        let status = Command::new(script)
            .arg("restart-apiserver")
            .status()
            .expect("cluster.sh runs");
        assert!(status.success(), "restart-apiserver: {status}");
    }

    /// Runs the cluster's kubectl as cluster-admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl as cluster-admin and returns its stdout, failing on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.kubectl(args);
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// A namespace that exists for one test and is deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
    pub client: kube::Client,
    cluster: TestCluster,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Stops every process in `pids` at once, then kills them: as a machine that dies, none
/// gets to notice the others go.
pub fn freeze_then_kill(pids: &[u32]) {
    use nix::sys::signal::{Signal, kill};
    let pids: Vec<nix::unistd::Pid> = pids
        .iter()
        .map(|pid| nix::unistd::Pid::from_raw(i32::try_from(*pid).expect("pid")))
        .collect();
    for signal in [Signal::SIGSTOP, Signal::SIGKILL] {
        for pid in &pids {
            kill(*pid, signal).expect("signal");
        }
    }
}

impl TestNamespace {
    pub async fn create(cluster: &TestCluster, prefix: &str) -> Self {
        let client = cluster.admin_client().await;
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"generateName": format!("{prefix}-")}
        }))
        .expect("namespace");
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create test namespace");
        let namespace = Self {
            name: created.metadata.name.expect("generated name"),
            client,
            cluster: cluster.clone(),
        };
        namespace.grant_developer_role();
        namespace
    }

    /// Gives the test developer (dev.kubeconfig, whom the plugins run as) the Role kubedev
    /// documents, in this namespace only: no `edit`, nothing cluster-wide.
    pub fn grant_developer_role(&self) {
        let role = repo_dir().join("deploy/kubedev-role.yaml");
        self.kubectl_ok(&["apply", "-f", &role.display().to_string()])
            .expect("apply the kubedev Role");
        let bound = self.kubectl_ok(&[
            "get",
            "rolebinding",
            "kubedev-developers",
            "--ignore-not-found",
        ]);
        if bound.expect("read the RoleBinding").trim().is_empty() {
            self.kubectl_ok(&[
                "create",
                "rolebinding",
                "kubedev-developers",
                "--role=kubedev-developer",
                "--group=kubedev-developers",
            ])
            .expect("bind the kubedev Role");
        }
    }

    /// Takes `verb` off the developer's Role for the resources of rule `rule` (its index in
    /// deploy/kubedev-role.yaml), until [`Self::grant_developer_role`] again.
    pub fn revoke_from_developer(&self, rule: usize, verbs_left: &[&str]) {
        let patch = json!([{
            "op": "replace",
            "path": format!("/rules/{rule}/verbs"),
            "value": verbs_left,
        }]);
        self.kubectl_ok(&[
            "patch",
            "role",
            "kubedev-developer",
            "--type=json",
            "-p",
            &patch.to_string(),
        ])
        .expect("narrow the Role");
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Runs kubectl as cluster-admin in this namespace.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all)
    }

    /// Waits up to two minutes until the echo app, not a workstation, answers `path` from
    /// the client pod (after a session ends, its pods come back).
    pub fn wait_for_the_echo_app(&self, path: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !self
            .http_get("client", "echo:8080", path)
            .unwrap_or_default()
            .starts_with("echo from echo-")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the app did not answer again"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// `kubectl apply`s `manifest` (an object or a `List`) as cluster-admin in this namespace.
    pub fn apply_json(&self, manifest: &serde_json::Value) -> anyhow::Result<String> {
        let kind = manifest["kind"].as_str().unwrap_or("object").to_lowercase();
        let path = std::env::temp_dir().join(format!("{}-{kind}.json", self.name));
        std::fs::write(&path, manifest.to_string()).context("write the manifest")?;
        let applied = self.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
        std::fs::remove_file(&path).ok();
        applied
    }

    /// Makes Service `name` dual-stack: an IPv6 ClusterIP next to its IPv4 one.
    pub fn make_dual_stack(&self, name: &str) {
        let patch = r#"{"spec": {"ipFamilyPolicy": "PreferDualStack"}}"#;
        self.kubectl_ok(&["patch", "service", name, "--type=merge", "-p", patch])
            .expect("a dual-stack Service");
    }

    /// Points the echo Service's first port at the number 8080 rather than the port name, as
    /// many Services do (an intercept then points it at the agent).
    pub fn target_echo_by_number(&self) {
        let patch = r#"[{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 8080}]"#;
        self.kubectl_ok(&["patch", "service", "echo", "--type=json", "-p", patch])
            .expect("numeric targetPort");
    }

    /// Creates the echo server: a Deployment answering HTTP on 8080, TCP echo on 7000
    /// and UDP echo on 9000, and a ClusterIP Service `name` in front of it.
    pub async fn deploy_echo(&self, name: &str, replicas: i32) -> anyhow::Result<Service> {
        let deployment = single_container_deployment(name, replicas, echo_container())?;
        self.create_echo(name, deployment).await
    }

    /// [`deploy_echo`](Self::deploy_echo) with one replica and a sidecar `admin` that
    /// answers HTTP on 127.0.0.1:9901 and UDP on 127.0.0.1:9902 only, and HTTP on
    /// [::1]:9903 only, as `echo from POD`.
    pub async fn deploy_echo_with_admin_sidecar(&self, name: &str) -> anyhow::Result<Service> {
        let mut deployment = single_container_deployment(name, 1, echo_container())?;
        let admin = serde_json::from_value(json!({
            "name": "admin",
            "image": ECHO_IMAGE,
            "imagePullPolicy": "Never",
            "args": ["--local", "--http", "9901", "--udp", "9902", "--local6", "--http", "9903"]
        }))?;
        deployment
            .spec
            .as_mut()
            .and_then(|spec| spec.template.spec.as_mut())
            .context("the echo template")?
            .containers
            .push(admin);
        self.create_echo(name, deployment).await
    }

    async fn create_echo(&self, name: &str, deployment: Deployment) -> anyhow::Result<Service> {
        self.api::<Deployment>()
            .create(&PostParams::default(), &deployment)
            .await
            .context("create echo deployment")?;
        let service = self.create_echo_service(name).await?;
        self.wait_deployment_ready(name).await?;
        Ok(service)
    }

    /// Creates the gRPC echo service (`tests_fixtures::grpc`, answering as `echo
    /// from POD`): a Deployment serving h2c on its port `grpc` (9090) and a Service `name`
    /// with port 9090 named `grpc` in front of it.
    pub async fn deploy_grpc_echo(&self, name: &str) -> anyhow::Result<()> {
        let container = json!({
            "name": "grpc",
            "image": ECHO_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/grpc-echo", "serve", "9090"],
            "ports": [{"name": "grpc", "containerPort": 9090}],
            "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 1}
        });
        let deployment = single_container_deployment(name, 1, container)?;
        self.api::<Deployment>()
            .create(&PostParams::default(), &deployment)
            .await
            .context("create grpc deployment")?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "grpc", "port": 9090, "targetPort": "grpc"}]
            }
        }))?;
        self.api::<Service>()
            .create(&PostParams::default(), &service)
            .await
            .context("create grpc service")?;
        self.wait_deployment_ready(name).await
    }

    /// The echo server as a StatefulSet (and its Service, which it names as its own).
    pub async fn deploy_echo_statefulset(&self, name: &str, replicas: i32) -> anyhow::Result<()> {
        let deployment = single_container_deployment(name, replicas, echo_container())?;
        let mut spec = serde_json::to_value(deployment.spec)?;
        spec["serviceName"] = json!(name);
        let statefulset: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": spec
        }))?;
        self.create_echo_service(name).await?;
        self.api::<StatefulSet>()
            .create(&PostParams::default(), &statefulset)
            .await
            .context("create echo statefulset")?;
        let ready = await_condition(
            self.api::<StatefulSet>(),
            name,
            move |sts: Option<&StatefulSet>| {
                sts.and_then(|s| s.status.as_ref())
                    .is_some_and(|status| status.ready_replicas == Some(replicas))
            },
        );
        converge::within_timeout(
            &self.client,
            &self.name,
            &format!("statefulset {name} not ready"),
            ready,
        )
        .await?;
        Ok(())
    }

    /// The echo app as pod `name` of its own (no controller), labelled `app=echo` behind
    /// Service `echo`, returning once it is ready.
    pub async fn run_echo_pod(&self, name: &str) -> anyhow::Result<()> {
        let mut container = echo_container();
        container["env"] = json!([{"name": "GREETING", "value": "from the pod"}]);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "echo"}, "annotations": {"team": "a"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}
        }))?;
        self.create_echo_service("echo").await?;
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .context("create echo pod")?;
        let ready = await_condition(self.api::<Pod>(), name, |pod: Option<&Pod>| {
            let conditions = pod.and_then(|p| p.status.as_ref()?.conditions.as_ref());
            conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        let waited = format!("pod {name} not ready");
        converge::within_timeout(&self.client, &self.name, &waited, ready).await?;
        Ok(())
    }

    /// Pod `name` as a user wrote it: its labels, annotations, owners and spec, as stored
    /// (what kubedev must give back after creating it again). None once it is gone.
    pub async fn stored_pod(&self, name: &str) -> Option<serde_json::Value> {
        let pod = self.api::<Pod>().get_opt(name).await.expect("get pod")?;
        Some(json!({
            "labels": pod.metadata.labels,
            "annotations": pod.metadata.annotations,
            "ownerReferences": pod.metadata.owner_references,
            "spec": pod.spec,
        }))
    }

    /// The echo app as DaemonSet `name` (a pod on each node), behind Service `name`,
    /// returning once its pods are ready.
    pub async fn deploy_echo_daemonset(&self, name: &str) -> anyhow::Result<()> {
        let deployment = single_container_deployment(name, 1, echo_container())?;
        let mut spec = serde_json::to_value(deployment.spec)?;
        spec.as_object_mut().context("spec")?.remove("replicas");
        let daemonset: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": spec
        }))?;
        self.create_echo_service(name).await?;
        self.api::<DaemonSet>()
            .create(&PostParams::default(), &daemonset)
            .await
            .context("create echo daemonset")?;
        let ready = await_condition(self.api::<DaemonSet>(), name, |ds: Option<&DaemonSet>| {
            ds.and_then(|ds| ds.status.as_ref()).is_some_and(|status| {
                status.desired_number_scheduled > 0
                    && status.number_ready == status.desired_number_scheduled
            })
        });
        converge::within_timeout(
            &self.client,
            &self.name,
            &format!("daemonset {name} not ready"),
            ready,
        )
        .await?;
        Ok(())
    }

    /// The echo app as Argo Rollout `name` with `strategy` (as `spec.strategy`), behind
    /// Service `name`, returning once the Rollout is healthy.
    pub async fn deploy_echo_rollout(
        &self,
        name: &str,
        replicas: i32,
        strategy: serde_json::Value,
    ) -> anyhow::Result<()> {
        let deployment = single_container_deployment(name, replicas, echo_container())?;
        let mut rollout = serde_json::to_value(deployment)?;
        rollout["apiVersion"] = json!("argoproj.io/v1alpha1");
        rollout["kind"] = json!("Rollout");
        rollout["spec"]["strategy"] = strategy;
        self.create_echo_service(name).await?;
        self.apply_json(&rollout).context("create echo rollout")?;
        let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
        let healthy = format!("Healthy {replicas}");
        let status = format!("rollout/{name}");
        let path = "-o=jsonpath={.status.phase} {.status.readyReplicas}";
        while self.kubectl_ok(&["get", &status, path])? != healthy {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "rollout {name} not healthy in {CONVERGE_TIMEOUT:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        Ok(())
    }

    async fn create_echo_service(&self, name: &str) -> anyhow::Result<Service> {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [
                    {"name": "http", "port": 8080, "targetPort": "http"},
                    {"name": "tcp-echo", "port": 7000, "targetPort": "tcp-echo"},
                    {"name": "udp-echo", "port": 9000, "targetPort": "udp-echo", "protocol": "UDP"}
                ]
            }
        }))?;
        self.api::<Service>()
            .create(&PostParams::default(), &service)
            .await
            .context("create echo service")
    }

    /// Deployment `name`'s pod template and Service `name`'s spec, as stored: what a
    /// session may change and must put back.
    pub async fn stored_deployment_and_service(
        &self,
        name: &str,
    ) -> (serde_json::Value, serde_json::Value) {
        let deployment = self
            .api::<Deployment>()
            .get(name)
            .await
            .expect("deployment");
        let service = self.api::<Service>().get(name).await.expect("service");
        (
            serde_json::to_value(deployment.spec.map(|s| s.template)).expect("json"),
            serde_json::to_value(service.spec).expect("json"),
        )
    }

    /// The pod template of the echo workload (a StatefulSet or a Deployment), as stored.
    pub async fn echo_template(&self, statefulset: bool) -> serde_json::Value {
        let template = if statefulset {
            let sts = self
                .api::<StatefulSet>()
                .get("echo")
                .await
                .expect("statefulset");
            serde_json::to_value(sts.spec.map(|s| s.template))
        } else {
            let deployment = self
                .api::<Deployment>()
                .get("echo")
                .await
                .expect("deployment");
            serde_json::to_value(deployment.spec.map(|s| s.template))
        };
        template.expect("json")
    }

    /// Waits until every replica of the Deployment is updated and available.
    pub async fn wait_deployment_ready(&self, name: &str) -> anyhow::Result<()> {
        let ready = await_condition(
            self.api::<Deployment>(),
            name,
            conditions::is_deployment_completed(),
        );
        converge::within_timeout(
            &self.client,
            &self.name,
            &format!("deployment {name} not ready"),
            ready,
        )
        .await?;
        Ok(())
    }

    /// Starts the client pod (busybox, `probe`) named `name` and waits until it runs.
    pub async fn start_client(&self, name: &str) -> anyhow::Result<()> {
        self.start_client_with_dns(name, "ClusterFirst").await
    }

    /// Starts a client pod with `dns_policy` (`ClusterFirst`, `Default`, ...).
    pub async fn start_client_with_dns(&self, name: &str, dns_policy: &str) -> anyhow::Result<()> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "dnsPolicy": dns_policy,
                "containers": [{"name": "client", "image": CLIENT_IMAGE, "imagePullPolicy": "Never"}]
            }
        }))?;
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .context("create client pod")?;
        let running = await_condition(self.api::<Pod>(), name, conditions::is_pod_running());
        converge::within_timeout(
            &self.client,
            &self.name,
            &format!("pod {name} not running"),
            running,
        )
        .await?;
        Ok(())
    }

    /// A Deployment of `replicas` agent pods labelled `app=NAME`, with `token`.
    pub async fn deploy_agents(
        &self,
        name: &str,
        replicas: i32,
        token: &str,
    ) -> anyhow::Result<()> {
        let deployment = single_container_deployment(name, replicas, agent_container(token))?;
        self.api::<Deployment>()
            .create(&PostParams::default(), &deployment)
            .await
            .context("create agent deployment")?;
        self.wait_deployment_ready(name).await
    }

    /// Starts a pod running only the agent, with `token` as its session token.
    pub async fn start_agent(&self, name: &str, token: &str) -> anyhow::Result<()> {
        start_agent_pod(&self.api::<Pod>(), name, token).await
    }

    /// GETs `path` from `host:port` (a Service name resolves as in the pod) from the client
    /// pod, and returns the response body.
    pub fn http_get(&self, client: &str, target: &str, path: &str) -> anyhow::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        let response = self.exec(client, &["probe", "tcp", target, &request])?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        Ok(body.to_owned())
    }

    /// A Deployment `vol` whose container `app` (busybox) mounts an emptyDir at /data, with a
    /// sidecar that mounts it at /shared, behind a Service on port 8080 that targets the
    /// port `http` only `app` declares.
    pub async fn deploy_app_with_volume(&self) -> anyhow::Result<()> {
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "vol"},
                "spec": {
                    "selector": {"matchLabels": {"app": "vol"}},
                    "template": {
                        "metadata": {"labels": {"app": "vol"}},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [{
                                "name": "app",
                                "image": CLIENT_IMAGE,
                                "imagePullPolicy": "Never",
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                            }, {
                                "name": "sidecar",
                                "image": CLIENT_IMAGE,
                                "imagePullPolicy": "Never",
                                "volumeMounts": [{"name": "data", "mountPath": "/shared"}]
                            }],
                            "volumes": [{"name": "data", "emptyDir": {}}]
                        }
                    }
                }
            }, {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "vol"},
                "spec": {"selector": {"app": "vol"}, "ports": [{"port": 8080, "targetPort": "http"}]}
            }]
        });
        self.apply_json(&manifest)?;
        self.wait_deployment_ready("vol").await
    }

    /// Runs a command in a pod with `kubectl exec` and returns its stdout.
    pub fn exec(&self, pod: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        self.kubectl_ok(&args)
    }
}

/// The echo server's container: HTTP on 8080, TCP echo on 7000, UDP echo on 9000.
fn echo_container() -> serde_json::Value {
    json!({
        "name": "echo",
        "image": ECHO_IMAGE,
        "imagePullPolicy": "Never",
        "args": ["--http", "8080", "--tcp", "7000", "--udp", "9000", "--bulk", "9100"],
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "tcp-echo", "containerPort": 7000},
            {"name": "udp-echo", "containerPort": 9000, "protocol": "UDP"},
            {"name": "bulk", "containerPort": 9100}
        ],
        // By name: intercept renames the app's port, and the probe must keep working.
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
    })
}

/// A Deployment of `replicas` pods labelled `app=NAME`, each running `container`.
fn single_container_deployment(
    name: &str,
    replicas: i32,
    container: serde_json::Value,
) -> anyhow::Result<Deployment> {
    let labels = json!({"app": name});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container]
                }
            }
        }
    }))?)
}

/// The agent's container, with `token` as its session token.
fn agent_container(token: &str) -> serde_json::Value {
    json!({
        "name": "agent",
        "image": AGENT_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "KUBEDEV_AGENT_TOKEN", "value": token},
            {"name": kubedev_protocol::AGENT_POD_UID_ENV,
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}
        ]
    })
}

/// Creates a pod running only the agent and waits until it runs.
pub async fn start_agent_pod(pods: &Api<Pod>, name: &str, token: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [agent_container(token)]
        }
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("create agent pod")?;
    let running = await_condition(pods.clone(), name, conditions::is_pod_running());
    converge::within_timeout(
        &pods.clone().into_client(),
        pods.namespace().unwrap_or_default(),
        &format!("agent pod {name} not running"),
        running,
    )
    .await?;
    Ok(())
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Deletion finishes in the background; nothing waits on it.
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}
