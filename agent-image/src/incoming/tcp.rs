//! TCP connections for a port the agent took over.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use kubedev_protocol::Listener;
use kubedev_protocol::splice::splice;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::http2::{HTTP2_PREFACE_LEN, Opening, PREFACE_DEADLINE};
use super::route::Route;
use super::tls::{Tls, Version};
use super::wiretap::{ByteCopies, splice_copying};
use super::{http1, http2, to_first_workstation_striped};
use crate::stripes::Stripes;
use crate::workstations::{Claimant, Workstations};

/// Hands one connection to the first claimant that takes it, else to the app; wiretaps
/// get copies of it (of its HTTP requests, where any claim has a filter).
pub(super) async fn deliver(
    connection: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    tls: Option<Arc<Tls>>,
    workstations: Arc<Workstations>,
) {
    let _ = connection.set_nodelay(true);
    let (claimants, wiretappers) = workstations.claims(listener.app_port);
    let filtered = claimants.iter().any(|c| c.filter.is_some())
        || wiretappers.iter().any(|w| w.filter.is_some());
    if filtered {
        let route = Route {
            listener,
            claimants,
            wiretappers,
            onward: None,
        };
        if let Some(tls) = tls {
            return serve_tls(connection, peer, route, &tls).await;
        }
        // A client still undecided at the deadline is closed, not handed to the HTTP/1
        // server as a protocol whose server speaks first would want: a filtered port
        // serves nothing but HTTP (the app is reached request by request, so it never
        // greets the client), and every HTTP client speaks first.
        return match http2::opening(&connection).await {
            Opening::Http2 => http2::serve(connection, peer, route).await,
            Opening::Other => http1::serve(connection, peer, route).await,
            Opening::Tls => unreadable_tls(connection, peer, route, &workstations).await,
            Opening::Undecided => tracing::debug!(
                "{peer} -> port {}: no request within {:?}, closed",
                route.listener.app_port,
                http2::PREFACE_DEADLINE
            ),
        };
    }
    let copies = ByteCopies::start(wiretappers, listener.app_port, peer);
    let stripes = workstations.stripes();
    deliver_whole(connection, peer, (&listener, &claimants), copies, stripes).await;
}

/// Hands the whole connection to the first of `claimants` that takes it (striped, among
/// `stripes`), else to the app (none where it is gone: replace); `copies` get the client's
/// bytes.
async fn deliver_whole(
    connection: TcpStream,
    peer: SocketAddr,
    (listener, claimants): (&Listener, &[Claimant]),
    copies: ByteCopies,
    stripes: &Stripes,
) {
    let port = listener.app_port;
    if let Some((stream, _registered)) =
        to_first_workstation_striped(claimants, port, stripes, &peer).await
    {
        tracing::debug!("{peer} -> port {port}: to the workstation");
        return relay(connection, stream, copies).await;
    }
    if !listener.app_running {
        return tracing::debug!("{peer} -> port {port}: no workstation, closed");
    }
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(app) => {
            let _ = app.set_nodelay(true);
            relay(connection, app, copies).await;
        }
        Err(err) => tracing::warn!("{peer} -> the app's port {port}: {err}"),
    }
}

/// A TLS connection on a filtered port whose certificate the agent was not given: its
/// requests cannot be read, so it goes whole to a workstation that takes every request,
/// else to the app, as it would without the session.
async fn unreadable_tls(
    connection: TcpStream,
    peer: SocketAddr,
    route: Route,
    workstations: &Workstations,
) {
    let port = route.listener.app_port;
    tracing::info!(
        "{peer} -> port {port}: TLS, and the filters need the app's certificate \
         (--tls-secret) to read its requests: to the app as it is"
    );
    let takers: Vec<_> = (route.claimants.into_iter())
        .filter(|claimant| claimant.filter.is_none())
        .collect();
    let copies = ByteCopies::start(Vec::new(), port, peer);
    let stripes = workstations.stripes();
    deliver_whole(
        connection,
        peer,
        (&route.listener, &takers),
        copies,
        stripes,
    )
    .await;
}

/// Serves the HTTP version a TLS client chose, once its handshake is done in time; an
/// HTTP/2 client must also send its preface within the deadline, as on a plain port.
async fn serve_tls(connection: TcpStream, peer: SocketAddr, mut route: Route, tls: &Arc<Tls>) {
    let port = route.listener.app_port;
    let accepting = tls.accept(connection, port);
    let (stream, onward) = match tokio::time::timeout(PREFACE_DEADLINE, accepting).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => return tracing::debug!("{peer} -> port {port}: TLS: {err}"),
        Err(_) => return tracing::debug!("{peer} -> port {port}: no TLS handshake in time"),
    };
    let version = onward.version;
    route.onward = Some(onward);
    match version {
        Version::Http1 => http1::serve(stream, peer, route).await,
        Version::Http2 => {
            let (stream, read) = ReadCounted::new(stream);
            tokio::select! {
                () = http2::serve(stream, peer, route) => {}
                () = preface_missed(&read) => {
                    tracing::debug!("{peer} -> port {port}: no HTTP/2 preface in time");
                }
            }
        }
    }
}

/// Completes once the preface deadline passed with less than a preface read.
async fn preface_missed(read: &AtomicUsize) {
    tokio::time::sleep(PREFACE_DEADLINE).await;
    if read.load(Ordering::Relaxed) < HTTP2_PREFACE_LEN {
        return;
    }
    std::future::pending().await
}

/// A stream that counts the bytes read from it.
struct ReadCounted<S> {
    inner: S,
    read: Arc<AtomicUsize>,
}

impl<S> ReadCounted<S> {
    fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        (
            Self {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadCounted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadCounted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Relays `connection` to `upstream`, through the copying relay only where someone
/// wiretaps.
async fn relay<U>(mut connection: TcpStream, mut upstream: U, copies: ByteCopies)
where
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    if copies.is_empty() {
        let _ = splice(&mut connection, &mut upstream).await;
    } else {
        splice_copying(connection, upstream, copies).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kubedev_protocol::mux::{self, Mode};
    use kubedev_protocol::{HttpFilter, Transport};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_a_byte_and_stalls_is_closed_at_the_preface_deadline() {
        // A workstation that takes only some HTTP requests: the port is served as HTTP.
        let (near, _far) = tokio::io::duplex(1024);
        let workstations = Arc::new(Workstations::default());
        let id = workstations.add(mux::spawn(near, Mode::Server).0);
        workstations.claim(id, 8080, Some(HttpFilter::default()), None);
        let taken_over = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = taken_over.local_addr().expect("address");
        let mut client = TcpStream::connect(address).await.expect("connect");
        let (connection, peer) = taken_over.accept().await.expect("accept");
        let listener = Listener {
            port: address.port(),
            app_port: 8080,
            app_running: true,
            transport: Transport::Tcp,
            tls: false,
        };

        client.write_all(b"P").await.expect("one byte");
        let started = Instant::now();
        tokio::spawn(deliver(connection, peer, listener, None, workstations));
        let mut byte = [0u8; 1];
        let early = PREFACE_DEADLINE - Duration::from_secs(1);
        let read = tokio::time::timeout(early, client.read(&mut byte)).await;
        assert!(read.is_err(), "closed before the deadline: {read:?}");
        let read = tokio::time::timeout(PREFACE_DEADLINE, client.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        assert!(started.elapsed() >= PREFACE_DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_client_in_tls_must_send_its_preface_in_time() {
        let silent = AtomicUsize::new(0);
        let waited = tokio::time::timeout(PREFACE_DEADLINE * 2, preface_missed(&silent)).await;
        assert!(waited.is_ok(), "a client that sent nothing is given up");
        let greeted = AtomicUsize::new(HTTP2_PREFACE_LEN);
        let waited = tokio::time::timeout(PREFACE_DEADLINE * 2, preface_missed(&greeted)).await;
        assert!(waited.is_err(), "one that sent its preface is served on");
    }
}
