//! The container's volumes on the workstation: a volume mounted at /data in the container
//! is at $KUBEDEV_ROOT/data for `-- CMD`; read-write for intercept, read-only for ingest.

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

/// A shell script for `-- sh -c` that runs `command` in `container` of the session's pod.
fn in_pod(cluster: &TestCluster, ns: &TestNamespace, container: &str, command: &str) -> String {
    let kubectl = format!(
        "{} --kubeconfig {} -n {}",
        cluster.kubectl.display(),
        cluster.admin_kubeconfig.display(),
        ns.name
    );
    let session = kubedev::session::naming::default_name("vol");
    format!(
        "pod=$({kubectl} get pods -l kubedev.io/session={session} -o jsonpath='{{.items[0].metadata.name}}') \
         && {kubectl} exec $pod -c {container} -- sh -c '{command}'"
    )
}

#[tokio::test]
async fn intercept_mounts_the_volumes_read_write() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "volumes").await;
    ns.deploy_app_with_volume().await.expect("vol ready");
    let workstation = Workstation::create(&cluster);
    // The mount reads ahead a bandwidth-delay product, not the kernel's 128 KiB.
    let readahead = "cat /sys/class/bdi/$(mountpoint -d $KUBEDEV_ROOT)/read_ahead_kb";
    let script = format!(
        "echo from-the-laptop > $KUBEDEV_ROOT/data/laptop.txt && {} && {} && cat $KUBEDEV_ROOT/data/pod.txt && {readahead}",
        in_pod(&cluster, &ns, "app", "cat /data/laptop.txt"),
        in_pod(&cluster, &ns, "app", "echo from-the-pod > /data/pod.txt"),
    );
    let output = workstation.plugin_ok(
        &cluster,
        "kubectl-intercept",
        // No -c: of the two containers, only app declares the port the Service targets.
        &[
            "vol",
            "-n",
            &ns.name,
            "--port",
            "3000:8080",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(output, "from-the-laptop\nfrom-the-pod\n16384\n");
}

#[tokio::test]
async fn ingest_mounts_the_volumes_read_only() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "volumes-ro").await;
    ns.deploy_app_with_volume().await.expect("vol ready");
    let workstation = Workstation::create(&cluster);
    let script = format!(
        "{} && cat $KUBEDEV_ROOT/data/pod.txt && if echo x > $KUBEDEV_ROOT/data/laptop.txt; \
         then echo written; else echo refused; fi",
        in_pod(&cluster, &ns, "app", "echo from-the-pod > /data/pod.txt"),
    );
    let output = workstation.plugin_ok(
        &cluster,
        "kubectl-ingest",
        &[
            "vol", "-c", "app", "-n", &ns.name, "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(output, "from-the-pod\nrefused\n");
}

#[tokio::test]
async fn replace_mounts_the_volumes_read_write() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "volumes-replace").await;
    ns.deploy_app_with_volume().await.expect("vol ready");
    let workstation = Workstation::create(&cluster);
    // The app container is gone: the sidecar shares the volume and checks it.
    let script = format!(
        "echo from-the-laptop > $KUBEDEV_ROOT/data/laptop.txt && {}",
        in_pod(&cluster, &ns, "sidecar", "cat /shared/laptop.txt"),
    );
    let output = workstation.plugin_ok(
        &cluster,
        "kubectl-replace_container",
        &[
            "vol", "-c", "app", "-n", &ns.name, "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(output, "from-the-laptop\n");
}

#[tokio::test]
async fn a_symlink_out_of_the_volume_leads_nowhere_and_a_fifo_stalls_nothing() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "volumes-hostile").await;
    ns.deploy_app_with_volume().await.expect("vol ready");
    let workstation = Workstation::create(&cluster);
    // What someone with exec in the pod could leave in a volume for the next developer.
    let plant = "mkfifo /data/pipe && ln -s /etc /data/out && ln -s ../../etc/hostname /data/up \
                 && echo fine > /data/ok.txt";
    let script = format!(
        "{} && (timeout 3 cat $KUBEDEV_ROOT/data/pipe; true) \
         && (cat $KUBEDEV_ROOT/data/out/hostname 2>/dev/null || echo out-refused) \
         && (cat $KUBEDEV_ROOT/data/up 2>/dev/null || echo up-refused) \
         && cat $KUBEDEV_ROOT/data/ok.txt",
        in_pod(&cluster, &ns, "app", plant),
    );
    let output = workstation.plugin_ok(
        &cluster,
        "kubectl-intercept",
        &[
            "vol",
            "-n",
            &ns.name,
            "--port",
            "3000:8080",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(output, "out-refused\nup-refused\nfine\n");
}

#[tokio::test]
async fn a_failed_mount_says_what_sshfs_said_and_the_session_goes_on() {
    let cluster = TestCluster::get();
    let ns = TestNamespace::create(&cluster, "volumes-fail").await;
    ns.deploy_app_with_volume().await.expect("vol ready");
    let workstation = Workstation::create(&cluster);
    // An sshfs that fails as one does on a machine without FUSE.
    let bin = std::env::temp_dir().join(format!("{}-bin", ns.name));
    std::fs::create_dir_all(&bin).expect("bin");
    let sshfs = bin.join("sshfs");
    std::fs::write(
        &sshfs,
        "#!/bin/sh\necho \"fuse: device not found, try 'modprobe fuse' first\" >&2\nexit 1\n",
    )
    .expect("sshfs");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&sshfs, std::fs::Permissions::from_mode(0o755)).expect("mode");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let output = workstation
        .plugin_command(
            &cluster,
            "kubectl-ingest",
            &["vol", "-c", "app", "-n", &ns.name, "--", "echo", "ran"],
        )
        .env("PATH", path)
        .output()
        .expect("plugin runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the session went on: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ran\n");
    assert!(
        stderr.contains(
            "note: the volumes are not mounted: sshfs could not mount the volumes (exit status: \
             1): fuse: device not found, try 'modprobe fuse' first"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&bin).ok();
}
