//! One tunneld's connection to the network helper: who it is (`SO_PEERCRED`), the device
//! opened for it, the routes it asked for and the resolver pointed for it; all of it undone
//! when the connection closes or the helper stops.

use std::collections::HashMap;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use kubedev::cidr::Cidr;
use kubedev::fd_passing;
use kubedev_protocol::codec::{CodecError, read_message, write_message};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::wire::{self, HelperReply, HelperRequest};
use crate::network::create_machine_device;
use crate::network::pointing::{self, PointedResolver, ResolverChoice};
use crate::network::systemd_resolved;
use crate::network::tun_routes::TunRoutes;

/// The most devices one user may hold at once.
const DEVICES_PER_USER: usize = 4;

/// What every connection shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// The users served: uid and name.
    users: Vec<(u32, String)>,
    resolv_conf: PathBuf,
    state_dir: PathBuf,
    /// Devices open, by user.
    devices: Mutex<HashMap<u32, usize>>,
    /// Whether a connection has `resolv_conf` pointed at its device: one at a time, as its
    /// original is kept once.
    resolv_conf_taken: Mutex<bool>,
}

impl Shared {
    pub(super) fn new(users: Vec<(u32, String)>, resolv_conf: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            users,
            resolv_conf,
            state_dir,
            devices: Mutex::new(HashMap::new()),
            resolv_conf_taken: Mutex::new(false),
        }
    }

    /// Counts a device for `uid`, unless it holds the most it may.
    fn take_device(&self, uid: u32) -> Result<(), String> {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let held = devices.entry(uid).or_default();
        if *held >= DEVICES_PER_USER {
            return Err(format!(
                "uid {uid} holds {DEVICES_PER_USER} devices already"
            ));
        }
        *held += 1;
        Ok(())
    }

    fn give_back_device(&self, uid: u32) {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = devices.get_mut(&uid) {
            *held = held.saturating_sub(1);
        }
    }
}

/// A device handed out, and what was done for it.
#[derive(Debug)]
struct Opened {
    routes: TunRoutes,
    /// Undone when dropped.
    resolver: PointedResolver,
}

/// Serves one client until it closes the connection or `stop`; then undoes its routes and
/// resolver.
pub(super) async fn serve(mut stream: UnixStream, shared: Arc<Shared>, stop: CancellationToken) {
    let (uid, pid) = match stream.peer_cred() {
        Ok(peer) => (peer.uid(), peer.pid().unwrap_or_default()),
        Err(err) => return tracing::warn!("refused a client: its user: {err}"),
    };
    if !shared.users.iter().any(|(served, _)| *served == uid) {
        tracing::warn!("refused uid {uid} (pid {pid}): not a user this helper serves");
        let names: Vec<&str> = shared.users.iter().map(|(_, name)| name.as_str()).collect();
        let reason = format!(
            "this network helper serves {} only, not uid {uid}: whoever started it as root can \
             start it again with `--user` for you too",
            names.join(", ")
        );
        let _ = write_message(&mut stream, &HelperReply::Refused { reason }).await;
        return;
    }
    let mut opened: Option<Opened> = None;
    loop {
        let request = tokio::select! {
            request = read_message::<_, HelperRequest>(&mut stream) => request,
            () = stop.cancelled() => break,
        };
        let reply = match request {
            Ok(request) => answer(request, &mut opened, &shared, uid).await,
            Err(CodecError::Closed) => break,
            Err(err) => {
                tracing::warn!("uid {uid} (pid {pid}): {err}");
                break;
            }
        };
        let sent = match reply {
            Answer::Reply(reply) => write_message(&mut stream, &reply).await.map_err(Into::into),
            Answer::Device(reply, device) => send_device(&mut stream, &reply, &device).await,
        };
        if let Err(err) = sent {
            tracing::warn!("uid {uid} (pid {pid}): {err:#}");
            break;
        }
    }
    if let Some(mut opened) = opened {
        opened.routes.clear().await;
        if matches!(opened.resolver, PointedResolver::ResolvConf(_)) {
            drop(opened.resolver);
            *shared
                .resolv_conf_taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = false;
        }
        shared.give_back_device(uid);
        tracing::info!("uid {uid} (pid {pid}): closed; its routes and resolver are undone");
    }
}

enum Answer {
    Reply(HelperReply),
    /// A reply with the device to hand over after it.
    Device(HelperReply, tun::Device),
}

async fn answer(
    request: HelperRequest,
    opened: &mut Option<Opened>,
    shared: &Shared,
    uid: u32,
) -> Answer {
    let refused = |reason: String| Answer::Reply(HelperReply::Refused { reason });
    match (request, opened.as_mut()) {
        (HelperRequest::Open { domain, search }, None) => {
            if let Err(reason) = wire::check_domains(&domain, &search) {
                return refused(reason);
            }
            if let Err(reason) = shared.take_device(uid) {
                return refused(reason);
            }
            match open(shared, &domain, &search).await {
                Ok((done, reply, device)) => {
                    if let HelperReply::Opened {
                        device, resolver, ..
                    } = &reply
                    {
                        tracing::info!("uid {uid}: opened {device}, resolver {resolver}");
                    }
                    *opened = Some(done);
                    Answer::Device(reply, device)
                }
                Err(err) => {
                    shared.give_back_device(uid);
                    refused(format!("{err:#}"))
                }
            }
        }
        (HelperRequest::Open { .. }, Some(_)) => refused("this connection has its device".into()),
        (HelperRequest::Route { routes }, Some(done)) => {
            Answer::Reply(route(&mut done.routes, &routes, uid).await)
        }
        (HelperRequest::Route { .. }, None) => refused("no device is open to route into".into()),
    }
}

/// Creates the device and points the resolver at it.
async fn open(
    shared: &Shared,
    domain: &str,
    search: &[String],
) -> anyhow::Result<(Opened, HelperReply, tun::Device)> {
    let (device, name) = create_machine_device()?;
    let routes = TunRoutes::new(&name).await?;
    let (resolver, upstream) = point_resolver(shared, &name, domain, search)?;
    let reply = HelperReply::Opened {
        device: name,
        resolver: resolver.described(),
        upstream,
    };
    Ok((Opened { routes, resolver }, reply, device))
}

fn point_resolver(
    shared: &Shared,
    device: &str,
    domain: &str,
    search: &[String],
) -> anyhow::Result<(PointedResolver, Option<std::net::SocketAddr>)> {
    let mut taken = shared
        .resolv_conf_taken
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if *taken && !systemd_resolved::manages(&shared.resolv_conf) {
        let reason = format!(
            "{} already sends cluster names to another kubedev network",
            shared.resolv_conf.display()
        );
        return Ok((PointedResolver::Unchanged(reason), None));
    }
    let pointed = pointing::point(ResolverChoice {
        resolv_conf: &shared.resolv_conf,
        state_dir: &shared.state_dir,
        device,
        domain,
        search,
    })?;
    if matches!(pointed.0, PointedResolver::ResolvConf(_)) {
        *taken = true;
    }
    Ok(pointed)
}

/// Makes the device's routes `wanted`, less those no user may route.
async fn route(routes: &mut TunRoutes, wanted: &[Cidr], uid: u32) -> HelperReply {
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for route in wanted.iter().map(Cidr::trunc) {
        match wire::check_route(&route) {
            Ok(()) => allowed.push(route),
            Err(reason) => refused.push((route, reason)),
        }
    }
    refused.extend(routes.set(&allowed).await);
    tracing::info!(
        "uid {uid}: routes {:?}, refused {refused:?}",
        routes.added()
    );
    HelperReply::Routed {
        added: routes.added(),
        refused,
    }
}

/// Sends `reply`, then the device attached to one byte. The helper's own copy closes
/// after, so the device (and every route into it) lives exactly as long as its tunneld's.
async fn send_device(
    stream: &mut UnixStream,
    reply: &HelperReply,
    device: &tun::Device,
) -> anyhow::Result<()> {
    write_message(stream, reply).await?;
    fd_passing::send_on(stream, b"T", &[device.as_raw_fd()]).await?;
    Ok(())
}
