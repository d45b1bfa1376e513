//! The striped flows under way ([`kubedev_protocol::stripe`]): a flow (a TCP connection
//! or a files session) registers its id when it opens, and the streams that other links
//! of the workstation open to join it are handed to it here.

use std::collections::HashMap;
use std::sync::Mutex;

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::MAX_STREAMS;
use kubedev_protocol::{MAX_STRIPE_ID, OpenReply};
use tokio::sync::mpsc;

use crate::reply::{answer, refuse};

/// Where the streams that join a striped flow arrive.
pub(crate) type Joined = mpsc::Receiver<Box<MuxStream>>;

/// The striped flows of every workstation's links, by id: where the streams that join each
/// go, and how many have.
#[derive(Debug, Default)]
pub(crate) struct Stripes(Mutex<HashMap<String, Joining>>);

#[derive(Debug)]
struct Joining {
    joins_tx: mpsc::Sender<Box<MuxStream>>,
    streams: usize,
}

impl Stripes {
    /// Makes room for the streams that will join flow `id`, unless the id is taken or too
    /// long: its place, held until dropped, and where the streams that join arrive.
    pub(crate) fn register(&self, id: &str) -> Option<(Registered<'_>, Joined)> {
        let mut flows = self.lock();
        if id.len() > MAX_STRIPE_ID || flows.contains_key(id) {
            return None;
        }
        let (joins_tx, joined_rx) = mpsc::channel(MAX_STREAMS);
        let joining = Joining {
            joins_tx,
            streams: 1,
        };
        flows.insert(id.to_owned(), joining);
        let registered = Registered {
            stripes: self,
            id: id.to_owned(),
        };
        Some((registered, joined_rx))
    }

    /// Adds `stream` to the striped flow `id`, if it is under way and has room.
    pub(crate) async fn join(&self, mut stream: MuxStream, id: &str) -> std::io::Result<()> {
        let permit = {
            let mut flows = self.lock();
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
        permit.send(Box::new(stream));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Joining>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A striped flow's place in [`Stripes`], given up when the flow ends.
pub(crate) struct Registered<'a> {
    stripes: &'a Stripes,
    id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.stripes.lock().remove(&self.id);
    }
}

/// Why a flow's registration was refused; never the id itself, as whoever holds it may
/// join the flow.
pub(crate) const TAKEN: &str = "a striped flow's id is taken or too long";
