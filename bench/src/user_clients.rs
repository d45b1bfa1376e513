//! What a user's own client sees: curl downloading from and uploading to the echo
//! Service by its name through kubedev, and through `kubectl port-forward svc/echo`, from
//! the same workstation over the same wire.

use std::path::{Path, PathBuf};

use tests_e2e::workstation::Workstation;
use tests_e2e::{TestCluster, TestNamespace};

use crate::cpu_trace::CpuUse;
use crate::paths::{PortForward, Vantage};

/// Each transfer is made this many times and the best kept, as a user retrying would.
const TRIES: usize = 3;
/// The echo Service's HTTP port.
const HTTP_PORT: u16 = 8080;

/// curl's throughput one way and the other, MiB/s, and where the CPU went during the
/// fastest download.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transfers {
    pub(crate) download_mib_s: f64,
    pub(crate) upload_mib_s: f64,
    pub(crate) download_cpu_per_gib: CpuUse,
}

/// curl through each path at one RTT.
#[derive(Debug, Clone)]
pub(crate) struct CurlTimes {
    pub(crate) port_forward: Transfers,
    pub(crate) kubedev: Transfers,
}

/// A file of zeros for curl to upload, removed when dropped.
struct UploadFile(PathBuf);

impl UploadFile {
    fn create(bytes: u64) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("kubedev-bench-upload-{}", std::process::id()));
        // Sparse: reading it costs no disk.
        std::fs::File::create(&path)?.set_len(bytes)?;
        Ok(Self(path))
    }
}

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Moves `bytes` each way with curl, through the tunneld already linked in `workstation`
/// (to `http://echo:8080`, resolved by tunneld) and through kubectl port-forward.
pub(crate) fn measure(
    cluster: &TestCluster,
    ns: &TestNamespace,
    workstation: &Workstation,
    bytes: u64,
) -> anyhow::Result<CurlTimes> {
    let file = UploadFile::create(bytes)?;
    let kubedev = best_of(
        workstation,
        &format!("http://echo:{HTTP_PORT}"),
        bytes,
        &file.0,
    )?;
    let forward = PortForward::start(
        cluster,
        ns,
        Vantage::Workstation(workstation),
        "svc/echo",
        &[HTTP_PORT],
    )?;
    let port_forward = best_of(
        workstation,
        &format!("http://{}", forward.local[0]),
        bytes,
        &file.0,
    )?;
    Ok(CurlTimes {
        port_forward,
        kubedev,
    })
}

fn best_of(
    workstation: &Workstation,
    base: &str,
    bytes: u64,
    file: &Path,
) -> anyhow::Result<Transfers> {
    let mut best = Transfers::default();
    for _ in 0..TRIES {
        let before = CpuUse::now();
        let download = curl(workstation, &[&format!("{base}/bytes/{bytes}")], "download")?;
        let cpu = CpuUse::now().per_gib_since(&before, bytes);
        anyhow::ensure!(
            download.size == bytes,
            "curl downloaded {} of {bytes} bytes",
            download.size
        );
        let file = file.to_str().unwrap_or_default();
        let upload = curl(
            workstation,
            &["-T", file, &format!("{base}/sink")],
            "upload",
        )?;
        anyhow::ensure!(
            upload.size == bytes && upload.answer.trim() == format!("received {bytes}"),
            "curl uploaded {} of {bytes} bytes: {}",
            upload.size,
            upload.answer
        );
        if download.mib_s > best.download_mib_s {
            best.download_mib_s = download.mib_s;
            best.download_cpu_per_gib = cpu;
        }
        best.upload_mib_s = best.upload_mib_s.max(upload.mib_s);
    }
    Ok(best)
}

/// What curl reported of one transfer.
#[derive(Debug)]
struct Transfer {
    size: u64,
    mib_s: f64,
    answer: String,
}

/// Runs curl in the workstation with `args`, reporting the `direction`'s size and speed.
fn curl(workstation: &Workstation, args: &[&str], direction: &str) -> anyhow::Result<Transfer> {
    let report = format!("\n%{{size_{direction}}} %{{speed_{direction}}}");
    let mut command = vec!["curl", "--silent", "--show-error", "--fail", "--output"];
    // Downloads go nowhere; an upload's answer is read.
    command.push(if direction == "download" {
        "/dev/null"
    } else {
        "-"
    });
    command.extend_from_slice(&["--write-out", &report]);
    command.extend_from_slice(args);
    let output = workstation.run(&command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "curl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let (answer, figures) = stdout.rsplit_once('\n').unwrap_or_default();
    let mut figures = figures.split_whitespace();
    let size: u64 = figures.next().unwrap_or_default().parse()?;
    let bytes_per_s: f64 = figures.next().unwrap_or_default().parse()?;
    Ok(Transfer {
        size,
        mib_s: bytes_per_s / f64::from(1u32 << 20),
        answer: answer.to_owned(),
    })
}
