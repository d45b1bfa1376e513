//! The proxy's SOCKS5 side (RFC 1928): username/password authentication (RFC 1929) only,
//! and CONNECT, to an address or to a name the proxy resolves (`socks5h://`). BIND and
//! UDP ASSOCIATE are refused as unsupported commands.
//!
//! Written here rather than taken from a crate: the one with a permissive license
//! (fast-socks5) brings a second thiserror and socket2 beside ours, and its own resolving
//! and dialling, which [`Outbound`] replaces; socks5-server and socks5-impl are GPL. What
//! is left is three short exchanges.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Credentials, HANDSHAKE_LIMIT, Target, relay};
use crate::outbound::{Host, Outbound};

/// The first byte of every SOCKS5 greeting and request.
pub(super) const VERSION: u8 = 5;
/// The version of the username/password exchange (RFC 1929).
const PASSWORD_VERSION: u8 = 1;
const USERNAME_PASSWORD: u8 = 2;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CONNECT: u8 = 1;

const IPV4: u8 = 1;
const DOMAIN: u8 = 3;
const IPV6: u8 = 4;

/// The reply codes the proxy sends (RFC 1928, 6).
const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NETWORK_UNREACHABLE: u8 = 3;
const HOST_UNREACHABLE: u8 = 4;
const CONNECTION_REFUSED: u8 = 5;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;

/// Serves one SOCKS5 client: authenticated, its CONNECT dialled, then relayed.
pub(super) async fn serve(mut client: TcpStream, credentials: &Credentials, outbound: &Outbound) {
    let target =
        match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&mut client, credentials)).await {
            Ok(Ok(target)) => target,
            Ok(Err(err)) => return tracing::debug!("socks client refused: {err}"),
            Err(_) => return tracing::debug!("socks client silent for {HANDSHAKE_LIMIT:?}"),
        };
    let remote = match outbound.tcp_to(&target.host, target.port).await {
        Ok(remote) => remote,
        Err(err) => {
            tracing::debug!("proxy to {target}: {err}");
            let _ = client.write_all(&reply(reply_code(&err))).await;
            return;
        }
    };
    if client.write_all(&reply(SUCCEEDED)).await.is_ok() {
        relay(&mut client, remote, &target).await;
    }
}

/// Greeting, authentication and request: where the client asks to go. Whatever is
/// refused is told to the client as the protocol says, then returned as an error.
async fn handshake<S>(client: &mut S, credentials: &Credentials) -> io::Result<Target>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let [version, count] = read_array(client).await?;
    if version != VERSION {
        return Err(invalid(format!("SOCKS version {version}")));
    }
    let methods = read_bytes(client, count).await?;
    if !methods.contains(&USERNAME_PASSWORD) {
        client.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(invalid("no username and password offered".into()));
    }
    client.write_all(&[VERSION, USERNAME_PASSWORD]).await?;

    let [_version, length] = read_array(client).await?;
    let username = read_bytes(client, length).await?;
    let [length] = read_array(client).await?;
    let password = read_bytes(client, length).await?;
    let accepted = credentials.accept(&username, &password);
    client
        .write_all(&[PASSWORD_VERSION, u8::from(!accepted)])
        .await?;
    if !accepted {
        return Err(invalid("wrong username or password".into()));
    }

    let [version, command, _reserved, address_type] = read_array(client).await?;
    if version != VERSION {
        return Err(invalid(format!("SOCKS version {version} in the request")));
    }
    if command != CONNECT {
        client.write_all(&reply(COMMAND_NOT_SUPPORTED)).await?;
        return Err(invalid(format!(
            "command {command} (only CONNECT is served)"
        )));
    }
    let host = match address_type {
        IPV4 => Host::Address(IpAddr::V4(Ipv4Addr::from(read_array(client).await?))),
        // An IPv4 address written as IPv6 is the IPv4 address.
        IPV6 => Host::Address(IpAddr::V6(Ipv6Addr::from(read_array(client).await?)).to_canonical()),
        DOMAIN => {
            let [length] = read_array(client).await?;
            let name = read_bytes(client, length).await?;
            Host::Name(String::from_utf8(name).map_err(|_| invalid("a name not in UTF-8".into()))?)
        }
        other => {
            client.write_all(&reply(ADDRESS_TYPE_NOT_SUPPORTED)).await?;
            return Err(invalid(format!("address type {other}")));
        }
    };
    let port = u16::from_be_bytes(read_array(client).await?);
    Ok(Target { host, port })
}

/// A reply with `code`. The bound address is left unspecified: clients of CONNECT do not
/// use it, and a flow through an agent has none on this machine.
fn reply(code: u8) -> [u8; 10] {
    [VERSION, code, 0, IPV4, 0, 0, 0, 0, 0, 0]
}

/// What the client is told when its destination could not be reached.
fn reply_code(err: &io::Error) -> u8 {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => CONNECTION_REFUSED,
        io::ErrorKind::NetworkUnreachable => NETWORK_UNREACHABLE,
        io::ErrorKind::NotFound | io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut => {
            HOST_UNREACHABLE
        }
        _ => GENERAL_FAILURE,
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

async fn read_array<const N: usize, R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    reader.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn read_bytes<R: AsyncRead + Unpin>(reader: &mut R, length: u8) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; usize::from(length)];
    reader.read_exact(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            secret: "s3cr3t".into(),
        }
    }

    /// Runs the handshake on what a client sends (`sent`); returns its outcome and every
    /// byte the proxy answered.
    async fn handshake_on(sent: &[u8]) -> (io::Result<Target>, Vec<u8>) {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client.write_all(sent).await.expect("send");
        let outcome = handshake(&mut proxy, &credentials()).await;
        drop(proxy);
        let mut answered = Vec::new();
        client.read_to_end(&mut answered).await.expect("read");
        (outcome, answered)
    }

    /// A greeting offering no authentication and username/password, then the credentials.
    fn authenticated(password: &[u8]) -> Vec<u8> {
        let mut sent = vec![VERSION, 2, 0, USERNAME_PASSWORD, PASSWORD_VERSION, 7];
        sent.extend(b"kubedev");
        sent.push(u8::try_from(password.len()).expect("short"));
        sent.extend(password);
        sent
    }

    const ACCEPTED: [u8; 4] = [VERSION, USERNAME_PASSWORD, PASSWORD_VERSION, 0];

    #[tokio::test]
    async fn a_connect_to_a_name_an_ipv4_or_an_ipv6_address_is_read() {
        let mut sent = authenticated(b"s3cr3t");
        sent.extend([VERSION, CONNECT, 0, DOMAIN, 8]);
        sent.extend(b"web.shop");
        sent.extend(8080u16.to_be_bytes());
        let (target, answered) = handshake_on(&sent).await;
        let expected = Target {
            host: Host::Name("web.shop".into()),
            port: 8080,
        };
        assert_eq!(target.expect("accepted"), expected);
        assert_eq!(answered, ACCEPTED);

        let mut sent = authenticated(b"s3cr3t");
        sent.extend([VERSION, CONNECT, 0, IPV4, 10, 96, 0, 10, 0, 80]);
        let target = handshake_on(&sent).await.0.expect("accepted");
        assert_eq!(target.to_string(), "10.96.0.10:80");

        let mut sent = authenticated(b"s3cr3t");
        sent.extend([VERSION, CONNECT, 0, IPV6]);
        sent.extend(Ipv6Addr::LOCALHOST.octets());
        sent.extend(443u16.to_be_bytes());
        let target = handshake_on(&sent).await.0.expect("accepted");
        assert_eq!(target.to_string(), "[::1]:443");
    }

    #[tokio::test]
    async fn a_client_without_the_credentials_is_refused() {
        let (refused, answered) = handshake_on(&[VERSION, 1, 0]).await;
        assert!(refused.is_err());
        assert_eq!(answered, [VERSION, NO_ACCEPTABLE_METHOD]);

        let mut sent = authenticated(b"guess");
        sent.extend([VERSION, CONNECT, 0, IPV4, 10, 96, 0, 10, 0, 80]);
        let (refused, answered) = handshake_on(&sent).await;
        assert!(refused.is_err());
        assert_eq!(answered, [VERSION, USERNAME_PASSWORD, PASSWORD_VERSION, 1]);

        let (refused, answered) = handshake_on(&[4, 1, 0, 80, 10, 96, 0, 10, 0]).await;
        assert!(refused.is_err(), "SOCKS4");
        assert!(answered.is_empty());
    }

    #[tokio::test]
    async fn bind_and_udp_associate_are_refused_as_unsupported() {
        for command in [2, 3] {
            let mut sent = authenticated(b"s3cr3t");
            sent.extend([VERSION, command, 0, IPV4, 0, 0, 0, 0, 0, 0]);
            let (refused, answered) = handshake_on(&sent).await;
            assert!(refused.is_err());
            assert_eq!(answered[..4], ACCEPTED);
            assert_eq!(answered[4..], reply(COMMAND_NOT_SUPPORTED));
        }
        let mut sent = authenticated(b"s3cr3t");
        sent.extend([VERSION, CONNECT, 0, 9]);
        let (_, answered) = handshake_on(&sent).await;
        assert_eq!(answered[4..], reply(ADDRESS_TYPE_NOT_SUPPORTED));
    }

    #[test]
    fn failures_to_reach_the_destination_get_their_reply_codes() {
        let code = |kind| reply_code(&io::Error::from(kind));
        assert_eq!(code(io::ErrorKind::ConnectionRefused), CONNECTION_REFUSED);
        assert_eq!(code(io::ErrorKind::NotFound), HOST_UNREACHABLE);
        assert_eq!(code(io::ErrorKind::NotConnected), GENERAL_FAILURE);
    }
}
