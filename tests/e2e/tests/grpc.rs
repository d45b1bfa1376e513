//! HTTP/2 on a filtered port: a real gRPC client in the cluster makes unary and streaming
//! calls on one channel, and each call goes to the workstation or the app by its metadata.

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

const PLUGIN: &str = "kubectl-intercept";

#[tokio::test]
async fn grpc_calls_on_one_channel_reach_the_workstation_only_when_their_metadata_matches() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "grpc").await;
    ns.deploy_grpc_echo("grpc").await.expect("grpc ready");
    ns.start_client("client").await.expect("client pod");
    let before = ns.stored_deployment_and_service("grpc").await;
    let workstation = Workstation::create(&cluster);
    let _server = workstation.serve_grpc(3000, "laptop");

    let intercept = [
        "-n",
        &ns.name,
        "grpc",
        "--port",
        "3000:grpc",
        "--http-header",
        "x-dev=alice",
        "--detach",
    ];
    workstation.plugin_ok(&cluster, PLUGIN, &intercept);

    let calls = [
        "say:x-dev=alice",
        "say",
        "count:x-dev=alice",
        "count:x-dev=bob",
        "chat:x-dev=alice",
        "chat",
    ];
    let mut command = vec!["grpc-echo", "call", "grpc:9090"];
    command.extend(calls);
    let output = ns.exec("client", &command).expect("the gRPC calls");
    let answers: Vec<&str> = output.lines().collect();
    assert_eq!(answers.len(), calls.len(), "{output}");
    assert_eq!(answers[0], "local laptop: say");
    assert!(answers[1].starts_with("echo from grpc-"), "{output}");
    assert_eq!(
        answers[2],
        "local laptop: count 1 | local laptop: count 2 | local laptop: count 3"
    );
    assert!(
        answers[3].starts_with("echo from grpc-") && answers[3].ends_with(": count 3"),
        "{output}"
    );
    assert_eq!(
        answers[4],
        "local laptop: chat 1 | local laptop: chat 2 | local laptop: chat 3"
    );
    assert!(
        answers[5].starts_with("echo from grpc-") && answers[5].ends_with(": chat 3"),
        "{output}"
    );

    workstation.plugin_ok(&cluster, PLUGIN, &["-n", &ns.name, "leave", "grpc"]);
    assert_eq!(
        ns.stored_deployment_and_service("grpc").await,
        before,
        "restored exactly"
    );
}
