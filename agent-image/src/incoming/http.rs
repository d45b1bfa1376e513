//! Request-by-request routing for ports a workstation claimed with an HTTP filter: each
//! request goes to the workstation whose filter it matches, else to a workstation that
//! takes everything, else to the app. One client connection can so carry requests for
//! several places. HTTP/1.1 is served here; HTTP/2 (h2c, gRPC) in [`super::http2`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kubedev_protocol::{HttpFilter, Listener, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::to_first_workstation;
use super::wiretap::TeeBody;
use crate::workstations::{Claimant, Wiretapper};

pub(super) type Body = BoxBody<Bytes, hyper::Error>;

/// A filtered port's claimants and wiretaps, and where requests no one takes go.
pub(crate) struct Route {
    pub(crate) listener: Listener,
    pub(crate) claimants: Vec<Claimant>,
    pub(crate) wiretappers: Vec<Wiretapper>,
}

/// Serves HTTP/1.1 on `connection`, routing every request.
pub(crate) async fn serve_http1<C>(connection: C, peer: SocketAddr, route: Route)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let route = Arc::new(route);
    let service = hyper::service::service_fn(move |request| {
        let route = route.clone();
        async move { route.forward(request).await }
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

impl Route {
    /// The claimant that takes `request`: the first whose filter it matches, else the
    /// first that takes every request.
    pub(super) fn choose<B>(&self, request: &Request<B>) -> Option<usize> {
        let claimants = &self.claimants;
        claimants
            .iter()
            .position(|c| c.filter.as_ref().is_some_and(|f| matches(f, request)))
            .or_else(|| claimants.iter().position(|c| c.filter.is_none()))
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let port = self.listener.app_port;
        let request = TeeBody::copy_request(request, &self.wiretappers, port);
        if let Some(index) = self.choose(&request) {
            let claimant = std::slice::from_ref(&self.claimants[index]);
            let what = request.uri();
            // The workstation gone or refusing, the app answers instead.
            if let Some(stream) = to_first_workstation(claimant, port, Transport::Tcp, what).await {
                return Ok(send(stream, request).await);
            }
        }
        if !self.listener.app_running {
            return Ok(error_response("no workstation takes this request"));
        }
        Ok(match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(app) => send(app, request).await,
            Err(err) => error_response(&format!("the app's port {port}: {err}")),
        })
    }
}

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

/// Whether `request` is one `filter` asks for.
pub(super) fn matches<B>(filter: &HttpFilter, request: &Request<B>) -> bool {
    let path_ok = filter
        .path_prefix
        .as_ref()
        .is_none_or(|prefix| request.uri().path().starts_with(prefix.as_str()));
    path_ok
        && filter.headers.iter().all(|(name, value)| {
            request
                .headers()
                .get_all(name.as_str())
                .iter()
                .any(|present| present.as_bytes() == value.as_bytes())
        })
}

/// Sends `request` over a new HTTP/1.1 connection on `io` and returns the response.
async fn send<S>(io: S, request: Request<TeeBody>) -> Response<Body>
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

pub(super) fn error_response(reason: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("kubedev agent: {reason}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn a_filter_takes_requests_with_all_its_headers_under_its_path() {
        let filter = HttpFilter {
            headers: vec![("X-Dev".into(), "alice".into())],
            path_prefix: Some("/api/".into()),
        };
        assert!(matches(
            &filter,
            &request("/api/cart", &[("x-dev", "alice")])
        ));
        assert!(!matches(
            &filter,
            &request("/api/cart", &[("x-dev", "bob")])
        ));
        assert!(!matches(&filter, &request("/api/cart", &[])));
        assert!(!matches(
            &filter,
            &request("/static/a.css", &[("x-dev", "alice")])
        ));
        // Any of a repeated header's values will do.
        assert!(matches(
            &filter,
            &request("/api/", &[("x-dev", "bob"), ("x-dev", "alice")])
        ));
    }

    #[test]
    fn an_empty_filter_takes_everything() {
        assert!(matches(&HttpFilter::default(), &request("/", &[])));
    }
}
