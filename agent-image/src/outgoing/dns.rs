//! Name lookups with the pod's resolver: its resolv.conf search path and /etc/hosts, as its
//! programs see them, through the system resolver.

use std::net::{IpAddr, SocketAddr};

use kubedev_protocol::OpenReply;
use kubedev_protocol::mux::MuxStream;
use tokio::net::lookup_host;

use crate::reply::answer;

/// Answers with the addresses `name` has for a program in the pod.
pub(crate) async fn answer_lookup(mut stream: MuxStream, name: &str) -> std::io::Result<()> {
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
    answer(&mut stream, &reply).await
}

/// The first address of `host`, for a flow to its `port`.
pub(crate) async fn first_address(host: &str, port: u16) -> Result<SocketAddr, String> {
    lookup_host((host, port))
        .await
        .map_err(|err| format!("resolve {host}: {err}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))
}
