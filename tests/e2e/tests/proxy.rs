//! tunneld's proxy, as a developer without root uses it: SOCKS5 and HTTP on the
//! workstation's loopback into the cluster's network, service names included, taking only
//! its own credentials; `-- CMD` gets it in its environment.

use std::process::Output;

use serde_json::Value;
use tests_e2e::developer::{Developer, TunClosedToOthers};
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// `curl ARGS` as the developer in the workstation.
fn curl(developer: &Developer, workstation: &Workstation, args: &[&str]) -> Output {
    let mut all = vec!["--silent", "--show-error", "--max-time", "30"];
    all.extend_from_slice(args);
    developer
        .command(workstation, "curl", &all)
        .output()
        .expect("curl runs")
}

/// A namespace with the echo service `web`, a workstation, and a developer on it.
async fn developer_and_web(prefix: &str) -> (TestNamespace, Workstation, Developer) {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, prefix).await;
    ns.deploy_echo("web", 1).await.expect("web");
    (
        ns,
        Workstation::create(&cluster),
        Developer::create(&cluster),
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_developer_without_root_reaches_services_by_name_through_the_proxy() {
    let (ns, workstation, developer) = developer_and_web("proxy").await;
    let ingest = |args: &[&str]| {
        let mut all = vec!["ingest", "-n", ns.name.as_str()];
        all.extend_from_slice(args);
        developer.kubectl_ok(&workstation, &all)
    };
    ingest(&["web", "--detach"]);
    let status: Value =
        serde_json::from_str(&ingest(&["status", "-o", "json"])).expect("status as JSON");
    assert_eq!(status["network"]["state"], "unavailable", "{status:#}");
    let socks = status["proxy"]["socksUrl"].as_str().expect("socksUrl");
    let http = status["proxy"]["httpUrl"].as_str().expect("httpUrl");

    let by_name = format!("http://web.{}:8080/by-name", ns.name);
    for (proxy, url) in [
        (socks, by_name.clone()),
        (http, by_name.clone()),
        // The session's namespace is the first on the search path, as in its pods.
        (socks, "http://web:8080/by-name".to_owned()),
        (
            http,
            format!("http://web.{}.svc.cluster.local:8080/by-name", ns.name),
        ),
    ] {
        let answer = curl(&developer, &workstation, &["--proxy", proxy, &url]);
        let body = stdout(&answer);
        assert!(
            body.starts_with("echo from web-") && body.ends_with(": GET /by-name\n"),
            "{proxy} {url}: {body}{}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    // By the Service's address, and tunnelled with CONNECT.
    let address = ns
        .kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .expect("the service's address");
    let by_address = format!("http://{address}:8080/tunnel");
    let answer = curl(
        &developer,
        &workstation,
        &["--proxytunnel", "--proxy", http, &by_address],
    );
    assert!(stdout(&answer).ends_with(": GET /tunnel\n"), "{answer:?}");

    let address_only = socks.rsplit_once('@').expect("credentials").1;
    for refused in [
        format!("socks5h://{address_only}"),
        format!("socks5h://kubedev:guess@{address_only}"),
    ] {
        let answer = curl(&developer, &workstation, &["--proxy", &refused, &by_name]);
        assert!(
            !answer.status.success() && stdout(&answer).is_empty(),
            "{refused}: {answer:?}"
        );
    }
    let anonymous = format!("http://{address_only}");
    let status_code = ["--output", "/dev/null", "--write-out", "%{http_code}"];
    let mut args = status_code.to_vec();
    args.extend(["--proxy", &anonymous, &by_name]);
    let answer = curl(&developer, &workstation, &args);
    assert_eq!(stdout(&answer), "407", "{answer:?}");
    ingest(&["leave", "web"]);
    assert_eq!(developer.files_not_own(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn the_command_of_a_developer_without_root_gets_the_proxy_in_its_environment() {
    // Without the device the command gets no network namespace: the proxy it is.
    let _closed = TunClosedToOthers::hold();
    let (ns, workstation, developer) = developer_and_web("proxy-cmd").await;
    let script = format!(
        "curl --silent --show-error --max-time 30 http://web.{}:8080/from-cmd",
        ns.name
    );
    let output = developer.kubectl(
        &workstation,
        &["ingest", "web", "-n", &ns.name, "--", "sh", "-c", &script],
    );
    let printed = stdout(&output);
    let told = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{printed}{told}");
    assert!(
        printed.starts_with("echo from web-") && printed.ends_with(": GET /from-cmd\n"),
        "{printed}{told}"
    );
    assert!(
        told.contains("note: sh reaches the cluster through tunneld's proxy at 127.0.0.1:"),
        "{told}"
    );
}
