//! `gather-logs`: what a bug report needs, in one archive: this machine's tunneld logs and
//! state, the sessions (their records and leases), and each agent pod's status and logs
//! (the previous container's too, after a restart).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams};

use super::survey::survey;
use kubedev::cluster::Connection;
use kubedev::control::ProxyStatus;
use kubedev::inject::AGENT_CONTAINER;
use kubedev::tunneld;

/// How much of each agent's log to keep.
const LOG_LINES: i64 = 20_000;

/// A gzipped tar being written, every entry a file of mode 0600.
struct Archive {
    builder: tar::Builder<GzEncoder<std::fs::File>>,
}

impl Archive {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            builder: tar::Builder::new(GzEncoder::new(file, Compression::default())),
        })
    }

    fn add(&mut self, name: &str, contents: &[u8]) -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(Timestamp::now().as_second().try_into().unwrap_or_default());
        self.builder.append_data(&mut header, name, contents)?;
        Ok(())
    }

    /// Adds what `found` holds, or the error that kept it from being found.
    fn add_found(&mut self, name: &str, found: anyhow::Result<String>) -> anyhow::Result<()> {
        match found {
            Ok(text) => self.add(name, text.as_bytes()),
            Err(err) => self.add(&format!("{name}.error"), format!("{err:#}\n").as_bytes()),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        self.builder.into_inner()?.finish()?;
        Ok(())
    }
}

/// Writes the archive to `out` (default `kubedev-logs-TIME.tar.gz` here); returns its path.
pub(super) async fn gather_logs(
    connection: &Connection,
    socket: &Path,
    out: Option<PathBuf>,
    all_namespaces: bool,
) -> anyhow::Result<PathBuf> {
    let now = Timestamp::now();
    let path = out.unwrap_or_else(|| {
        PathBuf::from(format!(
            "kubedev-logs-{}.tar.gz",
            now.strftime("%Y%m%dT%H%M%SZ")
        ))
    });
    let mut archive = Archive::create(&path)?;
    archive.add(
        "about.txt",
        format!(
            "kubedev {}\ngathered {now}\ncontext {}\nnamespace {}\nAPI server {}\n",
            env!("CARGO_PKG_VERSION"),
            connection.context.as_deref().unwrap_or("(none)"),
            connection.namespace,
            connection.server
        )
        .as_bytes(),
    )?;
    add_tunneld_logs(&mut archive)?;
    let daemon = tunneld::status(socket).await;
    archive.add_found(
        "tunneld/status.json",
        daemon
            .as_ref()
            .map_err(|err| anyhow::anyhow!("{err}"))
            .and_then(|status| {
                // The archive is for a bug report: the proxy's password stays here.
                let mut shown = status.clone();
                shown.proxy = shown.proxy.as_ref().map(ProxyStatus::redacted);
                Ok(serde_json::to_string_pretty(&shown)?)
            }),
    )?;
    let survey = survey(connection, daemon.as_ref().ok(), all_namespaces).await?;
    let rows = survey.rows(daemon.as_ref().ok());
    archive.add(
        "sessions.json",
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    for (workload, record) in &survey.sessions {
        let dir = format!("sessions/{}/{}", workload.namespace, record.name);
        archive.add(
            &format!("{dir}/record.json"),
            record.to_annotation().as_bytes(),
        )?;
        let pods: Api<Pod> = Api::namespaced(connection.client.clone(), &workload.namespace);
        let selector = workload.agent_selector(&record.name)?;
        let listed = pods.list(&ListParams::default().labels(&selector)).await;
        let listed = match listed {
            Ok(listed) => listed.items,
            Err(err) => {
                archive.add_found(&format!("{dir}/pods"), Err(err.into()))?;
                continue;
            }
        };
        for pod in listed {
            add_agent_pod(&mut archive, &pods, &dir, &pod).await?;
        }
    }
    archive.finish()?;
    Ok(path)
}

/// Every tunneld's log on this machine (one tunneld per kube context).
fn add_tunneld_logs(archive: &mut Archive) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(tunneld::runtime_dir()) else {
        return archive.add("tunneld/none.txt", b"no tunneld has run on this machine\n");
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "log") {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only this user's own logs, never through a link to someone else's file.
            let found = kubedev::private_files::read_own(&path)
                .map(Option::unwrap_or_default)
                .map_err(anyhow::Error::from);
            archive.add_found(&format!("tunneld/{name}"), found)?;
        }
    }
    Ok(())
}

/// An agent pod's status, and its agent's log (and the previous one's, after a restart).
async fn add_agent_pod(
    archive: &mut Archive,
    pods: &Api<Pod>,
    dir: &str,
    pod: &Pod,
) -> anyhow::Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    archive.add(
        &format!("{dir}/{name}.status.json"),
        serde_json::to_string_pretty(&pod.status)?.as_bytes(),
    )?;
    let restarted = pod
        .status
        .iter()
        .flat_map(|status| status.container_statuses.iter().flatten())
        .any(|c| c.name == AGENT_CONTAINER && c.restart_count > 0);
    for previous in [false, true] {
        if previous && !restarted {
            continue;
        }
        let params = LogParams {
            container: Some(AGENT_CONTAINER.to_owned()),
            tail_lines: Some(LOG_LINES),
            previous,
            timestamps: true,
            ..LogParams::default()
        };
        let which = if previous { "previous" } else { "agent" };
        let log = pods.logs(&name, &params).await.map_err(anyhow::Error::from);
        archive.add_found(&format!("{dir}/{name}.{which}.log"), log)?;
    }
    Ok(())
}
