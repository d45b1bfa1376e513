//! The plugins and tunneld reach the API server through the proxy the developer has
//! configured, as kubectl does: from `HTTPS_PROXY`, or from the kubeconfig cluster's
//! `proxy-url`. The workstation here has no route to the API server at all, only a CONNECT
//! proxy on its loopback, as on a corporate laptop; every API call and every port-forward
//! must go through it.

use std::net::SocketAddr;
use std::process::Output;

use serde_json::Value;
use tests_e2e::workstation::{LocalServer, Workstation};
use tests_e2e::{TestCluster, TestNamespace};
use tests_fixtures::connect_proxy::{self, Tunnels};

/// Every variable that picks a proxy; each test sets only the ones it means.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A CONNECT proxy listening on the workstation's loopback that tunnels to the API server
/// only, from the host's network; it stops when dropped. It runs on the worker threads of
/// the test's runtime, which a test waiting for a command leaves free.
struct Proxy {
    url: String,
    tunnels: Tunnels,
    serving: tokio::task::JoinHandle<()>,
}

impl Proxy {
    fn start(workstation: &Workstation, api_server: SocketAddr) -> Self {
        let listener = workstation.inside(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        });
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let tunnels = Tunnels::default();
        let serving = tokio::spawn(connect_proxy::serve(
            listener,
            vec![api_server],
            tunnels.clone(),
        ));
        Self {
            url,
            tunnels,
            serving,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// The API server's address, from the developer's kubeconfig.
fn api_server(cluster: &TestCluster) -> SocketAddr {
    let kubeconfig = std::fs::read_to_string(&cluster.dev_kubeconfig).expect("kubeconfig");
    kubeconfig
        .lines()
        .find_map(|line| line.trim().strip_prefix("server: https://"))
        .and_then(|address| address.parse().ok())
        .expect("server: https://ADDRESS:PORT in the kubeconfig")
}

/// How the plugins are told about the proxy.
enum Configured {
    /// `HTTPS_PROXY` in their environment.
    Environment,
    /// `proxy-url` in the kubeconfig's cluster, and nothing in the environment.
    Kubeconfig,
}

/// A namespace with the echo service and a client pod, and a workstation that reaches the
/// API server only through [`Proxy`], serving HTTP on port 3000.
struct Setup {
    cluster: TestCluster,
    ns: TestNamespace,
    workstation: Workstation,
    proxy: Proxy,
    /// The plugins' environment.
    env: Vec<(&'static str, String)>,
    _server: LocalServer,
}

async fn setup(prefix: &str, configured: Configured) -> Setup {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let workstation = Workstation::create(&cluster);
    let server = workstation.serve_http(3000, "laptop");
    let api_server = api_server(&cluster);
    let proxy = Proxy::start(&workstation, api_server);
    workstation.run_ok(&["ip", "route", "del", &format!("{}/32", api_server.ip())]);
    let env = match configured {
        Configured::Environment => vec![("HTTPS_PROXY", proxy.url.clone())],
        Configured::Kubeconfig => {
            let kubeconfig = std::fs::read_to_string(&cluster.dev_kubeconfig)
                .expect("kubeconfig")
                .replace(
                    "    server: ",
                    &format!("    proxy-url: {}\n    server: ", proxy.url),
                );
            let path = workstation.file("proxied.kubeconfig");
            std::fs::write(&path, kubeconfig).expect("write the kubeconfig");
            vec![("KUBECONFIG", path.display().to_string())]
        }
    };
    Setup {
        cluster,
        ns,
        workstation,
        proxy,
        env,
        _server: server,
    }
}

impl Setup {
    /// Runs `plugin -n NAMESPACE ARGS` with the setup's environment.
    fn plugin(&self, plugin: &str, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        let mut command = self.workstation.plugin_command(&self.cluster, plugin, &all);
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        command
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .output()
            .expect("plugin runs")
    }

    fn plugin_ok(&self, plugin: &str, args: &[&str]) -> String {
        let output = self.plugin(plugin, args);
        assert!(
            output.status.success(),
            "{plugin} {args:?} failed ({}):\n{}{}\ntunneld's log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.workstation.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// list, an intercept whose requests reach the workstation, ingest with an env file, and
/// leave, all through the proxy, which counts what it carried.
async fn every_command_goes_through_the_proxy(s: &Setup) {
    s.plugin_ok("kubectl-intercept", &["list"]);
    let after_list = s.proxy.tunnels.count();
    assert!(after_list > 0, "list went through the proxy");

    s.plugin_ok(
        "kubectl-intercept",
        &["echo", "--port", "3000:http", "--detach"],
    );
    let answer =
        s.ns.http_get("client", "echo:8080", "/through-the-proxy")
            .expect("a request from the client pod");
    assert_eq!(
        answer.trim(),
        "local laptop: GET /through-the-proxy HTTP/1.1",
        "the port-forward to the agent goes through the proxy too"
    );
    let listed: Value =
        serde_json::from_str(&s.plugin_ok("kubectl-intercept", &["list", "-o", "json"]))
            .expect("list -o json");
    assert_eq!(
        listed[0]["name"],
        kubedev::session::naming::default_name("echo").as_str()
    );
    s.plugin_ok("kubectl-intercept", &["leave", "echo"]);
    let after_intercept = s.proxy.tunnels.count();
    assert!(
        after_intercept > after_list,
        "the intercept went through the proxy"
    );

    let env_file = s.workstation.file("echo.env");
    s.plugin_ok(
        "kubectl-ingest",
        &[
            "echo",
            "--env-file",
            &env_file.display().to_string(),
            "--",
            "true",
        ],
    );
    let written = std::fs::read_to_string(&env_file).expect("the env file");
    assert!(
        written.contains("KUBERNETES_SERVICE_HOST="),
        "the container's environment: {written}"
    );
    assert!(
        s.proxy.tunnels.count() > after_intercept,
        "ingest went through the proxy"
    );
    assert_eq!(
        s.plugin_ok("kubectl-intercept", &["list", "-o", "json"])
            .trim(),
        "[]",
        "every session left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reaches_the_cluster_through_https_proxy() {
    let s = setup("proxy-env", Configured::Environment).await;
    every_command_goes_through_the_proxy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reaches_the_cluster_through_the_kubeconfigs_proxy_url() {
    let s = setup("proxy-url", Configured::Kubeconfig).await;
    every_command_goes_through_the_proxy(&s).await;
}

#[tokio::test]
async fn a_proxy_that_is_not_there_is_named_and_no_proxy_goes_around_it() {
    let cluster = TestCluster::get();
    let workstation = Workstation::create(&cluster);
    let closed = workstation.inside(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    });
    let proxy = format!("http://{closed}");
    let list = |no_proxy: Option<String>| {
        let mut command = workstation.plugin_command(&cluster, "kubectl-intercept", &["list"]);
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        command.env("HTTPS_PROXY", &proxy);
        if let Some(no_proxy) = no_proxy {
            command.env("NO_PROXY", no_proxy);
        }
        command.output().expect("plugin runs")
    };

    let refused = list(None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "no way to the cluster: {stderr}");
    assert!(
        stderr.contains(&format!(
            "the proxy {proxy} (from HTTPS_PROXY) is unreachable"
        )),
        "the error names the proxy: {stderr}"
    );

    let api_server = api_server(&cluster).ip().to_string();
    let direct = list(Some(format!("example.com,{api_server}")));
    assert!(
        direct.status.success(),
        "NO_PROXY names the API server: {}",
        String::from_utf8_lossy(&direct.stderr)
    );
}
