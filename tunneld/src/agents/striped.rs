//! Flows through an agent spread over every link to it once they carry bulk: one link is
//! one connection to the API server, which keeps only so much in flight
//! ([`kubedev_protocol::stripe`]). A flow starts on one link; once it has moved
//! [`BULK_AFTER`] bytes either way, a stream on each other link to the same agent joins
//! it, and on each link added while it lasts.

use std::io;
use std::sync::Arc;

use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::{MAX_STREAMS, Striped};
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
/// carries bulk.
pub(crate) async fn open(
    pool: &Arc<AgentPool>,
    link: &AgentLink,
    flow: Flow<'_>,
) -> io::Result<Striped<MuxStream>> {
    let stripe = kubedev::session::random_id().map_err(io::Error::other)?;
    let first = match flow {
        Flow::Tcp { host, port } => link.open_striped_tcp(host, port, &stripe).await,
        Flow::Files => link.open_files(&stripe).await,
    };
    let first = first.map_err(io::Error::other)?;
    let (joins_tx, joined_rx) = mpsc::channel(MAX_STREAMS);
    let (bulk_tx, bulk_rx) = oneshot::channel();
    let striped = Striped::new(first, joined_rx).bulk_after(BULK_AFTER, bulk_tx);
    tokio::spawn(join_links(
        pool.clone(),
        link.clone(),
        stripe,
        joins_tx,
        bulk_rx,
    ));
    Ok(striped)
}

/// Once the flow carries bulk, joins it from every other link to its pod, those there and
/// those added, until it ends or has [`MAX_STREAMS`].
async fn join_links(
    pool: Arc<AgentPool>,
    first: AgentLink,
    stripe: String,
    joins_tx: mpsc::Sender<Box<MuxStream>>,
    bulk_rx: oneshot::Receiver<()>,
) {
    // Dropped without a word: the flow ended before it carried bulk.
    if bulk_rx.await.is_err() {
        return;
    }
    let mut joined = vec![first.clone()];
    loop {
        // Taken before the links are listed: a link added meanwhile is not missed.
        let added = pool.link_added();
        for other in pool.links_beside(&first).await {
            if joined.len() >= MAX_STREAMS {
                return;
            }
            if joined.iter().any(|link| link.same_session(&other)) {
                continue;
            }
            joined.push(other.clone());
            match other.join_stripe(&stripe).await {
                Ok(stream) => {
                    if joins_tx.send(Box::new(stream)).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::debug!("a link did not join a striped flow: {err}"),
            }
        }
        tokio::select! {
            () = added => {}
            () = joins_tx.closed() => return,
        }
    }
}
