//! Where a session's incoming connections are delivered: this machine's own network, or,
//! while the session's command runs in a network namespace of its own, that namespace
//! (its localhost is not this machine's). Only Linux has such namespaces: elsewhere every
//! connection is delivered on this machine.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::{TcpStream, UdpSocket};

#[cfg(target_os = "linux")]
use crate::namespace_sockets::NamespaceSockets;
use kubedev_protocol::udp_flows::connected_socket;
#[cfg(not(target_os = "linux"))]
use unavailable::NamespaceSockets;

/// A session's local network, shared by its links.
#[derive(Debug, Default)]
pub(crate) struct LocalNetwork {
    namespace: RwLock<Option<Arc<NamespaceSockets>>>,
}

impl LocalNetwork {
    /// From now on, connections are delivered inside the namespace `sockets` are made in.
    #[cfg(target_os = "linux")]
    pub(crate) fn enter(&self, sockets: Arc<NamespaceSockets>) {
        *self.namespace.write().unwrap_or_else(|e| e.into_inner()) = Some(sockets);
    }

    /// From now on, connections are delivered on this machine again.
    #[cfg(target_os = "linux")]
    pub(crate) fn leave(&self) {
        *self.namespace.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn namespace(&self) -> Option<Arc<NamespaceSockets>> {
        self.namespace
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A TCP connection to the local `target`.
    pub(crate) async fn connect_tcp(&self, target: SocketAddr) -> std::io::Result<TcpStream> {
        match self.namespace() {
            Some(namespace) => namespace.connect_tcp(target).await,
            None => TcpStream::connect(target).await,
        }
    }

    /// A UDP socket connected to the local `target`.
    pub(crate) async fn connect_udp(&self, target: SocketAddr) -> std::io::Result<UdpSocket> {
        match self.namespace() {
            Some(namespace) => namespace.connect_udp(target).await,
            None => connected_socket(target).await,
        }
    }
}

/// Where no network namespace can be made, none is ever entered.
#[cfg(not(target_os = "linux"))]
mod unavailable {
    use std::net::SocketAddr;

    use tokio::net::{TcpStream, UdpSocket};

    /// Never made.
    #[derive(Debug)]
    pub(crate) enum NamespaceSockets {}

    impl NamespaceSockets {
        pub(crate) async fn connect_tcp(&self, _: SocketAddr) -> std::io::Result<TcpStream> {
            match *self {}
        }

        pub(crate) async fn connect_udp(&self, _: SocketAddr) -> std::io::Result<UdpSocket> {
            match *self {}
        }
    }
}
