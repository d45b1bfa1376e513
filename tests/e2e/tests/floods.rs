//! Floods against ports the agent took over: 5,000 TCP connections and 5,000 UDP sources
//! from one client pod, then 1.2 GB of large datagrams from another. The client gets no more than its share, the link to the
//! workstation survives, flows that were there keep working, another client is still
//! served, and the agent's memory stays bounded.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-replace_container";
const FLOOD: &str = "5000";

/// 64 sources sending 20,000 datagrams of 60,000 bytes (1.2 GB) between them.
const BURST: &str = "64x20000x60000";

/// The connections and flows one client address may have open to the agent's ports.
const SHARE: usize = 512;

/// The number just before `suffix` in a probe's report.
fn count_before(report: &str, suffix: &str) -> usize {
    report
        .trim()
        .split(['\n', ',', ';'])
        .find_map(|part| part.trim().strip_suffix(suffix))
        .and_then(|count| count.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no count before {suffix:?} in {report}"))
}

/// The peak resident memory of the agent process in `pod_uid`'s pod, in KiB, read from this
/// machine's /proc (the test cluster's node is this machine).
fn agent_peak_kib(pod_uid: &str) -> u64 {
    let cgroup_ids = [pod_uid.to_owned(), pod_uid.replace('-', "_")];
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if comm.trim() != "kubedev-agent" || !cgroup_ids.iter().any(|id| cgroup.contains(id)) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let peak: Option<u64> = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok());
        found.extend(peak);
    }
    assert_eq!(
        found.len(),
        1,
        "one agent process in pod {pod_uid}: {found:?}"
    );
    found[0]
}

/// How many times the containers of pod `name` restarted, all together.
async fn restarts(ns: &TestNamespace, name: &str) -> i32 {
    let pod = ns.api::<Pod>().get(name).await.expect("the pod");
    let statuses = pod.status.and_then(|status| status.container_statuses);
    statuses
        .iter()
        .flatten()
        .map(|status| status.restart_count)
        .sum()
}

#[tokio::test]
async fn floods_of_sources_and_connections_leave_the_link_and_other_flows_alone() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "floods").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    ns.start_client("teammate")
        .await
        .expect("second client pod");
    let workstation = Workstation::create(&cluster);
    let _http = workstation.serve_http(3000, "laptop");
    let _udp = workstation.serve_udp(9000, "laptop");
    let args = ["echo", "-n", &ns.name, "--port", "3000:http", "--detach"];
    workstation.plugin_ok(&cluster, PLUGIN, &args);
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=echo,kubedev.io/session"))
        .await
        .expect("pods");
    let uid = pods.items[0].metadata.uid.clone().expect("uid");
    let at_start = agent_peak_kib(&uid);
    let served = |who: &str, path: &str| {
        let answer = ns.http_get(who, "echo:8080", path).expect("GET");
        assert_eq!(answer.trim(), format!("local laptop: GET {path} HTTP/1.1"));
    };
    served("client", "/before");

    let namespace = ns.name.clone();
    let flooding = std::thread::spawn(move || {
        let args = ["-n", &namespace, "exec", "client", "--"];
        let flood = ["probe", "tcp-flood", "echo:8080", FLOOD];
        let output = TestCluster::get().kubectl(&[&args[..], &flood[..]].concat());
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    std::thread::sleep(std::time::Duration::from_secs(4));
    served("teammate", "/during-tcp");
    let tcp = flooding.join().expect("TCP flood");
    eprintln!("TCP flood: {}", tcp.trim());
    let open = count_before(&tcp, " still open after 8s");
    assert!(
        open <= SHARE,
        "one client holds at most {SHARE} connections: {tcp}"
    );
    served("client", "/after-tcp");

    let udp = ns
        .exec("client", &["probe", "udp-flood", "echo:9000", FLOOD])
        .expect("UDP flood");
    eprintln!("UDP flood: {}", udp.trim());
    assert!(
        udp.contains("first flow answered before and after"),
        "{udp}"
    );
    // The first flow holds one place of the client's share.
    let answered = count_before(&udp, &format!(" of {FLOOD} flood datagrams answered"));
    assert!(
        answered < SHARE,
        "one client starts at most {SHARE} flows: {udp}"
    );
    served("teammate", "/after-udp");

    // Large datagrams from a few sources, far faster than the link carries them: what
    // waits for the link is bounded in bytes, so the agent is neither killed nor slowed.
    let burst = ns
        .exec("teammate", &["probe", "udp-burst", "echo:9000", BURST])
        .expect("UDP burst");
    eprintln!("UDP burst: {}", burst.trim());
    served("teammate", "/after-burst");

    let name = pods.items[0].metadata.name.clone().expect("name");
    assert_eq!(restarts(&ns, &name).await, 0, "no container restarted");
    let peak = agent_peak_kib(&uid);
    eprintln!("agent peak memory: {at_start} KiB at start, {peak} KiB after the floods");
    assert!(
        peak < 512 * 1024,
        "under the agent's memory limit: {peak} KiB"
    );
    workstation.plugin_ok(&cluster, PLUGIN, &["leave", "echo", "-n", &ns.name]);
}
