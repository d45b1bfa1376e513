//! Connecting to this user's tunneld, and to nothing else: the plugins send it the
//! sessions' tokens and run `-- CMD` with the environment it answers, so whatever serves
//! the control channel must be this user's own tunneld. On Unix the channel is a Unix
//! socket whose peer's user the kernel reports ([`unix`]); on Windows it is a loopback TCP
//! connection on which both sides prove they read the same secret file of the user's own
//! ([`windows`]).

#[cfg(unix)]
mod unix;
#[cfg(windows)]
pub(super) mod windows;

#[cfg(unix)]
pub(in crate::tunneld) use unix::connect;
#[cfg(windows)]
pub(in crate::tunneld) use windows::connect;

/// A connection to tunneld's control channel.
#[cfg(unix)]
pub type ControlStream = tokio::net::UnixStream;
/// A connection to tunneld's control channel.
#[cfg(windows)]
pub type ControlStream = tokio::net::TcpStream;

/// The writing half of a [`ControlStream`]; dropping it closes the stream's sending side,
/// which is what ends a hold whose plugin dropped it.
#[cfg(unix)]
pub type ControlWriter = tokio::net::unix::OwnedWriteHalf;
/// The writing half of a [`ControlStream`]; dropping it closes the stream's sending side,
/// which is what ends a hold whose plugin dropped it.
#[cfg(windows)]
pub type ControlWriter = tokio::net::tcp::OwnedWriteHalf;
