//! HTTP/2 (h2c, and so gRPC) on a filtered port: the agent serves HTTP/2 to the client,
//! and each stream goes where [`Route::choose`] says. Streams
//! for one destination share one HTTP/2 connection to it per client connection, opened
//! when first needed and again after it closes; request and response bodies, trailers
//! included, flow through as they come, so streaming calls stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kubedev_protocol::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::route::{ResponseBody, Route, error_response};
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

/// What an HTTP/2 client sends first, without upgrading from HTTP/1.1 (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether the client on `connection` opens with the HTTP/2 preface (looked at, not read).
pub(super) async fn speaks_http2(connection: &TcpStream) -> bool {
    let mut start = [0u8; HTTP2_PREFACE.len()];
    let mut seen = 0;
    // The preface may arrive in pieces; stop as soon as it cannot be one.
    while seen < start.len() {
        match connection.peek(&mut start).await {
            Ok(0) | Err(_) => return false,
            Ok(read) if start[..read] != HTTP2_PREFACE[..read] => return false,
            // Peeking again returns at once: wait a little for the rest.
            Ok(read) if read == seen => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Ok(read) => seen = read,
        }
    }
    true
}

/// Serves HTTP/2 on `connection`, routing every stream.
pub(super) async fn serve(connection: TcpStream, peer: SocketAddr, route: Route) {
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
                    to_first_workstation(claimant, port, Transport::Tcp, &what)
                        .await
                        .ok_or_else(|| "the workstation did not take it".to_owned())
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
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|err| format!("the app's port {port}: {err}"))
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
