//! HTTP/1.1 on a filtered port: the agent serves the client's connection and sends each
//! request where [`Route::choose`] says, over a connection of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubedev_protocol::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::route::{ResponseBody, Route, error_response};
use super::to_first_workstation;
use super::wiretap::TeeBody;

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
        let what = request.uri();
        // The workstation gone or refusing, the app answers instead.
        if let Some(stream) = to_first_workstation(claimant, port, Transport::Tcp, what).await {
            return send(stream, request).await;
        }
    }
    if !route.listener.app_running {
        return error_response("no workstation takes this request");
    }
    match TcpStream::connect(("127.0.0.1", port)).await {
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
