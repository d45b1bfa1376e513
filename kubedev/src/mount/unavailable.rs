//! Windows: no mount. A `--mount DIR` is refused before anything changes; without one, the
//! session goes on and says its volumes are not mounted.

use std::path::Path;

use super::{MountChoice, MountError};

/// The system named in what the user is told.
const SYSTEM: &str = "Windows";

/// Mounted volumes: none are, here.
#[derive(Debug)]
pub struct Mount(std::convert::Infallible);

impl Mount {
    /// Where the volumes are.
    pub fn dir(&self) -> &Path {
        match self.0 {}
    }
}

/// Dropping a mount unmounts it, as on the other systems: there is none here.
impl Drop for Mount {
    fn drop(&mut self) {
        match self.0 {}
    }
}

/// Refuses `--mount DIR`: nothing can be mounted there.
pub fn check_given_dir(_: &Path) -> Result<(), MountError> {
    Err(MountError::NotOnThisSystem(SYSTEM))
}

/// Says the volumes cannot be mounted here, unless none were asked for.
pub async fn mount(
    _socket: &Path,
    _session: &crate::control::SessionKey,
    choice: &MountChoice,
    _read_only: bool,
) -> Result<Option<Mount>, MountError> {
    match choice {
        MountChoice::No => Ok(None),
        _ => Err(MountError::NotOnThisSystem(SYSTEM)),
    }
}

/// Nothing was mounted for the session: nothing to undo.
pub fn unmount_session(_session: &crate::control::SessionKey) {}
