//! The proxy's HTTP side: CONNECT tunnels (HTTPS through `HTTPS_PROXY`, `curl -p`) and plain
//! HTTP requests in absolute form (`GET http://web.shop:8080/path`, as clients send them to
//! an HTTP proxy), each forwarded on a connection of its own. Every request carries the
//! proxy's credentials (`Proxy-Authorization: Basic`), or is answered 407.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{Credentials, HANDSHAKE_LIMIT, Target, relay};
use crate::outbound::{Host, Outbound, OutboundTcp};

type Body = BoxBody<Bytes, hyper::Error>;

/// Headers for one hop only: neither the proxy's own nor the client's connection's go on.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
];

/// Serves one HTTP client's requests until it closes.
pub(super) async fn serve(client: TcpStream, credentials: Credentials, outbound: Arc<Outbound>) {
    let service = hyper::service::service_fn(move |request| {
        let credentials = credentials.clone();
        let outbound = outbound.clone();
        async move { Ok::<_, Infallible>(answer(request, &credentials, &outbound).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_LIMIT)
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades()
        .await;
    if let Err(err) = served {
        tracing::debug!("proxy client: {err}");
    }
}

async fn answer(
    request: Request<Incoming>,
    credentials: &Credentials,
    outbound: &Outbound,
) -> Response<Body> {
    if !authorized(request.headers(), credentials) {
        let mut refusal = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "this proxy takes the user kubedev and the password that the status of a kubedev \
             plugin shows (`kubectl intercept status`)\n",
        );
        refusal.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kubedev\""),
        );
        return refusal;
    }
    let target = match target_of(request.method(), request.uri()) {
        Ok(target) => target,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &format!("{reason}\n")),
    };
    let remote = match outbound.tcp_to(&target.host, target.port).await {
        Ok(remote) => remote,
        Err(err) => {
            tracing::debug!("proxy to {target}: {err}");
            return text(StatusCode::BAD_GATEWAY, &format!("{target}: {err}\n"));
        }
    };
    if request.method() == Method::CONNECT {
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => relay(&mut TokioIo::new(upgraded), remote, &target).await,
                Err(err) => tracing::debug!("proxy to {target}: {err}"),
            }
        });
        return Response::new(empty());
    }
    match forward(request, remote, &target).await {
        Ok(response) => response,
        Err(err) => text(StatusCode::BAD_GATEWAY, &format!("{target}: {err}\n")),
    }
}

/// Whether the request carries the proxy's credentials.
fn authorized(headers: &HeaderMap, credentials: &Credentials) -> bool {
    let Some(Ok(value)) = headers
        .get(header::PROXY_AUTHORIZATION)
        .map(HeaderValue::to_str)
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let (username, password) = match decoded.iter().position(|&byte| byte == b':') {
        Some(colon) => (&decoded[..colon], &decoded[colon + 1..]),
        None => return false,
    };
    credentials.accept(username, password)
}

/// Where a request asks to go: CONNECT's `host:port`, or an absolute `http://` URL's.
fn target_of(method: &Method, uri: &Uri) -> Result<Target, String> {
    let Some(authority) = uri.authority() else {
        return Err(
            "this is a proxy: ask it for absolute URLs (http://SERVICE.NAMESPACE:PORT/path) \
             or CONNECT HOST:PORT"
                .into(),
        );
    };
    let port = if *method == Method::CONNECT {
        authority
            .port_u16()
            .ok_or_else(|| format!("CONNECT {authority}: no port"))?
    } else {
        match uri.scheme_str() {
            Some("http") => authority.port_u16().unwrap_or(80),
            _ => {
                return Err(format!(
                    "{uri}: only http:// is forwarded; other schemes go through CONNECT \
                     (HTTPS_PROXY)"
                ));
            }
        }
    };
    Ok(Target {
        host: Host::parse(authority.host()),
        port,
    })
}

/// Sends a plain HTTP request on to `remote`, in origin form, and hands back the answer.
async fn forward(
    request: Request<Incoming>,
    remote: OutboundTcp,
    target: &Target,
) -> Result<Response<Body>, hyper::Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(remote)).await?;
    let described = target.to_string();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("proxy to {described}: {err}");
        }
    });
    let response = sender.send_request(origin_form(request)).await?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// The request as its server takes it: the path alone, `Host` kept (or made from the
/// URL), and none of the proxy's headers.
fn origin_form<B>(request: Request<B>) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    strip_hop_by_hop(&mut parts.headers);
    Request::from_parts(parts, body)
}

/// Removes the headers of one hop, and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(message.to_owned()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            secret: "s3cr3t".into(),
        }
    }

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn only_the_proxys_own_basic_credentials_are_taken() {
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let good = format!("Basic {}", encode("kubedev:s3cr3t"));
        assert!(authorized(&with_authorization(&good), &credentials()));
        let lower = format!("basic {}", encode("kubedev:s3cr3t"));
        assert!(authorized(&with_authorization(&lower), &credentials()));
        for bad in [
            format!("Basic {}", encode("kubedev:guess")),
            format!("Basic {}", encode("admin:s3cr3t")),
            format!("Basic {}", encode("kubedev")),
            format!("Bearer {}", encode("kubedev:s3cr3t")),
            "Basic !!!".to_owned(),
        ] {
            assert!(
                !authorized(&with_authorization(&bad), &credentials()),
                "{bad}"
            );
        }
        assert!(!authorized(&HeaderMap::new(), &credentials()));
    }

    #[test]
    fn connect_and_absolute_http_urls_name_their_target() {
        let target = |method: Method, uri: &str| target_of(&method, &uri.parse().expect("uri"));
        assert_eq!(
            target(Method::CONNECT, "web.shop:443").map(|t| t.to_string()),
            Ok("web.shop:443".into())
        );
        assert_eq!(
            target(Method::GET, "http://web.shop:9000/path?q=1").map(|t| t.to_string()),
            Ok("web.shop:9000".into())
        );
        assert_eq!(
            target(Method::POST, "http://10.96.0.10/").map(|t| t.to_string()),
            Ok("10.96.0.10:80".into())
        );
        assert_eq!(
            target(Method::GET, "http://[fd00::1]:8080/").map(|t| t.host),
            Ok(Host::Address("fd00::1".parse().expect("v6")))
        );
        assert!(target(Method::CONNECT, "web.shop").is_err(), "no port");
        assert!(target(Method::GET, "/path").is_err(), "origin form");
        assert!(target(Method::GET, "https://web.shop/").is_err(), "https");
    }

    #[test]
    fn a_forwarded_request_is_in_origin_form_without_the_proxys_headers() {
        let request = Request::get("http://web.shop:9000/path?q=1")
            .header(header::PROXY_AUTHORIZATION, "Basic a3ViZWRldjpzM2NyM3Q=")
            .header("proxy-connection", "keep-alive")
            .header(header::CONNECTION, "x-private")
            .header("x-private", "hop")
            .header("x-app", "kept")
            .body(())
            .expect("request");
        let forwarded = origin_form(request);
        assert_eq!(forwarded.uri(), "/path?q=1");
        let headers = forwarded.headers();
        assert_eq!(headers[header::HOST], "web.shop:9000");
        assert_eq!(headers["x-app"], "kept");
        for gone in [
            "proxy-authorization",
            "proxy-connection",
            "connection",
            "x-private",
        ] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
    }
}
