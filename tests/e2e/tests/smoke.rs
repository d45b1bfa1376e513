//! Smoke tests of the local cluster: the pieces every later e2e test relies on work
//! for real (scheduling, Services, kube-proxy, CoreDNS, port-forward, exec, RBAC).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use tests_e2e::{TestCluster, TestNamespace};

#[tokio::test]
async fn deployment_with_service_becomes_ready() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "smoke-ready").await;
    ns.deploy_echo("echo", 2)
        .await
        .expect("echo deployment ready");

    // The endpoints controller follows the pods' readiness a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let slices = ns
            .api::<EndpointSlice>()
            .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
            .await
            .expect("list endpoint slices");
        let ready = slices
            .items
            .iter()
            .flat_map(|slice| &slice.endpoints)
            .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        if ready == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both replicas are ready endpoints of the service: {ready} of 2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kubectl_port_forward_reaches_the_echo_server() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "smoke-pf").await;
    ns.deploy_echo("echo", 1)
        .await
        .expect("echo deployment ready");

    let mut port_forward = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args(["-n", &ns.name, "port-forward", "svc/echo", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward starts");
    // kubectl keeps writing to stdout ("Handling connection ..."): the pipe must stay open.
    let mut stdout = BufReader::new(port_forward.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout
        .read_line(&mut first_line)
        .expect("port-forward prints its local port");
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let local = first_line
        .split_whitespace()
        .nth(2)
        .expect("address in port-forward output")
        .to_owned();

    let mut stream = TcpStream::connect(&local).expect("connect to the forwarded port");
    stream
        .write_all(b"GET /through-port-forward HTTP/1.1\r\nHost: echo\r\n\r\n")
        .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    port_forward.kill().expect("stop port-forward");
    let _ = port_forward.wait();
    drop(stdout);

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("echo from echo-") && answer.contains("GET /through-port-forward"),
        "the echo pod answered: {answer}"
    );
}

#[tokio::test]
async fn client_pod_resolves_service_names_and_reaches_them_over_tcp() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "smoke-dns").await;
    let service = ns
        .deploy_echo("echo", 1)
        .await
        .expect("echo deployment ready");
    ns.start_client("client").await.expect("client pod runs");
    let cluster_ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("service has a ClusterIP");

    let qualified = format!("echo.{}", ns.name);
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);
    for name in ["echo", qualified.as_str(), fqdn.as_str()] {
        // Resolved as applications resolve: getaddrinfo with the pod's search path.
        let resolved = ns
            .exec("client", &["probe", "resolve", name, ""])
            .unwrap_or_else(|e| panic!("resolve {name}: {e}"));
        assert_eq!(
            resolved.trim(),
            cluster_ip,
            "{name} resolves to the service IP"
        );

        let url = format!("http://{name}:8080/hello");
        let answer = ns
            .exec("client", &["wget", "-qO-", &url])
            .unwrap_or_else(|e| panic!("wget {url}: {e}"));
        assert!(
            answer.starts_with("echo from echo-") && answer.contains("GET /hello"),
            "{url} answered by the echo pod: {answer}"
        );
    }

    let target = format!("echo.{}:7000", ns.name);
    let echoed = ns
        .exec("client", &["probe", "tcp", &target, "ping over tcp"])
        .expect("tcp echo");
    assert!(echoed.ends_with("ping over tcp\n"), "{echoed}");
}

#[tokio::test]
async fn udp_echo_answers_through_a_cluster_ip_service() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "smoke-udp").await;
    let service = ns
        .deploy_echo("echo", 1)
        .await
        .expect("echo deployment ready");
    ns.start_client("client").await.expect("client pod runs");
    let cluster_ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("service has a ClusterIP");

    for target in [format!("{cluster_ip}:9000"), "echo:9000".to_owned()] {
        let answer = ns
            .exec("client", &["probe", "udp", &target, "ping over udp"])
            .unwrap_or_else(|e| panic!("udp to {target}: {e}"));
        assert!(
            answer.starts_with("echo from echo-") && answer.trim_end().ends_with(": ping over udp"),
            "{target} answered by the echo pod: {answer}"
        );
    }
}

#[tokio::test]
async fn kubectl_exec_runs_commands_in_the_pod() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "smoke-exec").await;
    ns.start_client("client").await.expect("client pod runs");

    let hostname = ns.exec("client", &["cat", "/etc/hostname"]).expect("exec");
    assert_eq!(hostname.trim(), "client");
    let status = cluster.kubectl(&["-n", &ns.name, "exec", "client", "--", "sh", "-c", "exit 3"]);
    assert_eq!(
        status.status.code(),
        Some(3),
        "exit code of the remote command"
    );
}

#[tokio::test]
async fn developer_user_is_confined_to_its_namespace() {
    let cluster = TestCluster::get();
    let as_developer = |args: &[&str]| {
        Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.dev_kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let allowed = as_developer(&[
        "auth",
        "can-i",
        "create",
        "pods",
        "--subresource=portforward",
    ]);
    assert_eq!(String::from_utf8_lossy(&allowed.stdout).trim(), "yes");
    // The kubedev Role, not `edit`: it creates no workloads (its only pods are `connect`'s).
    let creates = as_developer(&["auth", "can-i", "create", "deployments"]);
    assert_eq!(String::from_utf8_lossy(&creates.stdout).trim(), "no");
    let own = as_developer(&["get", "pods"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    let cluster_wide = as_developer(&["get", "pods", "--all-namespaces"]);
    assert!(!cluster_wide.status.success());
    assert!(String::from_utf8_lossy(&cluster_wide.stderr).contains("forbidden"));
    let other = as_developer(&["-n", "kube-system", "get", "pods"]);
    assert!(!other.status.success(), "no access to kube-system");
}
