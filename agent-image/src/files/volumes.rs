//! The operations on the app container's volumes, one SFTP request each. Paths are
//! confined to the volumes' root by the kernel as they are used ([`beneath`]): `..` never
//! climbs above it and no symlink leads out of it, however the pod changes its files
//! meanwhile. Only regular files are opened, a session holds a bounded number open, and
//! no mode a client sets makes a file setuid or setgid. For ingest every change is refused
//! here, in the agent, whatever the client's mount options say. Methods take `&self`: the
//! server in [`super`] runs reads concurrently.

mod beneath;
mod error;
mod handles;
mod listing;
mod modes;
mod regular;
mod whole_listing;

use std::io::ErrorKind;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use kubedev_protocol::LISTING_EXTENSION;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode,
};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use beneath::Beneath;
use error::VolumeError;
use handles::{Handles, Open};
use listing::Listing;
use modes::{chmod, settable};
use regular::{open_flags, open_regular};

/// The most one read returns: what sshfs asks for, and what an SFTP packet holds.
const MAX_READ: u32 = 256 * 1024;
/// The most one `readdir` reply holds: sshfs takes no reply over 128 KiB (and drops the
/// mount on one), so a large directory comes in several.
const READDIR_REPLY_BYTES: usize = 64 * 1024;
/// The most files and directories one session has open. sshfs holds a handle per file open
/// on the mount and one per listing under way, and an editor, a build and a language server
/// together hold tens to hundreds. 1,024, the open files limit most processes start with,
/// leaves them ample room, while one session cannot take the descriptors (one a handle) the
/// agent's other sessions and flows need. A listing holds some 24 KiB at most
/// ([`listing`]), so a session's listings hold some 25 MiB at most.
pub(super) const MAX_HANDLES: usize = 1024;

/// The volumes under one root, and the files and directories a client has open.
pub(super) struct Volumes {
    root: PathBuf,
    /// The root held open, or why it could not be: each request then says so.
    beneath: Result<Beneath, ErrorKind>,
    read_only: bool,
    handles: Handles,
}

impl Volumes {
    pub(super) fn new(root: &Path, read_only: bool) -> Self {
        Self {
            root: root.to_owned(),
            beneath: Beneath::new(root).map_err(|err| err.kind()),
            read_only,
            handles: Handles::default(),
        }
    }

    fn beneath(&self) -> Result<Beneath, VolumeError> {
        self.beneath.clone().map_err(|kind| VolumeError::Root {
            root: self.root.clone(),
            kind,
        })
    }

    fn writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The reply to `request`: its answer, or the status it failed with.
    pub(super) async fn answer(&self, request: Packet) -> Packet {
        // A request that could not be read stands as the status it is answered with.
        let id = match &request {
            Packet::Status(unreadable) => unreadable.id,
            request => request.get_request_id(),
        };
        let answer = match request {
            Packet::Init(_) => Ok(Packet::Version(whole_listing::version())),
            Packet::Open(r) => self
                .open(r.id, r.filename, r.pflags, r.attrs)
                .await
                .map(Packet::Handle),
            Packet::Close(r) => {
                self.handles.close(&r.handle);
                Ok(Packet::Status(ok(r.id)))
            }
            Packet::Read(r) => self
                .read(r.id, &r.handle, r.offset, r.len)
                .await
                .map(Packet::Data),
            Packet::Write(r) => self
                .write(r.id, &r.handle, r.offset, r.data)
                .await
                .map(Packet::Status),
            Packet::Lstat(r) => self.lstat(r.id, r.path).await.map(Packet::Attrs),
            Packet::Fstat(r) => self.fstat(r.id, &r.handle).await.map(Packet::Attrs),
            Packet::SetStat(r) => self
                .setstat(r.id, r.path, r.attrs)
                .await
                .map(Packet::Status),
            Packet::FSetStat(r) => self
                .fsetstat(r.id, &r.handle, r.attrs)
                .await
                .map(Packet::Status),
            Packet::OpenDir(r) => self.opendir(r.id, r.path).await.map(Packet::Handle),
            Packet::ReadDir(r) => self.readdir(r.id, &r.handle).await.map(Packet::Name),
            Packet::Remove(r) => self.remove(r.id, r.filename).await.map(Packet::Status),
            Packet::MkDir(r) => self.mkdir(r.id, r.path, r.attrs).await.map(Packet::Status),
            Packet::RmDir(r) => self.rmdir(r.id, r.path).await.map(Packet::Status),
            Packet::Rename(r) => self
                .rename(r.id, r.oldpath, r.newpath)
                .await
                .map(Packet::Status),
            Packet::RealPath(r) => Ok(Packet::Name(realpath(r.id, &r.path))),
            Packet::Stat(r) => self.stat(r.id, r.path).await.map(Packet::Attrs),
            Packet::ReadLink(r) => self.readlink(r.id, r.path).await.map(Packet::Name),
            Packet::Extended(r) if r.request == LISTING_EXTENSION => self
                .list_whole(r.id, r.data)
                .await
                .map(Packet::ExtendedReply),
            Packet::Symlink(_) | Packet::Extended(_) => Err(VolumeError::Unsupported),
            _ => Err(VolumeError::BadMessage),
        };
        answer.unwrap_or_else(|err| Packet::Status(err.status(id)))
    }

    async fn open(
        &self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, VolumeError> {
        let changes =
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if pflags.intersects(changes) {
            self.writable()?;
        }
        let mode = if pflags.contains(OpenFlags::CREATE) {
            settable(attrs.permissions.unwrap_or(0o644))
        } else {
            // openat2 refuses a mode when it creates nothing.
            Mode::empty()
        };
        let beneath = self.beneath()?;
        self.handles.room()?;
        let file =
            blocking(move || open_regular(&beneath, &filename, open_flags(pflags), mode)).await?;
        Ok(Handle {
            id,
            handle: self.handles.keep(Open::File(Arc::new(file)))?,
        })
    }

    async fn read(
        &self,
        id: u32,
        handle: &str,
        offset: u64,
        len: u32,
    ) -> Result<Data, VolumeError> {
        let file = self.handles.file(handle)?;
        let wanted = len.min(MAX_READ) as usize;
        let data = blocking(move || {
            let mut data = vec![0u8; wanted];
            let mut filled = 0;
            while filled < wanted {
                match file.read_at(&mut data[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => return Err(err.into()),
                }
            }
            data.truncate(filled);
            Ok(data)
        })
        .await?;
        if data.is_empty() && wanted > 0 {
            return Err(VolumeError::Eof);
        }
        Ok(Data { id, data })
    }

    async fn write(
        &self,
        id: u32,
        handle: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, VolumeError> {
        self.writable()?;
        let file = self.handles.file(handle)?;
        // Acknowledged once the file holds it: a positional write is not buffered here.
        blocking(move || Ok(file.write_all_at(&data, offset)?)).await?;
        Ok(ok(id))
    }

    async fn lstat(&self, id: u32, path: String) -> Result<Attrs, VolumeError> {
        let beneath = self.beneath()?;
        let stat = blocking(move || {
            let entry = beneath.entry(&path)?;
            Ok(rustix::fs::statat(
                &entry.dir,
                &entry.name,
                AtFlags::SYMLINK_NOFOLLOW,
            )?)
        })
        .await?;
        Ok(Attrs {
            id,
            attrs: attributes(&stat),
        })
    }

    async fn stat(&self, id: u32, path: String) -> Result<Attrs, VolumeError> {
        let beneath = self.beneath()?;
        let stat = blocking(move || {
            let target = beneath.open(&path, OFlags::PATH, Mode::empty())?;
            Ok(rustix::fs::fstat(&target)?)
        })
        .await?;
        Ok(Attrs {
            id,
            attrs: attributes(&stat),
        })
    }

    async fn fstat(&self, id: u32, handle: &str) -> Result<Attrs, VolumeError> {
        let file = self.handles.file(handle)?;
        let stat = blocking(move || Ok(rustix::fs::fstat(&*file)?)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&stat),
        })
    }

    async fn setstat(
        &self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, VolumeError> {
        self.writable()?;
        let beneath = self.beneath()?;
        blocking(move || {
            if let Some(size) = attrs.size {
                open_regular(&beneath, &path, OFlags::WRONLY, Mode::empty())?.set_len(size)?;
            }
            if let Some(mode) = attrs.permissions {
                chmod(&beneath.open(&path, OFlags::PATH, Mode::empty())?, mode)?;
            }
            Ok(())
        })
        .await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &self,
        id: u32,
        handle: &str,
        attrs: FileAttributes,
    ) -> Result<Status, VolumeError> {
        self.writable()?;
        let file = self.handles.file(handle)?;
        blocking(move || {
            if let Some(size) = attrs.size {
                file.set_len(size)?;
            }
            if let Some(mode) = attrs.permissions {
                rustix::fs::fchmod(&*file, settable(mode))?;
            }
            Ok(())
        })
        .await?;
        Ok(ok(id))
    }

    async fn opendir(&self, id: u32, path: String) -> Result<Handle, VolumeError> {
        let beneath = self.beneath()?;
        self.handles.room()?;
        let listing = blocking(move || {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            Listing::new(beneath.open(&path, flags, Mode::empty())?)
        })
        .await?;
        Ok(Handle {
            id,
            handle: self
                .handles
                .keep(Open::Dir(Arc::new(Mutex::new(listing))))?,
        })
    }

    async fn readdir(&self, id: u32, handle: &str) -> Result<Name, VolumeError> {
        let listing = self.handles.listing(handle)?;
        let files = blocking(move || {
            let mut listing = listing.lock().unwrap_or_else(PoisonError::into_inner);
            listing.next_reply(READDIR_REPLY_BYTES)
        })
        .await?;
        if files.is_empty() {
            return Err(VolumeError::Eof);
        }
        Ok(Name { id, files })
    }

    async fn remove(&self, id: u32, filename: String) -> Result<Status, VolumeError> {
        self.writable()?;
        let beneath = self.beneath()?;
        blocking(move || {
            let entry = beneath.entry(&filename)?;
            Ok(rustix::fs::unlinkat(
                &entry.dir,
                &entry.name,
                AtFlags::empty(),
            )?)
        })
        .await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, VolumeError> {
        self.writable()?;
        let beneath = self.beneath()?;
        let mode = settable(attrs.permissions.unwrap_or(0o777));
        blocking(move || {
            let entry = beneath.entry(&path)?;
            Ok(rustix::fs::mkdirat(&entry.dir, &entry.name, mode)?)
        })
        .await?;
        Ok(ok(id))
    }

    async fn rmdir(&self, id: u32, path: String) -> Result<Status, VolumeError> {
        self.writable()?;
        let beneath = self.beneath()?;
        blocking(move || {
            let entry = beneath.entry(&path)?;
            Ok(rustix::fs::unlinkat(
                &entry.dir,
                &entry.name,
                AtFlags::REMOVEDIR,
            )?)
        })
        .await?;
        Ok(ok(id))
    }

    async fn rename(
        &self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, VolumeError> {
        self.writable()?;
        let beneath = self.beneath()?;
        blocking(move || {
            let (from, to) = (beneath.entry(&oldpath)?, beneath.entry(&newpath)?);
            Ok(rustix::fs::renameat(
                &from.dir, &from.name, &to.dir, &to.name,
            )?)
        })
        .await?;
        Ok(ok(id))
    }

    async fn readlink(&self, id: u32, path: String) -> Result<Name, VolumeError> {
        let beneath = self.beneath()?;
        let target = blocking(move || {
            let entry = beneath.entry(&path)?;
            Ok(rustix::fs::readlinkat(&entry.dir, &entry.name, Vec::new())?)
        })
        .await?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy())],
        })
    }
}

/// A file's attributes as SFTP has them: its mode with its type, as sshfs expects.
fn attributes(stat: &Stat) -> FileAttributes {
    FileAttributes {
        size: u64::try_from(stat.st_size).ok(),
        uid: Some(stat.st_uid),
        gid: Some(stat.st_gid),
        permissions: Some(stat.st_mode),
        atime: Some(seconds(stat.st_atime)),
        mtime: Some(seconds(stat.st_mtime)),
        ..FileAttributes::default()
    }
}

/// A time in seconds since 1970 as SFTP has it; 0 for what it cannot hold.
fn seconds(time: impl TryInto<u32>) -> u32 {
    time.try_into().unwrap_or(0)
}

fn realpath(id: u32, path: &str) -> Name {
    Name {
        id,
        files: vec![File::dummy(confined(path))],
    }
}

/// Runs file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    tokio::task::spawn_blocking(work).await?
}

/// `path` with `.` and `..` resolved without ever leaving `/`.
pub(super) fn confined(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}
