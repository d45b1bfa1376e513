//! The files and directories a client has open, each under the handle it was given, at
//! most [`MAX_HANDLES`] at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::MAX_HANDLES;
use super::error::VolumeError;
use super::listing::Listing;

/// What a handle stands for.
#[derive(Debug)]
pub(super) enum Open {
    /// Read and written at offsets, so requests need no shared cursor.
    File(Arc<std::fs::File>),
    /// Its own lock: entries are read on the blocking pool, not under the handles' lock.
    Dir(Arc<Mutex<Listing>>),
}

#[derive(Debug, Default)]
pub(super) struct Handles {
    open: Mutex<HashMap<String, Open>>,
    next: AtomicU64,
}

impl Handles {
    fn opened(&self) -> MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether one more may be opened: asked before opening, so that a request refused
    /// for want of a handle has changed nothing (created or truncated no file).
    pub(super) fn room(&self) -> Result<(), VolumeError> {
        if self.opened().len() < MAX_HANDLES {
            Ok(())
        } else {
            Err(VolumeError::TooManyOpen)
        }
    }

    /// Keeps `open` under a new handle, if there is room.
    pub(super) fn keep(&self, open: Open) -> Result<String, VolumeError> {
        let mut opened = self.opened();
        if opened.len() >= MAX_HANDLES {
            return Err(VolumeError::TooManyOpen);
        }
        let handle = (self.next.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        opened.insert(handle.clone(), open);
        Ok(handle)
    }

    pub(super) fn file(&self, handle: &str) -> Result<Arc<std::fs::File>, VolumeError> {
        match self.opened().get(handle) {
            Some(Open::File(file)) => Ok(file.clone()),
            _ => Err(no_handle(handle)),
        }
    }

    pub(super) fn listing(&self, handle: &str) -> Result<Arc<Mutex<Listing>>, VolumeError> {
        match self.opened().get(handle) {
            Some(Open::Dir(listing)) => Ok(listing.clone()),
            _ => Err(no_handle(handle)),
        }
    }

    /// Frees `handle`'s slot; its file closes once the reads under way with it are done.
    pub(super) fn close(&self, handle: &str) {
        self.opened().remove(handle);
    }
}

fn no_handle(handle: &str) -> VolumeError {
    VolumeError::NoHandle {
        handle: handle.to_owned(),
    }
}
