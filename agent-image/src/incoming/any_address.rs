//! The sockets of the ports the agent takes over: on every address of both families where
//! the pod has an IPv6 address beyond its link (a dual-stack or IPv6 cluster), so that
//! clients over IPv6 (a dual-stack Service's IPv6 ClusterIP, a pod's IPv6 address) reach
//! the agent as IPv4 ones do; on IPv4 alone otherwise, so that a port is not open on the
//! pod's link-local address, which an IPv4-only network policy would not see.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// Connections waiting to be accepted, as the standard library's listeners allow.
const BACKLOG: i32 = 1024;

/// Listens on `port` of every address.
pub(super) fn tcp_listener(port: u16) -> io::Result<TcpListener> {
    listening(bound(port, Type::STREAM)?)
}

fn listening(socket: Socket) -> io::Result<TcpListener> {
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Takes datagrams for `port` of every address.
pub(super) fn udp_socket(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bound(port, Type::DGRAM)?.into())
}

/// The client's address as the app would see it: an IPv4 client is reported as IPv4, not
/// as the IPv4-mapped IPv6 address a dual-stack socket gives.
pub(super) fn client_address(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

fn bound(port: u16, kind: Type) -> io::Result<Socket> {
    let ipv4 = || bound_to(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, kind);
    // Where the file cannot be read (a sandbox that hides it), IPv6 is tried.
    let addresses = std::fs::read_to_string("/proc/net/if_inet6");
    if addresses.is_ok_and(|addresses| !has_routable_ipv6(&addresses)) {
        return ipv4();
    }
    match bound_to(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, kind) {
        Err(err) if without_ipv6(&err) => ipv4(),
        bound => bound,
    }
}

fn bound_to(address: IpAddr, port: u16, kind: Type) -> io::Result<Socket> {
    let address = SocketAddr::new(address, port);
    let socket = Socket::new(Domain::for_address(address), kind, None)?;
    if address.is_ipv6() {
        // Whatever the pod's net.ipv6.bindv6only says, IPv4 clients too.
        socket.set_only_v6(false)?;
    }
    // As the standard library's listeners do: a port whose last connections linger in
    // TIME_WAIT can be taken again.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// Whether `/proc/net/if_inet6` (`addresses`) lists an address other than loopback and
/// link-local ones: each line is the address, the device's index, the prefix length, the
/// scope (`00` global, `20` link, `10` host), flags and the device's name.
fn has_routable_ipv6(addresses: &str) -> bool {
    addresses.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, _, _, "00", _, device] if *device != "lo")
    })
}

/// Whether `err` says the pod has no IPv6 (a kernel or a pod with it turned off).
fn without_ipv6(err: &io::Error) -> bool {
    use rustix::io::Errno;
    let errno = err.raw_os_error().map(Errno::from_raw_os_error);
    matches!(errno, Some(Errno::AFNOSUPPORT | Errno::ADDRNOTAVAIL))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn only_an_address_beyond_the_link_makes_a_pod_take_ipv6() {
        let link_only = "00000000000000000000000000000001 01 80 10 80       lo\n\
                         fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
        assert!(!has_routable_ipv6(link_only));
        assert!(!has_routable_ipv6(""), "no IPv6 at all");
        let dual_stack =
            format!("{link_only}fd4b6b64024400000000000000000003 04 40 00 00     eth0\n");
        assert!(has_routable_ipv6(&dual_stack));
    }

    #[tokio::test]
    async fn one_listener_takes_clients_of_both_families() {
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let listener = listening(bound_to(any, 0, Type::STREAM).expect("bind")).expect("listen");
        let port = listener.local_addr().expect("address").port();
        for client in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ] {
            let mut connecting = TcpStream::connect(client).await.expect("connect");
            let (mut accepted, peer) = listener.accept().await.expect("accept");
            assert_eq!(client_address(peer).ip(), client.ip(), "as the client is");
            connecting.write_all(b"x").await.expect("write");
            assert_eq!(accepted.read_u8().await.expect("read"), b'x');
        }
    }

    #[tokio::test]
    async fn one_socket_takes_datagrams_of_both_families() {
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let bound = bound_to(any, 0, Type::DGRAM).expect("bind");
        let socket = UdpSocket::from_std(bound.into()).expect("socket");
        let port = socket.local_addr().expect("address").port();
        for (source, target) in [
            ("127.0.0.1:0", Ipv4Addr::LOCALHOST.into()),
            ("[::1]:0", IpAddr::from(Ipv6Addr::LOCALHOST)),
        ] {
            let client = UdpSocket::bind(source).await.expect("bind");
            client.send_to(b"x", (target, port)).await.expect("send");
            let mut buf = [0u8; 8];
            let (len, peer) = socket.recv_from(&mut buf).await.expect("receive");
            assert_eq!(&buf[..len], b"x");
            assert_eq!(client_address(peer).ip(), target);
            // The reply goes to the address as the socket gave it.
            socket.send_to(b"y", peer).await.expect("reply");
            assert_eq!(client.recv(&mut buf).await.expect("reply"), 1);
        }
    }
}
