//! Flows through an agent spread over every link to it once they carry bulk: one link is
//! one connection to the API server, which keeps only so much in flight
//! ([`kubedev_protocol::stripe`]). A TCP flow starts on one link; once it has moved
//! [`BULK_AFTER`] bytes either way, a stream on each other link to the same agent joins
//! it, and on each link added while it lasts; so is a connection the agent hands over
//! striped. A mount's SFTP session is joined at once. A stream leaves its flow when its
//! link retires.

use std::io;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kubedev_protocol::HANDSHAKE_TIMEOUT;
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::{MAX_STREAMS, Member, Striped};
use tokio::sync::{mpsc, oneshot};

use super::AgentPool;

/// What a flow moves before the other links join it: a short exchange never pays for the
/// streams, a transfer that outlasts a few round trips does.
pub(crate) const BULK_AFTER: u64 = 1 << 20;

/// What a striped flow is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flow<'a> {
    /// A TCP connection from the pod to `host:port`.
    Tcp { host: &'a str, port: u16 },
    /// An SFTP session on the app's volumes.
    Files,
}

/// Opens `flow` on `link`, to be joined by a stream on each other link to its pod once it
/// carries bulk (a mount's session: at once).
pub(crate) async fn open(
    pool: &Arc<AgentPool>,
    link: &AgentLink,
    flow: Flow<'_>,
) -> io::Result<Striped<MuxStream>> {
    let stripe = kubedev_protocol::random_id()
        .ok_or_else(|| io::Error::other("no randomness for a flow's id"))?;
    let first = match flow {
        Flow::Tcp { host, port } => link.open_striped_tcp(host, port, &stripe).await,
        Flow::Files => link.open_files(&stripe).await,
    };
    let first = first.map_err(io::Error::other)?;
    let bulk_after = match flow {
        // One session carries every read and write of a mount's volumes for as long as it
        // is mounted: its first large read is not held to one link while it proves bulk.
        Flow::Files => None,
        Flow::Tcp { .. } => Some(BULK_AFTER),
    };
    Ok(spread(pool, link, first, stripe, bulk_after))
}

/// A connection the agent handed over on `link` as the striped flow `stripe`, to be
/// joined by a stream on each other link to its pod once it carries bulk.
pub(crate) fn incoming(
    pool: &Arc<AgentPool>,
    link: &AgentLink,
    first: MuxStream,
    stripe: String,
) -> Striped<MuxStream> {
    spread(pool, link, first, stripe, Some(BULK_AFTER))
}

/// The flow `stripe` on `first`, joined from the other links to its pod once it has moved
/// `bulk_after` bytes (at once if `None`).
fn spread(
    pool: &Arc<AgentPool>,
    link: &AgentLink,
    first: MuxStream,
    stripe: String,
    bulk_after: Option<u64>,
) -> Striped<MuxStream> {
    let (joins_tx, joined_rx) = mpsc::channel(MAX_STREAMS);
    let striped = Striped::new(first, joined_rx);
    let (striped, bulk_rx) = match bulk_after {
        None => (striped, None),
        Some(bytes) => {
            let (bulk_tx, bulk_rx) = oneshot::channel();
            (striped.bulk_after(bytes, bulk_tx), Some(bulk_rx))
        }
    };
    let joining = join_links(pool.clone(), link.clone(), stripe, joins_tx, bulk_rx);
    tokio::spawn(joining);
    striped
}

/// Once the flow carries bulk (at once if `bulk_rx` is `None`), joins it from every other
/// link to its pod, those there and those added, until it ends; up to [`MAX_STREAMS`] at
/// once: a link that closed (its streams left the flow as it retired) makes room.
async fn join_links(
    pool: Arc<AgentPool>,
    first: AgentLink,
    stripe: String,
    joins_tx: mpsc::Sender<Member<MuxStream>>,
    bulk_rx: Option<oneshot::Receiver<()>>,
) {
    // Dropped without a word: the flow ended before it carried bulk.
    if let Some(bulk_rx) = bulk_rx
        && bulk_rx.await.is_err()
    {
        return;
    }
    let mut joined = vec![first.clone()];
    loop {
        // Taken before the links are listed: a link added meanwhile is not missed.
        let added = pool.link_added();
        joined.retain(|link| !link.is_closed());
        let mut joining = FuturesUnordered::new();
        for other in pool.links_beside(&first).await {
            if joined.len() >= MAX_STREAMS {
                break;
            }
            if !joined.iter().any(|link| link.same_session(&other)) {
                joined.push(other.clone());
                let stripe = &stripe;
                let join = async move {
                    let joining = other.join_stripe(stripe);
                    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, joining).await;
                    (other, answer)
                };
                joining.push(join);
            }
        }
        // A join is a round trip to the agent: the links are asked at once, and each
        // stream joins the flow as its answer comes, while the flow lasts.
        loop {
            let answered = tokio::select! {
                answered = joining.next() => answered,
                () = joins_tx.closed() => return,
            };
            let Some((link, answer)) = answered else {
                break;
            };
            match answer {
                Ok(Ok(stream)) => {
                    if joins_tx.send(stream).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Err(err)) => tracing::debug!("a link did not join a striped flow: {err}"),
                Err(_) => tracing::debug!("a link did not answer a join in time"),
            }
            // Asked again with the next link that comes up: the agent may have been
            // letting go of the stream that left it.
            joined.retain(|other| !other.same_session(&link));
        }
        tokio::select! {
            () = added => {}
            () = joins_tx.closed() => return,
        }
    }
}
