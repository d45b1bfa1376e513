//! Sockets made inside the network namespace a session's command runs in (see
//! [`kubedev::control::ControlRequest::ServeCommandNetwork`]), so that tunneld delivers
//! incoming connections to the command's own localhost. A socket belongs to the network
//! namespace it was made in, wherever it is used from.
//!
//! No thread of tunneld can enter that namespace: joining a network namespace needs
//! CAP_SYS_ADMIN in the caller's own user namespace too, which a user's tunneld lacks, and
//! a multi-threaded process cannot join a user namespace. So a helper process does: tunneld
//! itself, started with [`HELPER_ARG`], single-threaded, joins the command's user namespace
//! (its owner may) and then its network namespace, and makes sockets there on request,
//! handing each over on its standard input, a Unix socket to tunneld. It exits when tunneld
//! closes that socket, or is killed with the [`NamespaceSockets`] that started it.

use std::net::SocketAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::process::{ExitCode, Stdio};

use anyhow::Context as _;
use kubedev::fd_passing;
use nix::sched::{CloneFlags, setns};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::net::{TcpSocket, TcpStream, UdpSocket, UnixStream};
use tokio::sync::Mutex;

/// The first argument that makes tunneld the helper.
pub(crate) const HELPER_ARG: &str = "__namespace-sockets";

/// What the helper answers once it joined the namespaces, and for a socket made.
const DONE: [u8; 4] = 0i32.to_le_bytes();

/// A helper in a command's network namespace, making sockets there.
#[derive(Debug)]
pub(crate) struct NamespaceSockets {
    helper: Mutex<UnixStream>,
    _process: tokio::process::Child,
}

impl NamespaceSockets {
    /// Starts a helper in the network namespace `network`, owned by user namespace `user`.
    pub(crate) async fn start(user: &OwnedFd, network: &OwnedFd) -> anyhow::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let process = tokio::process::Command::new("/proc/self/exe")
            .arg(HELPER_ARG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start a helper in the command's network namespace")?;
        let ours = std::os::unix::net::UnixStream::from(ours);
        ours.set_nonblocking(true)?;
        let helper = UnixStream::from_std(ours)?;
        fd_passing::send_on(&helper, b"join", &[user.as_raw_fd(), network.as_raw_fd()]).await?;
        let (answer, _) = answer(&helper).await?;
        if answer != DONE {
            anyhow::bail!(
                "the helper could not join the command's network namespace: {}",
                errno_of(answer)
            );
        }
        Ok(Self {
            helper: Mutex::new(helper),
            _process: process,
        })
    }

    /// A TCP connection to `target`, from inside the namespace.
    pub(crate) async fn connect_tcp(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = self.socket(SocketKind::Tcp, target).await?;
        TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
            .connect(target)
            .await
    }

    /// A UDP socket connected to `target`, inside the namespace.
    pub(crate) async fn connect_udp(&self, target: SocketAddr) -> std::io::Result<UdpSocket> {
        let socket = self.socket(SocketKind::Udp, target).await?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        socket.connect(target).await?;
        Ok(socket)
    }

    async fn socket(&self, kind: SocketKind, target: SocketAddr) -> std::io::Result<OwnedFd> {
        let request = [kind as u8, u8::from(target.is_ipv6())];
        let helper = self.helper.lock().await;
        fd_passing::send_on(&helper, &request, &[]).await?;
        let (answer, files) = answer(&helper).await?;
        match files.into_iter().next() {
            Some(socket) if answer == DONE => Ok(socket),
            _ if answer == DONE => Err(std::io::Error::other("the helper sent no socket")),
            _ => Err(std::io::Error::from_raw_os_error(errno_of(answer))),
        }
    }
}

/// What a socket is for.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum SocketKind {
    Tcp = b't',
    Udp = b'u',
}

/// Reads the helper's answer: an errno (0: done) and the files with it.
async fn answer(helper: &UnixStream) -> std::io::Result<([u8; 4], Vec<OwnedFd>)> {
    let mut answer = [0u8; 4];
    let (len, files) = fd_passing::receive_on(helper, &mut answer).await?;
    if len != answer.len() {
        return Err(std::io::Error::other("the namespace's helper exited"));
    }
    Ok((answer, files))
}

fn errno_of(answer: [u8; 4]) -> i32 {
    i32::from_le_bytes(answer)
}

/// Runs the helper if this process was started as one (before any thread is started:
/// a process with threads cannot join a user namespace).
pub(crate) fn serve_if_asked() -> Option<ExitCode> {
    if std::env::args_os()
        .nth(1)
        .is_none_or(|arg| arg != HELPER_ARG)
    {
        return None;
    }
    let tunneld = std::io::stdin();
    Some(match serve(tunneld.as_fd()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("namespace helper: {err}");
            ExitCode::FAILURE
        }
    })
}

/// Joins the namespaces tunneld sends first, then makes a socket for each request.
fn serve(tunneld: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    let mut request = [0u8; 8];
    let (_, files) = fd_passing::receive(tunneld, &mut request)?;
    let joined = match <[OwnedFd; 2]>::try_from(files) {
        Ok([user, network]) => setns(&user, CloneFlags::CLONE_NEWUSER)
            .and_then(|()| setns(&network, CloneFlags::CLONE_NEWNET))
            .map_err(std::io::Error::from),
        Err(_) => Err(std::io::Error::other("expected the two namespaces")),
    };
    reply(tunneld, joined.map(|()| None))?;
    loop {
        let (len, _) = fd_passing::receive(tunneld, &mut request)?;
        let made = match request[..len] {
            [] => return Ok(()),
            [kind, ipv6] => make_socket(kind, ipv6 != 0).map(Some),
            _ => Err(std::io::Error::other("unknown request")),
        };
        reply(tunneld, made)?;
    }
}

fn make_socket(kind: u8, ipv6: bool) -> std::io::Result<OwnedFd> {
    let family = if ipv6 {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let socket_type = match kind {
        b't' => SocketType::STREAM,
        b'u' => SocketType::DGRAM,
        _ => return Err(std::io::Error::other("unknown socket kind")),
    };
    // Non-blocking, as the async runtime that receives it needs.
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    Ok(rustix::net::socket_with(family, socket_type, flags, None)?)
}

fn reply(
    tunneld: std::os::fd::BorrowedFd<'_>,
    result: std::io::Result<Option<OwnedFd>>,
) -> std::io::Result<()> {
    match result {
        Ok(socket) => {
            let files: Vec<_> = socket.iter().map(|socket| socket.as_raw_fd()).collect();
            fd_passing::send(tunneld, &DONE, &files)
        }
        Err(err) => {
            let errno = err.raw_os_error().unwrap_or(nix::errno::Errno::EIO as i32);
            fd_passing::send(tunneld, &errno.to_le_bytes(), &[])
        }
    }
}
