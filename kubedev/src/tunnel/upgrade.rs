//! The websocket upgrade of a port-forward request, offering the protocols the caller
//! speaks. kube's `Client::connect` offers only its own channel protocols, so the upgrade
//! is made here with the same client (its authentication, proxy and TLS).

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use kube::client::{Body, UpgradeConnectionError};
use kube::core::{Request, Status};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{PortForwardProtocol, printable};

/// The largest websocket message or frame taken: the API server and the runtime send some
/// 32 KiB at a time, so this bounds what a broken or hostile peer makes a link hold.
const MAX_MESSAGE: usize = 4 << 20;
/// How much of a refusal's body is read, for how long, and how much of its message kept.
const MAX_REFUSAL_BODY: usize = 64 * 1024;
const REFUSAL_READ: Duration = Duration::from_secs(10);
const MAX_REFUSAL_MESSAGE: usize = 1024;

/// The upgraded connection of a port-forward.
pub(super) type Websocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens the port-forward websocket to `port` of `pod`, offering `offered` in that order,
/// and says which of them the API server chose.
pub(super) async fn port_forward(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    offered: &[PortForwardProtocol],
) -> Result<(Websocket, PortForwardProtocol), kube::Error> {
    let request = Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .portforward(pod, &[port])
        .map_err(kube::Error::BuildRequest)?;
    let (mut parts, body) = request.into_parts();
    let key = generate_key();
    let offered_names: Vec<&str> = offered.iter().map(|p| p.subprotocol()).collect();
    let headers = &mut parts.headers;
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(header::SEC_WEBSOCKET_KEY, header_value(&key)?);
    // One header with a comma-separated list: the API server ignores repeated headers.
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header_value(&offered_names.join(", "))?,
    );
    let response = client
        .send(hyper::Request::from_parts(parts, Body::from(body)))
        .await?;
    let response = refused_as_api_error(response).await?;
    let protocol =
        check_upgrade(&response, &key, offered).map_err(kube::Error::UpgradeConnection)?;
    let upgraded = hyper::upgrade::on(response).await.map_err(|err| {
        kube::Error::UpgradeConnection(UpgradeConnectionError::GetPendingUpgrade(err))
    })?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let websocket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(config)).await;
    Ok((websocket, protocol))
}

fn header_value(text: &str) -> Result<HeaderValue, kube::Error> {
    HeaderValue::from_str(text).map_err(|err| kube::Error::HttpError(err.into()))
}

/// A refusal (4xx, 5xx) as the API's `Status`, as every other call reports it: a 403
/// names the missing `pods/portforward` permission. Only the start of its body is read, and
/// only for a while: a proxy's endless error page neither fills memory nor holds the link.
async fn refused_as_api_error(
    response: hyper::Response<Body>,
) -> Result<hyper::Response<Body>, kube::Error> {
    let code = response.status();
    if !code.is_client_error() && !code.is_server_error() {
        return Ok(response);
    }
    let mut body = response.into_body();
    let mut kept = Vec::new();
    let reading = async {
        while kept.len() < MAX_REFUSAL_BODY {
            let Some(Ok(frame)) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame.into_data() {
                let room = MAX_REFUSAL_BODY - kept.len();
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    };
    // Whatever has come by then is what there is.
    let _ = tokio::time::timeout(REFUSAL_READ, reading).await;
    let text = String::from_utf8_lossy(&kept);
    let mut status = serde_json::from_str::<Status>(&text).unwrap_or_else(|_| {
        Status::failure(text.trim(), "Failed to parse error data").with_code(code.as_u16())
    });
    status.message = printable(&status.message, MAX_REFUSAL_MESSAGE);
    Err(kube::Error::Api(status.boxed()))
}

/// Checks the response completes the websocket handshake (RFC 6455) with one of the
/// protocols offered, and says which.
fn check_upgrade<B>(
    response: &hyper::Response<B>,
    key: &str,
    offered: &[PortForwardProtocol],
) -> Result<PortForwardProtocol, UpgradeConnectionError> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpgradeConnectionError::ProtocolSwitch(response.status()));
    }
    let headers = response.headers();
    let says = |name: header::HeaderName, expected: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case(expected))
    };
    if !says(header::UPGRADE, "websocket") {
        return Err(UpgradeConnectionError::MissingUpgradeWebSocketHeader);
    }
    if !says(header::CONNECTION, "Upgrade") {
        return Err(UpgradeConnectionError::MissingConnectionUpgradeHeader);
    }
    if headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes)
        != Some(derive_accept_key(key.as_bytes()).as_bytes())
    {
        return Err(UpgradeConnectionError::SecWebSocketAcceptKeyMismatch);
    }
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|name| PortForwardProtocol::from_subprotocol(name.trim()))
        .filter(|chosen| offered.contains(chosen))
        .ok_or(UpgradeConnectionError::SecWebSocketProtocolMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switching(key: &str, protocol: &str) -> hyper::Response<()> {
        hyper::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(key.as_bytes()),
            )
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(())
            .expect("a response")
    }

    #[test]
    fn the_protocol_chosen_is_reported() {
        let key = generate_key();
        let offered = super::super::OFFERED;
        let spdy = switching(&key, "SPDY/3.1+portforward.k8s.io");
        assert_eq!(
            check_upgrade(&spdy, &key, &offered).ok(),
            Some(PortForwardProtocol::SpdyInWebsocket)
        );
        let channels = switching(&key, "v4.channel.k8s.io");
        assert_eq!(
            check_upgrade(&channels, &key, &offered).ok(),
            Some(PortForwardProtocol::Channels)
        );
    }

    #[test]
    fn a_protocol_not_offered_is_refused() {
        let key = generate_key();
        let only_channels = [PortForwardProtocol::Channels];
        let spdy = switching(&key, "SPDY/3.1+portforward.k8s.io");
        assert!(matches!(
            check_upgrade(&spdy, &key, &only_channels),
            Err(UpgradeConnectionError::SecWebSocketProtocolMismatch)
        ));
        let v5 = switching(&key, "v5.channel.k8s.io");
        assert!(check_upgrade(&v5, &key, &super::super::OFFERED).is_err());
    }

    #[tokio::test]
    async fn a_refusal_is_the_apis_status_and_only_its_start_is_kept() {
        let refusal = |code: u16, body: Vec<u8>| {
            hyper::Response::builder()
                .status(code)
                .body(Body::from(body))
                .expect("a response")
        };
        let forbidden = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"agent\" is forbidden","reason":"Forbidden","code":403}"#;
        let Err(kube::Error::Api(status)) =
            refused_as_api_error(refusal(403, forbidden.to_vec())).await
        else {
            panic!("a 403 is an API error");
        };
        assert_eq!(
            (status.code, status.message.as_str()),
            (403, r#"pods "agent" is forbidden"#)
        );
        // A proxy's endless page: read no further than its start, keep a line of it.
        let page = [b"<html>\n".repeat(4), vec![b'x'; 8 << 20]].concat();
        let Err(kube::Error::Api(status)) = refused_as_api_error(refusal(502, page)).await else {
            panic!("a 502 is an API error");
        };
        assert_eq!(status.code, 502);
        assert!(
            status.message.starts_with("<html> <html>"),
            "{}",
            status.message
        );
        assert!(status.message.chars().count() <= MAX_REFUSAL_MESSAGE);
        assert!(!status.message.contains('\n'));
        let through = refused_as_api_error(refusal(101, Vec::new())).await;
        assert!(through.is_ok(), "anything but a refusal is passed on");
    }

    #[test]
    fn a_handshake_for_another_key_is_refused() {
        let response = switching(&generate_key(), "v4.channel.k8s.io");
        assert!(matches!(
            check_upgrade(&response, &generate_key(), &super::super::OFFERED),
            Err(UpgradeConnectionError::SecWebSocketAcceptKeyMismatch)
        ));
    }
}
