//! The striped flows under way ([`kubedev_protocol::stripe`]): a flow (a TCP connection
//! or a files session) registers its id when it opens, and the streams that other links
//! of the workstation open to join it are handed to it here, as many at once as a flow
//! takes; a stream that left its flow makes room for another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::{MAX_STREAMS, Member};
use kubedev_protocol::{MAX_STRIPE_ID, OpenReply};
use tokio::sync::{Semaphore, mpsc};

use crate::reply::{answer, refuse};

/// Where the streams that join a striped flow arrive.
pub(crate) type Joined = mpsc::Receiver<Member<MuxStream>>;

/// The striped flows of every workstation's links, by id: where the streams that join each
/// go, and the places left for them.
#[derive(Debug, Default)]
pub(crate) struct Stripes(Mutex<HashMap<String, Joining>>);

#[derive(Debug)]
struct Joining {
    joins_tx: mpsc::Sender<Member<MuxStream>>,
    /// A place for each stream beside the first, held while it is a member.
    places: Arc<Semaphore>,
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
            places: Arc::new(Semaphore::new(MAX_STREAMS - 1)),
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
        let admitted = {
            let flows = self.lock();
            flows.get(id).and_then(|joining| {
                let place = joining.places.clone().try_acquire_owned().ok()?;
                let sending = joining.joins_tx.clone().try_reserve_owned().ok()?;
                Some((place, sending))
            })
        };
        let Some((place, sending)) = admitted else {
            return refuse(&mut stream, "no such striped flow to join".to_owned()).await;
        };
        answer(&mut stream, &OpenReply::Connected).await?;
        sending.send(Member::new(stream).holding(place));
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
