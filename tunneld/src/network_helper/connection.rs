//! One tunneld's connection to the network helper: who it is (`SO_PEERCRED`), the device
//! opened for it, the routes it asked for and the resolver pointed for it; all of it undone
//! when the connection closes or the helper stops: the resolver restored, the device (and
//! every route into it) deleted, even one its user made persistent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kubedev::cidr::Cidr;
use kubedev::fd_passing;
use kubedev_protocol::codec::{CodecError, read_message, write_message};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::policy::{self, MAX_ROUTES, Machine, Policy};
use super::source_check::StrictSourceCheck;
use super::wire::{HelperReply, HelperRequest};
use crate::network::pointing::{self, PointedResolver, ResolverChoice};
use crate::network::systemd_resolved::{self, UPLINK_RESOLV_CONF};
use crate::network::tun_routes::TunRoutes;
use crate::network::{DNS_IP, create_machine_device};

/// The most connections, and devices, one user may hold at once.
const CONNECTIONS_PER_USER: usize = 8;
const DEVICES_PER_USER: usize = 4;
/// How long a new connection has to ask for its device.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a reply may wait for its reader.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What every connection shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// The users served: uid and name.
    users: Vec<(u32, String)>,
    policy: Policy,
    resolv_conf: PathBuf,
    state_dir: PathBuf,
    /// Connections and devices held, by user.
    held: Mutex<HashMap<u32, (usize, usize)>>,
    /// Whether a connection has `resolv_conf` pointed at its device: one at a time, as its
    /// original is kept once.
    resolv_conf_taken: Mutex<bool>,
    /// The machine's nameservers when the helper started, before any was pointed at a
    /// tunneld: never routed into a device, whoever points the resolver since.
    first_nameservers: Vec<IpAddr>,
    /// Held while a route is checked and added: two users' requests never both pass a
    /// check that only one of them can.
    routing: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(super) fn new(
        users: Vec<(u32, String)>,
        policy: Policy,
        resolv_conf: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        let first_nameservers = nameservers_of(&resolv_conf);
        Self {
            users,
            policy,
            resolv_conf,
            state_dir,
            held: Mutex::new(HashMap::new()),
            resolv_conf_taken: Mutex::new(false),
            first_nameservers,
            routing: tokio::sync::Mutex::new(()),
        }
    }

    /// The nameservers no route may hold: those at the start, and those named now.
    fn nameservers(&self) -> Vec<IpAddr> {
        let mut all = self.first_nameservers.clone();
        all.extend(nameservers_of(&self.resolv_conf));
        all
    }

    /// Counts a connection (`device` false) or a device for `uid`, within its limit.
    fn take(&self, uid: u32, device: bool) -> Result<(), String> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (connections, devices) = held.entry(uid).or_default();
        let (count, limit, what) = match device {
            false => (connections, CONNECTIONS_PER_USER, "connections"),
            true => (devices, DEVICES_PER_USER, "devices"),
        };
        if *count >= limit {
            return Err(format!("uid {uid} holds {limit} {what} already"));
        }
        *count += 1;
        Ok(())
    }

    fn give_back(&self, uid: u32, device: bool) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((connections, devices)) = held.get_mut(&uid) {
            let count = if device { devices } else { connections };
            *count = count.saturating_sub(1);
        }
    }

    fn refusal_for(&self, uid: u32) -> String {
        let names: Vec<&str> = self.users.iter().map(|(_, name)| name.as_str()).collect();
        format!(
            "this network helper serves {} only, not uid {uid}: whoever started it as root can \
             start it again with `--user` for you too",
            names.join(", ")
        )
    }
}

/// A device handed out, and what was done for it.
struct Opened {
    /// The helper's own copy, kept while the connection lasts: the device (and its
    /// index, which the helper acts on) cannot go before the helper lets it.
    device: tun::Device,
    /// Dropped after the device goes.
    source_check: StrictSourceCheck,
    routes: TunRoutes,
    /// Undone when dropped.
    resolver: PointedResolver,
}

/// Serves one client until it closes the connection or `stop`; then undoes what was done
/// for it.
pub(super) async fn serve(mut stream: UnixStream, shared: Arc<Shared>, stop: CancellationToken) {
    let (uid, pid) = match stream.peer_cred() {
        Ok(peer) => (peer.uid(), peer.pid().unwrap_or_default()),
        Err(err) => return tracing::warn!("refused a client: its user: {err}"),
    };
    let refusal = if shared.users.iter().any(|(served, _)| *served == uid) {
        shared.take(uid, false).err()
    } else {
        Some(shared.refusal_for(uid))
    };
    if let Some(reason) = refusal {
        tracing::warn!("refused uid {uid} (pid {pid}): {reason}");
        let refused = HelperReply::Refused { reason };
        let _ = tokio::time::timeout(WRITE_DEADLINE, write_message(&mut stream, &refused)).await;
        return;
    }
    let mut opened: Option<Opened> = None;
    if let Err(why) = exchange_until_closed(&mut stream, &mut opened, &shared, uid, &stop).await {
        tracing::warn!("uid {uid} (pid {pid}): {}", why.escape_debug());
    }
    if let Some(opened) = opened {
        undo(opened, &shared, uid).await;
        tracing::info!("uid {uid} (pid {pid}): closed; its routes and resolver are undone");
    }
    shared.give_back(uid, false);
}

/// Answers requests until the client closes (`Ok`), breaks the protocol, or is too slow,
/// or the helper stops (`Err`, saying which).
async fn exchange_until_closed(
    stream: &mut UnixStream,
    opened: &mut Option<Opened>,
    shared: &Shared,
    uid: u32,
    stop: &CancellationToken,
) -> Result<(), String> {
    let open_by = tokio::time::Instant::now() + OPEN_DEADLINE;
    loop {
        // A device is asked for at once after connecting; once open, the connection is
        // held idle.
        let waiting_for_open = opened.is_none();
        let reading = async {
            let request = read_message::<_, HelperRequest>(stream);
            match waiting_for_open {
                true => tokio::time::timeout_at(open_by, request)
                    .await
                    .map_err(|_| "asked for no device in time".to_owned()),
                false => Ok(request.await),
            }
        };
        let request = tokio::select! {
            request = reading => request?,
            () = stop.cancelled() => return Err("the helper is stopping".into()),
        };
        let reply = match request {
            Ok(request) => answer(request, opened, shared, uid).await,
            Err(CodecError::Closed) => return Ok(()),
            Err(err) => return Err(err.to_string()),
        };
        let sent = async {
            match (reply, opened.as_ref()) {
                (Answer::Device(reply), Some(done)) => {
                    send_device(stream, &reply, &done.device).await
                }
                (Answer::Reply(reply) | Answer::Device(reply), _) => {
                    Ok(write_message(stream, &reply).await?)
                }
            }
        };
        tokio::select! {
            sent = tokio::time::timeout(WRITE_DEADLINE, sent) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(format!("{err:#}")),
                Err(_) => return Err("read no reply in time".into()),
            },
            () = stop.cancelled() => return Err("the helper is stopping".into()),
        }
    }
}

/// Restores the resolver and deletes the device, with its routes.
async fn undo(opened: Opened, shared: &Shared, uid: u32) {
    let Opened {
        device,
        source_check,
        routes,
        resolver,
    } = opened;
    let held_resolv_conf = matches!(resolver, PointedResolver::ResolvConf(_));
    drop(resolver);
    if held_resolv_conf {
        *shared
            .resolv_conf_taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }
    routes.delete_device().await;
    drop(device);
    drop(source_check);
    shared.give_back(uid, true);
}

enum Answer {
    Reply(HelperReply),
    /// A reply with the opened device to hand over after it.
    Device(HelperReply),
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
            if let Err(reason) = shared.policy.check_domains(&domain, &search) {
                return refused(reason);
            }
            if let Err(reason) = shared.take(uid, true) {
                return refused(reason);
            }
            match open(shared, &domain, &search).await {
                Ok((done, reply)) => {
                    if let HelperReply::Opened {
                        device, resolver, ..
                    } = &reply
                    {
                        tracing::info!("uid {uid}: opened {device}, resolver {resolver}");
                    }
                    *opened = Some(done);
                    Answer::Device(reply)
                }
                Err(err) => {
                    shared.give_back(uid, true);
                    refused(format!("{err:#}"))
                }
            }
        }
        (HelperRequest::Open { .. }, Some(_)) => refused("this connection has its device".into()),
        (HelperRequest::Route { routes }, Some(done)) => {
            Answer::Reply(route(done, shared, &routes, uid).await)
        }
        (HelperRequest::Route { .. }, None) => refused("no device is open to route into".into()),
    }
}

/// Creates the device and points the resolver at it.
async fn open(
    shared: &Shared,
    domain: &str,
    search: &[String],
) -> anyhow::Result<(Opened, HelperReply)> {
    let (device, name) = create_machine_device()?;
    let source_check = StrictSourceCheck::enforce(&name)?;
    let routes = TunRoutes::new(&name).await?;
    let (resolver, upstream) =
        point_resolver(shared, (&name, routes.device_index()), domain, search)?;
    let reply = HelperReply::Opened {
        device: name,
        resolver: resolver.described(),
        upstream,
    };
    let opened = Opened {
        device,
        source_check,
        routes,
        resolver,
    };
    Ok((opened, reply))
}

/// The nameservers `resolv_conf` and systemd-resolved's own file name, but tunneld's.
fn nameservers_of(resolv_conf: &std::path::Path) -> Vec<IpAddr> {
    [resolv_conf, UPLINK_RESOLV_CONF.as_ref()]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|conf| policy::nameservers(&conf))
        .filter(|nameserver| *nameserver != IpAddr::V4(DNS_IP))
        .collect()
}

fn point_resolver(
    shared: &Shared,
    (device, device_index): (&str, u32),
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
        device_index,
        domain,
        search,
    })?;
    if matches!(pointed.0, PointedResolver::ResolvConf(_)) {
        *taken = true;
    }
    Ok(pointed)
}

/// Makes the device's routes `wanted`, less those the policy refuses on the machine as it
/// is now, and beyond [`MAX_ROUTES`].
async fn route(opened: &mut Opened, shared: &Shared, wanted: &[Cidr], uid: u32) -> HelperReply {
    let _routing = shared.routing.lock().await;
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    match opened.routes.machine_routes().await {
        Ok(machine_routes) => {
            let nameservers = shared.nameservers();
            let machine = Machine {
                routes: &machine_routes,
                nameservers: &nameservers,
            };
            for route in wanted.iter().map(Cidr::trunc) {
                let checked = match allowed.len() < MAX_ROUTES {
                    true => shared.policy.check_route(&route, &machine),
                    false => Err(format!("at most {MAX_ROUTES} routes")),
                };
                match checked {
                    Ok(()) => allowed.push(route),
                    Err(reason) => refused.push((route, reason)),
                }
            }
        }
        Err(err) => refused.extend(wanted.iter().map(|route| (*route, format!("{err:#}")))),
    }
    refused.extend(opened.routes.set(&allowed).await);
    let added = opened.routes.added();
    tracing::info!(
        "uid {uid}: {} routes, {} refused",
        added.len(),
        refused.len()
    );
    HelperReply::Routed { added, refused }
}

/// Sends `reply`, then the device attached to one byte. The device is deleted when the
/// connection closes.
async fn send_device(
    stream: &mut UnixStream,
    reply: &HelperReply,
    device: &tun::Device,
) -> anyhow::Result<()> {
    write_message(stream, reply).await?;
    fd_passing::send_on(stream, b"T", &[device.as_raw_fd()]).await?;
    Ok(())
}
