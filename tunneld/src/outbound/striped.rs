//! TCP flows through an agent, spread over every link to it once they carry bulk: one link
//! is one connection to the API server, which keeps only so much in flight
//! ([`kubedev_protocol::stripe`]). A flow starts on one link; once it has moved
//! [`BULK_AFTER`] bytes either way, a stream on each other link to the same agent joins it.

use std::io;

use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::{MAX_STREAMS, Striped};
use tokio::sync::{mpsc, oneshot};

/// What a flow moves before the other links join it: a short exchange never pays for the
/// streams, a transfer that outlasts a few round trips does.
pub(crate) const BULK_AFTER: u64 = 1 << 20;

/// A TCP connection from `link`'s pod to `host:port`, joined by a stream on each link of
/// `beside` (other links to the same agent) once it carries bulk.
pub(super) async fn open(
    link: &AgentLink,
    beside: Vec<AgentLink>,
    host: &str,
    port: u16,
) -> io::Result<Striped<MuxStream>> {
    let stripe = kubedev::session::random_id().map_err(io::Error::other)?;
    let first = link
        .open_striped_tcp(host, port, &stripe)
        .await
        .map_err(io::Error::other)?;
    let (joins_tx, joined_rx) = mpsc::channel(MAX_STREAMS);
    let (bulk_tx, bulk_rx) = oneshot::channel();
    let striped = Striped::new(first, joined_rx).bulk_after(BULK_AFTER, bulk_tx);
    tokio::spawn(async move {
        // Dropped without a word: the flow ended before it carried bulk.
        if bulk_rx.await.is_err() {
            return;
        }
        for other in beside.into_iter().take(MAX_STREAMS - 1) {
            match other.join_stripe(&stripe).await {
                Ok(stream) => {
                    if joins_tx.send(stream).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::debug!("striped flow to {port}: a link did not join: {err}"),
            }
        }
    });
    Ok(striped)
}
