//! TCP connections from the pod, for the workstation; a striped one's bytes come and go in
//! chunks over a stream on each link that joins it ([`kubedev_protocol::stripe`]).

use std::collections::HashMap;
use std::sync::Mutex;

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::stripe::{MAX_STREAMS, Striped};
use kubedev_protocol::{HANDSHAKE_TIMEOUT, MAX_STRIPE_ID, OpenReply};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::reply::{answer, refuse};

/// The striped flows under way, by id: where the streams that join each go, and how many
/// have.
#[derive(Debug, Default)]
pub(crate) struct Stripes(Mutex<HashMap<String, Joining>>);

#[derive(Debug)]
struct Joining {
    joins_tx: mpsc::Sender<MuxStream>,
    streams: usize,
}

impl Stripes {
    /// Makes room for the streams that will join flow `id`, unless it is taken.
    fn register(&self, id: &str) -> Option<mpsc::Receiver<MuxStream>> {
        let mut flows = self.lock();
        if id.len() > MAX_STRIPE_ID || flows.contains_key(id) {
            return None;
        }
        let (joins_tx, joined_rx) = mpsc::channel(MAX_STREAMS);
        flows.insert(
            id.to_owned(),
            Joining {
                joins_tx,
                streams: 1,
            },
        );
        Some(joined_rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Joining>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A striped flow's place in [`Stripes`], given up when the flow ends.
struct Registered<'a> {
    stripes: &'a Stripes,
    id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.stripes.lock().remove(&self.id);
    }
}

/// Connects to `host:port` from the pod and carries the connection's bytes: as they are,
/// or in chunks for the striped flow `stripe`.
pub(crate) async fn relay(
    mut stream: MuxStream,
    host: &str,
    port: u16,
    stripe: Option<(&str, &Stripes)>,
) -> std::io::Result<()> {
    let mut registered = None;
    if let Some((id, stripes)) = stripe {
        let Some(joined_rx) = stripes.register(id) else {
            // Never the id itself: whoever holds it may join the flow.
            let reason = "a striped flow's id is taken or too long".to_owned();
            return refuse(&mut stream, reason).await;
        };
        let id = id.to_owned();
        registered = Some((Registered { stripes, id }, joined_rx));
    }
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
    answer(&mut stream, &OpenReply::Connected).await?;
    match registered {
        None => splice(&mut stream, &mut upstream).await?,
        Some((_registered, joined_rx)) => {
            splice(&mut Striped::new(stream, joined_rx), &mut upstream).await?
        }
    };
    Ok(())
}

/// Adds `stream` to the striped flow `id`, if it is under way and has room.
pub(crate) async fn join(
    mut stream: MuxStream,
    id: &str,
    stripes: &Stripes,
) -> std::io::Result<()> {
    let permit = {
        let mut flows = stripes.lock();
        let joining = flows
            .get_mut(id)
            .filter(|joining| joining.streams < MAX_STREAMS);
        match joining.map(|joining| (joining.joins_tx.clone().try_reserve_owned(), joining)) {
            Some((Ok(permit), joining)) => {
                joining.streams += 1;
                Some(permit)
            }
            _ => None,
        }
    };
    let Some(permit) = permit else {
        return refuse(&mut stream, "no such striped flow to join".to_owned()).await;
    };
    answer(&mut stream, &OpenReply::Connected).await?;
    permit.send(stream);
    Ok(())
}
