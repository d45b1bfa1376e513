//! tunneld's side of the network helper: finding it (a root-owned socket in a directory only
//! root may change, answered by a root process), asking it for the machine's device, and
//! routing into that device through it. The connection is held while the network is up:
//! closing it, however tunneld exits, has the helper undo what it did.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kubedev::cidr::Cidr;
use kubedev::fd_passing;
use kubedev_protocol::codec::{read_message, write_message};
use tokio::net::UnixStream;

use super::wire::{HelperReply, HelperRequest};
use crate::network::machine_routes::MachineRoute;
use crate::network::pointing::Pointed;
use crate::network::tun_routes::TunRoutes;
use crate::network::{Network, Routed};

/// The machine's device, from the helper.
#[derive(Debug)]
pub(crate) struct HelperDevice {
    pub(crate) network: Network,
    pub(crate) routes: HelperRoutes,
    pub(crate) resolver: Pointed,
    /// The nameserver the machine's resolver named before.
    pub(crate) upstream: Option<std::net::SocketAddr>,
}

/// The device's routes, set through the helper.
#[derive(Debug)]
pub(crate) struct HelperRoutes {
    socket: PathBuf,
    stream: UnixStream,
    /// Reads the machine's routes (which needs no privilege).
    reading: TunRoutes,
    added: Vec<Cidr>,
}

/// Asks the helper listening on `socket` for the machine's device, with the resolver
/// sending `domain` and `search` to it. `None` where no helper listens there.
pub(crate) async fn open(
    socket: &Path,
    domain: &str,
    search: &[String],
) -> anyhow::Result<Option<HelperDevice>> {
    if !root_listens_on(socket)? {
        return Ok(None);
    }
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect to the network helper at {}", socket.display()))?;
    let peer = stream.peer_cred().context("the network helper's user")?;
    if peer.uid() != 0 {
        anyhow::bail!(
            "{} is answered by uid {}, not root: not using it",
            socket.display(),
            peer.uid()
        );
    }
    let request = HelperRequest::Open {
        domain: domain.to_owned(),
        search: search.to_vec(),
    };
    write_message(&mut stream, &request).await?;
    let (device, resolver, upstream) = match read_message(&mut stream).await? {
        HelperReply::Opened {
            device,
            resolver,
            upstream,
        } => (device, resolver, upstream),
        HelperReply::Refused { reason } => {
            anyhow::bail!(
                "the network helper at {} refused: {reason}",
                socket.display()
            )
        }
        HelperReply::Routed { .. } => anyhow::bail!("the network helper answered out of turn"),
    };
    let mut byte = [0u8; 1];
    let (_, mut files) = fd_passing::receive_on(&stream, &mut byte).await?;
    let tun = match (files.pop(), files.is_empty()) {
        (Some(tun), true) => tun,
        _ => anyhow::bail!("the network helper sent no device, or more than one"),
    };
    let network = Network::from_fd(tun, device.clone(), Routed::ClusterOnly)?;
    let reading = TunRoutes::new(&device).await?;
    tracing::info!("the network helper at {} opened {device}", socket.display());
    Ok(Some(HelperDevice {
        network,
        routes: HelperRoutes {
            socket: socket.to_owned(),
            stream,
            reading,
            added: Vec::new(),
        },
        resolver,
        upstream,
    }))
}

/// Whether `socket` is a socket root made, where only root could have put it; `false`
/// where there is none.
fn root_listens_on(socket: &Path) -> anyhow::Result<bool> {
    let found = match std::fs::symlink_metadata(socket) {
        Ok(found) => found,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err).with_context(|| format!("look at {}", socket.display())),
    };
    if !found.file_type().is_socket() || found.uid() != 0 {
        anyhow::bail!(
            "{} is not a socket of root's (owner uid {}): not using it as the network helper",
            socket.display(),
            found.uid()
        );
    }
    let dir = socket
        .parent()
        .context("the network helper's socket names no directory")?;
    super::only_root_may_change(dir)?;
    Ok(true)
}

impl HelperRoutes {
    /// The machine's own routes, without the device's.
    pub(crate) async fn machine_routes(&self) -> anyhow::Result<Vec<MachineRoute>> {
        self.reading.machine_routes().await
    }

    /// Makes the device's routes exactly `wanted`; returns those refused, with why.
    pub(crate) async fn set(&mut self, wanted: &[Cidr]) -> Vec<(Cidr, String)> {
        match self.exchange(wanted).await {
            Ok(HelperReply::Routed { added, refused }) => {
                self.added = added;
                refused
            }
            Ok(HelperReply::Refused { reason }) => refuse_all(wanted, &reason),
            Ok(HelperReply::Opened { .. }) => refuse_all(wanted, "answered out of turn"),
            Err(err) => refuse_all(wanted, &format!("{err:#}")),
        }
    }

    pub(crate) fn added(&self) -> Vec<Cidr> {
        self.added.clone()
    }

    async fn exchange(&mut self, wanted: &[Cidr]) -> anyhow::Result<HelperReply> {
        let request = HelperRequest::Route {
            routes: wanted.to_vec(),
        };
        write_message(&mut self.stream, &request).await?;
        read_message(&mut self.stream)
            .await
            .with_context(|| format!("the network helper at {}", self.socket.display()))
    }
}

fn refuse_all(wanted: &[Cidr], reason: &str) -> Vec<(Cidr, String)> {
    let reason = format!("the network helper: {reason}");
    wanted
        .iter()
        .map(|route| (*route, reason.clone()))
        .collect()
}
