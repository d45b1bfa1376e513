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
use nix::unistd::{Uid, User};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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
    /// Cancelled once the connection to the helper is gone (the helper stopped, or the
    /// routes were dropped): the helper has undone the routes and the resolver.
    pub(crate) gone: CancellationToken,
}

/// A request for the device's routes, and where its answer goes.
type RouteRequest = (Vec<Cidr>, oneshot::Sender<anyhow::Result<HelperReply>>);

/// The device's routes, set through the helper; dropping them closes the connection.
#[derive(Debug)]
pub(crate) struct HelperRoutes {
    requests_tx: mpsc::Sender<RouteRequest>,
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
    let mut stream = connect_to_root(socket).await?;
    let request = HelperRequest::Open {
        domain: domain.to_owned(),
        search: search.to_vec(),
    };
    // A helper that refuses this user says why and closes without reading the request.
    let sent = write_message(&mut stream, &request).await;
    let reply = match (read_message(&mut stream).await, sent) {
        (Ok(reply), _) => reply,
        (Err(_), Err(err)) | (Err(err), Ok(())) => {
            return Err(err).with_context(|| format!("the network helper at {}", socket.display()));
        }
    };
    let (device, resolver, upstream) = match reply {
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
    let (requests_tx, requests_rx) = mpsc::channel(1);
    let gone = CancellationToken::new();
    tokio::spawn(keep_connection(
        socket.to_owned(),
        stream,
        requests_rx,
        gone.clone(),
    ));
    Ok(Some(HelperDevice {
        network,
        routes: HelperRoutes {
            requests_tx,
            reading,
            added: Vec::new(),
        },
        resolver,
        upstream,
        gone,
    }))
}

/// Connects to the helper at `socket`, refusing one not run by root.
async fn connect_to_root(socket: &Path) -> anyhow::Result<UnixStream> {
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => anyhow::bail!(
            "no network helper answers at {} (its socket is left from a run that ended): \
             start it again as root: `{}`",
            socket.display(),
            start_command()
        ),
        Err(err) => {
            return Err(err)
                .with_context(|| format!("connect to the network helper at {}", socket.display()));
        }
    };
    let peer = stream.peer_cred().context("the network helper's user")?;
    if peer.uid() != 0 {
        anyhow::bail!(
            "{} is answered by uid {}, not root: not using it",
            socket.display(),
            peer.uid()
        );
    }
    Ok(stream)
}

/// Carries route requests to the helper until the routes are dropped or the helper closes
/// the connection; then cancels `gone`.
async fn keep_connection(
    socket: PathBuf,
    mut stream: UnixStream,
    mut requests_rx: mpsc::Receiver<RouteRequest>,
    gone: CancellationToken,
) {
    let mut unasked = [0u8; 1];
    loop {
        tokio::select! {
            request = requests_rx.recv() => {
                let Some((routes, reply_tx)) = request else {
                    break;
                };
                let reply = exchange(&mut stream, routes).await.with_context(|| {
                    format!("the network helper at {}", socket.display())
                });
                let failed = reply.is_err();
                let _ = reply_tx.send(reply);
                if failed {
                    break;
                }
            }
            // The helper sends nothing unasked: anything readable is its end.
            _ = stream.read(&mut unasked) => {
                tracing::warn!(
                    "the network helper at {} closed the connection: it undid the routes and \
                     the resolver",
                    socket.display()
                );
                break;
            }
        }
    }
    gone.cancel();
}

async fn exchange(stream: &mut UnixStream, routes: Vec<Cidr>) -> anyhow::Result<HelperReply> {
    write_message(stream, &HelperRequest::Route { routes }).await?;
    Ok(read_message(stream).await?)
}

/// The command that starts the helper for this user, with this tunneld.
pub(crate) fn start_command() -> String {
    let tunneld = std::env::current_exe()
        .map_or_else(|_| "tunneld".to_owned(), |exe| exe.display().to_string());
    // Root through sudo means the user who ran sudo.
    let sudo_user = std::env::var("SUDO_USER")
        .ok()
        .filter(|_| Uid::current().is_root());
    let user = sudo_user.unwrap_or_else(|| {
        User::from_uid(Uid::current())
            .ok()
            .flatten()
            .map_or_else(|| Uid::current().to_string(), |user| user.name)
    });
    format!("sudo {tunneld} network-helper --user {user}")
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
    // Nor may anyone else swap a directory above it: root's, and shared ones (/tmp) only
    // with the sticky bit, under which no one moves what is not theirs.
    for above in dir.ancestors().skip(1) {
        let found =
            std::fs::metadata(above).with_context(|| format!("look at {}", above.display()))?;
        let sticky = found.mode() & 0o1000 != 0;
        if found.uid() != 0 || (found.mode() & 0o022 != 0 && !sticky) {
            anyhow::bail!(
                "{} may be changed by someone other than root: not using {} as the network \
                 helper",
                above.display(),
                socket.display()
            );
        }
    }
    Ok(true)
}

impl HelperRoutes {
    /// The machine's own routes, without the device's.
    pub(crate) async fn machine_routes(&self) -> anyhow::Result<Vec<MachineRoute>> {
        self.reading.machine_routes().await
    }

    /// Makes the device's routes exactly `wanted`; returns those refused, with why.
    pub(crate) async fn set(&mut self, wanted: &[Cidr]) -> Vec<(Cidr, String)> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let asked = self.requests_tx.send((wanted.to_vec(), reply_tx)).await;
        let reply = match (asked, reply_rx.await) {
            (Ok(()), Ok(reply)) => reply,
            _ => Err(anyhow::anyhow!(
                "the connection to the network helper is gone"
            )),
        };
        match reply {
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
}

fn refuse_all(wanted: &[Cidr], reason: &str) -> Vec<(Cidr, String)> {
    let reason = format!("the network helper: {reason}");
    wanted
        .iter()
        .map(|route| (*route, reason.clone()))
        .collect()
}
