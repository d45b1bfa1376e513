//! Request-by-request routing for ports a workstation claimed with an HTTP filter: each
//! request goes to the workstation whose filter it matches, else to a workstation that
//! takes everything, else to the app. One client connection can so carry requests for
//! several places. What the HTTP/1.1 and HTTP/2 servers (`http1`, `http2`) and the
//! request copies of wiretaps share is here: the choice, the filter, and the answers the
//! agent gives itself.

use std::io;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use kubedev_protocol::{HttpFilter, Listener};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::tls::{Onward, Peer};
use crate::workstations::{Claimant, Wiretapper};

/// The body of a response sent back to the client, from upstream or from the agent.
pub(super) type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// A filtered port's claimants and wiretaps, and where requests no one takes go.
pub(crate) struct Route {
    pub(crate) listener: Listener,
    pub(crate) claimants: Vec<Claimant>,
    pub(crate) wiretappers: Vec<Wiretapper>,
    /// How the client spoke TLS, for the connections onward (none: plain HTTP).
    pub(crate) onward: Option<Onward>,
}

impl Route {
    /// `io` to `peer`, in TLS where the client spoke it.
    pub(super) async fn onward<S>(&self, io: S, peer: Peer) -> io::Result<Either<S, TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        super::tls::onward(self.onward.as_ref(), io, peer).await
    }

    /// The claimant that takes `request`: the first whose filter it matches, else the
    /// first that takes every request.
    pub(super) fn choose<B>(&self, request: &Request<B>) -> Option<usize> {
        let claimants = &self.claimants;
        claimants
            .iter()
            .position(|c| c.filter.as_ref().is_some_and(|f| matches(f, request)))
            .or_else(|| claimants.iter().position(|c| c.filter.is_none()))
    }
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

/// The agent's own answer when a request reaches no one: a 502 saying why.
pub(super) fn error_response(reason: &str) -> Response<ResponseBody> {
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
