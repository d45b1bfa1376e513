//! HTTP/1.1 on a filtered port: the agent serves the client's connection and sends each
//! request where [`Route::choose`] says, over a connection of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use kubedev_protocol::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::route::{ResponseBody, Route, error_response};
use super::tls::Peer;
use super::to_first_workstation;
use super::wiretap::TeeBody;

/// How long a client may take to send a request's head, the first and each one after on
/// a kept-alive connection (so also how long such a connection may idle between them): a
/// client that stalls mid-headers holds a task and a socket no longer. hyper's own
/// default, and as long as tunneld's proxy gives; a real client sends a head at once.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1.1 on `connection`, routing every request.
pub(crate) async fn serve<C>(connection: C, peer: SocketAddr, route: Route)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let route = Arc::new(route);
    let service = hyper::service::service_fn(move |request| {
        let route = route.clone();
        async move { Ok::<_, Infallible>(forward(&route, request).await) }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        // A client that sends its requests and then closes its sending side still gets
        // every answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(connection), service)
        .await
    {
        tracing::debug!("http from {peer}: {err}");
    }
}

async fn forward(route: &Route, request: Request<Incoming>) -> Response<ResponseBody> {
    let port = route.listener.app_port;
    let request = TeeBody::copy_request(request, &route.wiretappers, port);
    if let Some(index) = route.choose(&request) {
        let claimant = std::slice::from_ref(&route.claimants[index]);
        let what = request.uri().clone();
        // The workstation gone, refusing, or not speaking TLS, the app answers instead.
        if let Some(stream) = to_first_workstation(claimant, port, Transport::Tcp, &what).await {
            match route.onward(stream, Peer::Workstation).await {
                Ok(stream) => return send(stream, request).await,
                Err(err) => tracing::warn!("{what} -> port {port}: TLS to the workstation: {err}"),
            }
        }
    }
    if !route.listener.app_running {
        return error_response("no workstation takes this request");
    }
    let app = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(app) => route.onward(app, Peer::App).await,
        Err(err) => Err(err),
    };
    match app {
        Ok(app) => send(app, request).await,
        Err(err) => error_response(&format!("the app's port {port}: {err}")),
    }
}

/// Sends `request` over a new HTTP/1.1 connection on `io` and returns the response.
async fn send<S>(io: S, request: Request<TeeBody>) -> Response<ResponseBody>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    };
    match exchange.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(err) => error_response(&err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use kubedev_protocol::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    /// A filtered port's route with no workstation and no app: the agent answers itself.
    fn route() -> Route {
        Route {
            listener: Listener {
                port: 8081,
                app_port: 8080,
                app_running: false,
                transport: Transport::Tcp,
                tls: false,
            },
            claimants: Vec::new(),
            wiretappers: Vec::new(),
            onward: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_mid_headers_is_closed_at_the_header_deadline() {
        let (mut client, served) = tokio::io::duplex(1 << 16);
        let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
        let started = Instant::now();
        tokio::spawn(serve(served, peer, route()));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Half")
            .await
            .expect("send");

        let mut byte = [0u8; 1];
        let early = HEADER_READ_TIMEOUT - Duration::from_secs(1);
        let read = tokio::time::timeout(early, client.read(&mut byte)).await;
        assert!(read.is_err(), "closed before the deadline: {read:?}");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(HEADER_READ_TIMEOUT, client.read_to_end(&mut rest));
        assert!(matches!(read.await, Ok(Ok(_))), "closed at the deadline");
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_request_is_answered_at_once() {
        let (mut client, served) = tokio::io::duplex(1 << 16);
        let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
        let started = Instant::now();
        tokio::spawn(serve(served, peer, route()));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        assert!(answer.starts_with(b"HTTP/1.1 502"), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
