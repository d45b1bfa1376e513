//! kubedev as developers run it: as themselves, not root, with the plugins where krew puts
//! them, and no sudo anywhere.

use tests_e2e::developer::Developer;
use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

#[tokio::test]
async fn ingest_runs_the_command_as_the_developer_and_leaves_nothing_of_roots() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "as-developer").await;
    ns.deploy_echo("web", 1).await.expect("web");
    let workstation = Workstation::create(&cluster);
    let developer = Developer::create(&cluster);

    let output = developer.kubectl_ok(
        &workstation,
        &[
            "ingest",
            "web",
            "-n",
            &ns.name,
            "--",
            "sh",
            "-c",
            "id -u; echo \"$HOME\"",
        ],
    );
    let mut lines = output.lines();
    assert_eq!(
        lines.next(),
        Some(developer.uid.to_string().as_str()),
        "{output}"
    );
    assert_eq!(
        lines.next(),
        Some(developer.home.to_str().expect("utf-8")),
        "{output}"
    );
    assert_eq!(developer.files_not_own(), Vec::<std::path::PathBuf>::new());
}
