//! `kubectl intercept --wiretap`: developers get copies of a workload's traffic while the
//! app (or another developer's intercept) answers every request; copies that cannot be
//! delivered are dropped and counted, never failing the real request.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

/// GETs `path` on the echo Service from the client pod, with an `X-Dev` header when
/// `developer` is not empty; returns the body.
fn get(ns: &TestNamespace, path: &str, developer: &str) -> String {
    let header = match developer {
        "" => String::new(),
        name => format!("X-Dev: {name}\r\n"),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: echo\r\n{header}Connection: close\r\n\r\n");
    let response = ns
        .exec("client", &["probe", "tcp", "echo:8080", &request])
        .expect("request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or(response)
}

/// Waits until `check` holds for the wiretap counts (copied, dropped) of `session`, as
/// `status -o json` on `workstation` shows them.
fn wait_for_counts(
    cluster: &TestCluster,
    workstation: &Workstation,
    session: &str,
    check: impl Fn(u64, u64) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = serde_json::from_str(&workstation.plugin_ok(
            cluster,
            PLUGIN,
            &["status", "-o", "json"],
        ))
        .expect("status -o json");
        let counts = status["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == session)
            .map(|s| s["wiretap"].clone())
            .unwrap_or_default();
        let count = |what: &str| counts[what].as_u64().unwrap_or_default();
        if check(count("copied"), count("dropped")) {
            return;
        }
        assert!(Instant::now() < deadline, "{session}: {status:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test]
async fn wiretaps_get_copies_next_to_an_intercept_and_the_real_requests_never_fail() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "wiretap").await;
    ns.deploy_echo("echo", 1).await.expect("echo ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.stored_deployment_and_service("echo").await;
    let alice = Workstation::create(&cluster);
    let _alice_server = alice.serve_http(3000, "laptop");
    let bob = Workstation::create(&cluster);
    let _bob_server = bob.serve_http(3000, "bob");
    let carol_server = bob.serve_http(3001, "carol");
    let session = |local: &str, extra: &[&str]| {
        let mut args = vec!["-n", ns.name.as_str(), "echo", "--port", local, "--detach"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |workstation: &Workstation, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        workstation.plugin_ok(&cluster, PLUGIN, &args)
    };

    // Bob wiretaps every connection to the app's port: the app answers, Bob gets copies.
    run(
        &bob,
        session("3000:http", &["--wiretap", "--name", "bob-tap"]),
    );
    for path in ["/one", "/two"] {
        assert!(get(&ns, path, "").starts_with("echo from echo-"));
    }
    wait_for_counts(&cluster, &bob, "bob-tap", |copied, _| copied == 2);

    // Alice intercepts her requests, and Carol wiretaps only Alice's: each request still
    // gets exactly one real answer, and every wiretap whose filter matches gets a copy.
    run(
        &alice,
        session("3000:http", &["--http-header", "x-dev=alice"]),
    );
    let carol_tap = [
        "--wiretap",
        "--http-header",
        "x-dev=alice",
        "--name",
        "carol-tap",
    ];
    run(&bob, session("3001:http", &carol_tap));
    assert_eq!(get(&ns, "/a", "alice"), "local laptop: GET /a HTTP/1.1");
    assert!(get(&ns, "/b", "").starts_with("echo from echo-"));
    wait_for_counts(&cluster, &bob, "bob-tap", |copied, _| copied == 4);
    wait_for_counts(&cluster, &bob, "carol-tap", |copied, dropped| {
        (copied, dropped) == (1, 0)
    });

    assert_eq!(
        listed_wiretaps(&cluster, &bob, &ns),
        ["bob-tap", "carol-tap"]
    );

    // Carol's server goes away: her copies are dropped and counted; Alice still answers.
    drop(carol_server);
    assert_eq!(get(&ns, "/c", "alice"), "local laptop: GET /c HTTP/1.1");
    wait_for_counts(&cluster, &bob, "carol-tap", |_, dropped| dropped == 1);

    for (workstation, name) in [(&bob, "bob-tap"), (&alice, "echo"), (&bob, "carol-tap")] {
        workstation.plugin_ok(&cluster, PLUGIN, &["-n", &ns.name, "leave", name]);
    }
    assert_eq!(
        ns.stored_deployment_and_service("echo").await,
        before,
        "restored exactly"
    );
}

/// The sessions `list -o json` shows as wiretaps, in its order.
fn listed_wiretaps(
    cluster: &TestCluster,
    workstation: &Workstation,
    ns: &TestNamespace,
) -> Vec<String> {
    let listed: Value = serde_json::from_str(&workstation.plugin_ok(
        cluster,
        PLUGIN,
        &["-n", &ns.name, "list", "-o", "json"],
    ))
    .expect("list -o json");
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["wiretap"] == true)
        .filter_map(|row| row["name"].as_str().map(str::to_owned))
        .collect()
}
