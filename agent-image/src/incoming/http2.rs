//! HTTP/2 (h2c, and so gRPC) on a filtered port: the agent serves HTTP/2 to the client,
//! and each stream goes where [`Route::choose`] says. Streams
//! for one destination share one HTTP/2 connection to it per client connection, opened
//! when first needed and again after it closes; request and response bodies, trailers
//! included, flow through as they come, so streaming calls stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kubedev_protocol::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::route::{ResponseBody, Route, error_response};
use super::tls::Peer;
use super::to_first_workstation;
use super::wiretap::TeeBody;

/// One client connection's routes, and its connections onward.
struct Streams {
    route: Route,
    /// To the app, on localhost.
    app: Upstream,
    /// To each claimant's workstation, in the order of `route.claimants`.
    workstations: Vec<Upstream>,
}

/// An HTTP/2 connection to one destination, opened on first use.
#[derive(Default)]
struct Upstream(Mutex<Option<SendRequest<TeeBody>>>);

/// What an HTTP/2 client sends first, without upgrading from HTTP/1.1 (RFC 9113, 3.4):
/// all of it, for once it is read hyper's HTTP/2 handshake is done and its keep-alive
/// pings find a client that went silent.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the preface every HTTP/2 client sends first is.
pub(super) const HTTP2_PREFACE_LEN: usize = HTTP2_PREFACE.len();

/// How long a client has, from being accepted, to show which HTTP it speaks. Every HTTP
/// client speaks first, within a round trip of connecting; 10 s is as long as the agent
/// gives a workstation's handshake, and bounds what a silent client holds.
pub(super) const PREFACE_DEADLINE: Duration = Duration::from_secs(10);

/// How often a client that sent the start of the preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(5);

/// How often a quiet HTTP/2 client is pinged, and how long it has to answer: a client
/// gone without a word (its pod deleted, its node lost) is let go within 40 s. HTTP/2
/// connections live long (gRPC channels), and each holds connections onward.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The content type of a TLS handshake record, a client's first byte in TLS.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Which HTTP a client opened its connection with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// The HTTP/2 preface.
    Http2,
    /// A TLS handshake (its first record): the app terminates TLS, and the agent was not
    /// given its certificate (`--tls-secret`), so it cannot read the requests.
    Tls,
    /// Anything else, for the HTTP/1 server to make sense of.
    Other,
    /// Nothing that tells, by [`PREFACE_DEADLINE`]: nothing at all, or only the start of
    /// the preface.
    Undecided,
}

/// How the client on `connection` opens (looked at, not read).
pub(super) async fn opening(connection: &TcpStream) -> Opening {
    match tokio::time::timeout(PREFACE_DEADLINE, read_opening(connection)).await {
        Ok(opening) => opening,
        Err(_) => Opening::Undecided,
    }
}

async fn read_opening(connection: &TcpStream) -> Opening {
    let mut start = [0u8; HTTP2_PREFACE.len()];
    let mut seen = 0;
    // The preface may arrive in pieces; stop as soon as it cannot be one.
    while seen < start.len() {
        match connection.peek(&mut start).await {
            Ok(0) | Err(_) => return Opening::Other,
            Ok(_) if start[0] == TLS_HANDSHAKE_RECORD => return Opening::Tls,
            Ok(read) if start[..read] != HTTP2_PREFACE[..read] => return Opening::Other,
            // Peeking again returns at once: wait a little for the rest.
            Ok(read) if read == seen => tokio::time::sleep(PREFACE_POLL).await,
            Ok(read) => seen = read,
        }
    }
    Opening::Http2
}

/// Serves HTTP/2 on `connection`, routing every stream.
pub(super) async fn serve<C>(connection: C, peer: SocketAddr, route: Route)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams {
        workstations: route
            .claimants
            .iter()
            .map(|_| Upstream::default())
            .collect(),
        route,
        app: Upstream::default(),
    });
    let service = hyper::service::service_fn(move |request| {
        let streams = streams.clone();
        async move { Ok::<_, Infallible>(streams.forward(request).await) }
    });
    if let Err(err) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(connection), service)
        .await
    {
        tracing::debug!("http/2 from {peer}: {err}");
    }
}

impl Streams {
    async fn forward(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let port = self.route.listener.app_port;
        let request = TeeBody::copy_request(request, &self.route.wiretappers, port);
        if let Some(index) = self.route.choose(&request) {
            let claimant = std::slice::from_ref(&self.route.claimants[index]);
            let what = request.uri().clone();
            let opened = self.workstations[index]
                .sender(|| async {
                    let stream = to_first_workstation(claimant, port, Transport::Tcp, &what)
                        .await
                        .ok_or_else(|| "the workstation did not take it".to_owned())?;
                    (self.route.onward(stream, Peer::Workstation).await)
                        .map_err(|err| format!("TLS to the workstation: {err}"))
                })
                .await;
            // The workstation gone or refusing, the app answers instead.
            match opened {
                Ok(sender) => return send(sender, request).await,
                Err(reason) => tracing::debug!("{what} -> port {port}: {reason}"),
            }
        }
        if !self.route.listener.app_running {
            return error_response("no workstation takes this request");
        }
        let opened = self
            .app
            .sender(|| async {
                let app = TcpStream::connect(("127.0.0.1", port)).await;
                let app = match app {
                    Ok(app) => self.route.onward(app, Peer::App).await,
                    Err(err) => Err(err),
                };
                app.map_err(|err| format!("the app's port {port}: {err}"))
            })
            .await;
        match opened {
            Ok(sender) => send(sender, request).await,
            Err(reason) => error_response(&reason),
        }
    }
}

impl Upstream {
    /// The open connection, or a new one over what `open` connects.
    async fn sender<O, S>(&self, open: impl FnOnce() -> O) -> Result<SendRequest<TeeBody>, String>
    where
        O: Future<Output = Result<S, String>>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Held while connecting, so concurrent streams wait for one connection.
        let mut current = self.0.lock().await;
        if let Some(sender) = current.as_ref().filter(|sender| !sender.is_closed()) {
            return Ok(sender.clone());
        }
        let io = open().await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|err| format!("http/2 handshake: {err}"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("http/2 connection onward: {err}");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }
}

async fn send(
    mut sender: SendRequest<TeeBody>,
    request: Request<TeeBody>,
) -> Response<ResponseBody> {
    let exchange = async {
        sender.ready().await?;
        sender.send_request(request).await
    };
    match exchange.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(err) => error_response(&err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;

    /// A client's connection, and the agent's end of it.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let (served, _) = listener.accept().await.expect("accept");
        (client, served)
    }

    #[tokio::test]
    async fn the_preface_is_told_from_anything_else_even_in_pieces() {
        let (mut client, served) = connected().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
        assert_eq!(opening(&served).await, Opening::Other);

        let (mut client, served) = connected().await;
        client
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .expect("a ClientHello");
        assert_eq!(opening(&served).await, Opening::Tls);

        let (mut client, served) = connected().await;
        let (start, rest) = HTTP2_PREFACE.split_at(7);
        let told = tokio::spawn(async move { opening(&served).await });
        client.write_all(start).await.expect("send");
        tokio::time::sleep(PREFACE_POLL * 4).await;
        client.write_all(rest).await.expect("send");
        assert_eq!(told.await.expect("told"), Opening::Http2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_says_too_little_is_undecided_at_the_deadline() {
        let (mut client, served) = connected().await;
        client.write_all(b"P").await.expect("send");
        let started = Instant::now();
        let told = tokio::time::timeout(PREFACE_DEADLINE * 2, opening(&served)).await;
        assert_eq!(told.ok(), Some(Opening::Undecided));
        assert!(started.elapsed() >= PREFACE_DEADLINE);

        let (_silent, served) = connected().await;
        let told = tokio::time::timeout(PREFACE_DEADLINE * 2, opening(&served)).await;
        assert_eq!(told.ok(), Some(Opening::Undecided));
    }
}
