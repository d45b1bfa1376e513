//! What a user's tunneld and the network helper say to each other on the helper's socket:
//! length-prefixed JSON messages ([`kubedev_protocol::codec`]), one request and one reply
//! at a time; an opened device's descriptor follows its reply, attached to one byte. What a
//! user may ask for is [`super::policy`]'s to say.

use std::net::SocketAddr;

use kubedev::cidr::Cidr;
use serde::{Deserialize, Serialize};

use crate::network::pointing::Pointed;

/// Where the network helper listens unless told otherwise: in /run, where only root may
/// create a file, and outside any 0700 directory, which no user could reach.
pub(crate) const DEFAULT_SOCKET: &str = "/run/kubedev-network.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub(crate) enum HelperRequest {
    /// A TUN device for the cluster's network, with the machine's resolver sending names
    /// under `domain` (and `search`) to tunneld's DNS through it.
    Open { domain: String, search: Vec<String> },
    /// Makes the device's routes exactly `routes`.
    Route { routes: Vec<Cidr> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum HelperReply {
    /// The device is open; its descriptor follows. `upstream` is the nameserver the
    /// resolver named before (where tunneld forwards other names).
    Opened {
        device: String,
        resolver: Pointed,
        upstream: Option<SocketAddr>,
    },
    /// The routes in the device now, and those the kernel or the helper refused, with why.
    Routed {
        added: Vec<Cidr>,
        refused: Vec<(Cidr, String)>,
    },
    Refused {
        reason: String,
    },
}
