//! The flows a stream can ask for: TCP and UDP from the pod's network, and name lookups
//! with the pod's resolver (its resolv.conf search path and /etc/hosts, as its programs
//! see them, through the system resolver).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kubedev::protocol::codec::{read_message, write_message};
use kubedev::protocol::mux::MuxStream;
use kubedev::protocol::splice::splice;
use kubedev::protocol::udp_flows::{connected_socket, relay_socket};
use kubedev::protocol::{APP_ENV_PREFIX, HANDSHAKE_TIMEOUT, OpenReply, OpenRequest};
use tokio::net::{TcpStream, lookup_host};

use crate::serve::{Sessions, Settings};

/// Where a session's claims are kept.
#[derive(Debug)]
pub(crate) struct ClaimsOf {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) id: u64,
}

pub(crate) async fn serve_stream(mut stream: MuxStream, settings: Arc<Settings>, claims: ClaimsOf) {
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => return tracing::debug!("stream without a request: {err}"),
        Err(_) => return tracing::debug!("stream without a request in {HANDSHAKE_TIMEOUT:?}"),
    };
    let result = match request {
        OpenRequest::Tcp { host, port } => relay_tcp(stream, &host, port).await,
        OpenRequest::Udp { host, port } => relay_udp(stream, &host, port, &settings).await,
        OpenRequest::Resolve { name } => answer_lookup(stream, &name).await,
        OpenRequest::Ping => write_message(&mut stream, &OpenReply::Pong)
            .await
            .map_err(std::io::Error::other),
        OpenRequest::Environment => {
            let variables = app_environment(std::env::vars());
            write_message(&mut stream, &OpenReply::Environment { variables })
                .await
                .map_err(std::io::Error::other)
        }
        OpenRequest::Inbound { .. } => {
            refuse(&mut stream, "the agent takes no inbound streams".into()).await
        }
        OpenRequest::Files => {
            let root = std::path::Path::new(kubedev::protocol::VOLUMES_ROOT);
            let server = crate::volumes::VolumeServer::new(root, settings.read_only_volumes);
            match write_message(&mut stream, &OpenReply::Connected).await {
                Ok(()) => {
                    russh_sftp::server::run(stream, server).await;
                    Ok(())
                }
                Err(err) => Err(std::io::Error::other(err)),
            }
        }
        OpenRequest::Claim { port, filter } => {
            tracing::info!(
                "a workstation takes port {port}{}",
                if filter.is_some() {
                    " (matching HTTP requests)"
                } else {
                    ""
                }
            );
            claims.sessions.claim(claims.id, port, filter);
            write_message(&mut stream, &OpenReply::Connected)
                .await
                .map_err(std::io::Error::other)
        }
    };
    if let Err(err) = result {
        tracing::debug!("flow ended: {err}");
    }
}

async fn refuse(stream: &mut MuxStream, reason: String) -> std::io::Result<()> {
    tracing::debug!("refused: {reason}");
    write_message(stream, &OpenReply::Failed { reason })
        .await
        .map_err(std::io::Error::other)
}

async fn relay_tcp(mut stream: MuxStream, host: &str, port: u16) -> std::io::Result<()> {
    let connect = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect((host, port)));
    let mut upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => {
            return refuse(&mut stream, format!("connect to {host}:{port}: {err}")).await;
        }
        Err(_) => {
            let reason = format!("connect to {host}:{port}: no answer in {HANDSHAKE_TIMEOUT:?}");
            return refuse(&mut stream, reason).await;
        }
    };
    upstream.set_nodelay(true)?;
    write_message(&mut stream, &OpenReply::Connected)
        .await
        .map_err(std::io::Error::other)?;
    splice(&mut stream, &mut upstream).await?;
    Ok(())
}

async fn relay_udp(
    mut stream: MuxStream,
    host: &str,
    port: u16,
    settings: &Settings,
) -> std::io::Result<()> {
    let target = match first_address(host, port).await {
        Ok(target) => target,
        Err(reason) => return refuse(&mut stream, reason).await,
    };
    let socket = connected_socket(target).await?;
    write_message(&mut stream, &OpenReply::Connected)
        .await
        .map_err(std::io::Error::other)?;

    let relayed = relay_socket(stream, &socket, settings.udp_idle).await;
    tracing::debug!("udp flow to {target} ended");
    relayed
}

async fn answer_lookup(mut stream: MuxStream, name: &str) -> std::io::Result<()> {
    let reply = match lookup_host((name, 0)).await {
        Ok(found) => {
            let mut addresses: Vec<IpAddr> = Vec::new();
            for address in found.map(|a| a.ip()) {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            OpenReply::Resolved { addresses }
        }
        Err(err) => OpenReply::Failed {
            reason: format!("resolve {name}: {err}"),
        },
    };
    write_message(&mut stream, &reply)
        .await
        .map_err(std::io::Error::other)
}

/// The app container's variables: the copies under [`APP_ENV_PREFIX`] (the kubelet resolved
/// them for this container exactly as for the app's), and the service links the kubelet
/// gives every container.
fn app_environment(
    all: impl Iterator<Item = (String, String)>,
) -> std::collections::BTreeMap<String, String> {
    all.filter_map(|(name, value)| match name.strip_prefix(APP_ENV_PREFIX) {
        Some(app_name) => Some((app_name.to_owned(), value)),
        None if is_service_link(&name) => Some((name, value)),
        None => None,
    })
    .collect()
}

/// `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT[_NAME]`, `WEB_PORT`, `WEB_PORT_80_TCP[_PROTO|_PORT|_ADDR]`.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") {
        return true;
    }
    name.match_indices("_PORT").any(|(at, _)| {
        let rest = &name[at + "_PORT".len()..];
        let Some(rest) = rest.strip_prefix('_') else {
            return rest.is_empty();
        };
        let (number, protocol) = rest.split_once('_').unwrap_or((rest, ""));
        let protocol = protocol.split('_').next().unwrap_or("");
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(protocol, "TCP" | "UDP" | "SCTP")
    })
}

async fn first_address(host: &str, port: u16) -> Result<SocketAddr, String> {
    lookup_host((host, port))
        .await
        .map_err(|err| format!("resolve {host}: {err}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_the_apps_copies_and_service_links() {
        let all = [
            ("KUBEDEV_APP_GREETING", "hello"),
            ("KUBEDEV_APP_DB_PASSWORD", "s3cret"),
            ("KUBEDEV_AGENT_TOKEN", "t"),
            ("PATH", "/bin"),
            ("HOSTNAME", "web-1"),
            ("ECHO_SERVICE_HOST", "10.96.0.20"),
            ("ECHO_SERVICE_PORT_HTTP", "8080"),
            ("ECHO_PORT", "tcp://10.96.0.20:8080"),
            ("ECHO_PORT_8080_TCP_ADDR", "10.96.0.20"),
            ("MY_PORTAL", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env = app_environment(all.into_iter());
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "DB_PASSWORD",
                "ECHO_PORT",
                "ECHO_PORT_8080_TCP_ADDR",
                "ECHO_SERVICE_HOST",
                "ECHO_SERVICE_PORT_HTTP",
                "GREETING"
            ]
        );
        assert_eq!(env["DB_PASSWORD"], "s3cret");
    }
}
