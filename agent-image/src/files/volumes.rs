//! The operations on the app container's volumes, one SFTP request each. Paths are
//! confined to the volumes' root: `..` never climbs above it. For ingest every change is
//! refused here, in the agent, whatever the client's mount options say. Methods take
//! `&self`: the server in [`super`] runs reads concurrently.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};

/// The most one read returns: what sshfs asks for, and what an SFTP packet holds.
const MAX_READ: u32 = 256 * 1024;
/// The most one `readdir` reply holds: sshfs takes no reply over 128 KiB (and drops the
/// mount on one), so a large directory comes in several.
const READDIR_REPLY_BYTES: usize = 64 * 1024;

enum Open {
    /// Read and written at offsets, so requests need no shared cursor.
    File(Arc<std::fs::File>),
    /// A directory's entries not yet handed out by `readdir`.
    Dir(Vec<File>),
}

/// The volumes under one root, and the files and directories a client has open.
pub(super) struct Volumes {
    root: PathBuf,
    /// The root with its own symlinks resolved, which every path must stay under.
    resolved_root: PathBuf,
    read_only: bool,
    open: Mutex<HashMap<String, Open>>,
    next_handle: AtomicU64,
}

impl Volumes {
    pub(super) fn new(root: &Path, read_only: bool) -> Self {
        Self {
            root: root.to_owned(),
            resolved_root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned()),
            read_only,
            open: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(0),
        }
    }

    fn local(&self, path: &str) -> PathBuf {
        self.root.join(confined(path).trim_start_matches('/'))
    }

    /// `path` on this machine, if it stays inside the volumes: a symlink in the pod's files
    /// may point anywhere in the agent's container, so the directories on the way must
    /// resolve inside the root, and so must the entry itself when the operation follows
    /// it (`follows`: open, stat, listing, changing attributes). A symlink that leads out,
    /// or nowhere, is refused.
    async fn inside(&self, path: &str, follows: bool) -> Result<PathBuf, StatusCode> {
        let local = self.local(path);
        if local == self.root {
            return Ok(local);
        }
        let entry = tokio::fs::symlink_metadata(&local).await;
        let resolved = match (&entry, local.parent()) {
            (Ok(_), _) if follows => tokio::fs::canonicalize(&local).await,
            (_, Some(parent)) => tokio::fs::canonicalize(parent).await,
            (_, None) => return Err(StatusCode::PermissionDenied),
        };
        match resolved {
            Ok(resolved) if resolved.starts_with(&self.resolved_root) => Ok(local),
            Ok(_) => Err(StatusCode::PermissionDenied),
            // A symlink to nothing would create its target wherever it points.
            Err(_) if entry.is_ok() => Err(StatusCode::PermissionDenied),
            Err(err) => Err(code(err)),
        }
    }

    fn writable(&self) -> Result<(), StatusCode> {
        if self.read_only {
            Err(StatusCode::PermissionDenied)
        } else {
            Ok(())
        }
    }

    fn opened(&self) -> MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn keep(&self, open: Open) -> String {
        let handle = (self.next_handle.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        self.opened().insert(handle.clone(), open);
        handle
    }

    fn file(&self, handle: &str) -> Result<Arc<std::fs::File>, StatusCode> {
        match self.opened().get(handle) {
            Some(Open::File(file)) => Ok(file.clone()),
            _ => Err(StatusCode::Failure),
        }
    }

    /// The reply to `request`: its answer, or the status it failed with.
    pub(super) async fn respond(&self, request: Packet) -> Packet {
        let id = request.get_request_id();
        let answer = match request {
            Packet::Init(_) => Ok(Packet::Version(Version::new())),
            Packet::Open(r) => self
                .open(r.id, r.filename, r.pflags, r.attrs)
                .await
                .map(Packet::Handle),
            Packet::Close(r) => Ok(Packet::Status(self.close(r.id, &r.handle))),
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
            Packet::ReadDir(r) => self.readdir(r.id, &r.handle).map(Packet::Name),
            Packet::Remove(r) => self.remove(r.id, r.filename).await.map(Packet::Status),
            Packet::MkDir(r) => self.mkdir(r.id, r.path).await.map(Packet::Status),
            Packet::RmDir(r) => self.rmdir(r.id, r.path).await.map(Packet::Status),
            Packet::Rename(r) => self
                .rename(r.id, r.oldpath, r.newpath)
                .await
                .map(Packet::Status),
            Packet::RealPath(r) => Ok(Packet::Name(realpath(r.id, &r.path))),
            Packet::Stat(r) => self.stat(r.id, r.path).await.map(Packet::Attrs),
            Packet::ReadLink(r) => self.readlink(r.id, r.path).await.map(Packet::Name),
            Packet::Symlink(_) | Packet::Extended(_) => Err(StatusCode::OpUnsupported),
            _ => Err(StatusCode::BadMessage),
        };
        answer.unwrap_or_else(|code| Packet::error(id, code))
    }

    async fn open(
        &self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, StatusCode> {
        let changes =
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if pflags.intersects(changes) {
            self.writable()?;
        }
        let mut options = std::fs::OpenOptions::new();
        options
            .read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE));
        if pflags.contains(OpenFlags::CREATE) {
            use std::os::unix::fs::OpenOptionsExt as _;
            if pflags.contains(OpenFlags::EXCLUDE) {
                options.create_new(true);
            } else {
                options.create(true);
            }
            options.mode(attrs.permissions.map_or(0o644, |mode| mode & 0o7777));
        }
        let local = self.inside(&filename, true).await?;
        let file = blocking(move || options.open(local)).await?;
        Ok(Handle {
            id,
            handle: self.keep(Open::File(Arc::new(file))),
        })
    }

    fn close(&self, id: u32, handle: &str) -> Status {
        self.opened().remove(handle);
        ok(id)
    }

    async fn read(&self, id: u32, handle: &str, offset: u64, len: u32) -> Result<Data, StatusCode> {
        let file = self.file(handle)?;
        let wanted = len.min(MAX_READ) as usize;
        let data = blocking(move || {
            let mut data = vec![0u8; wanted];
            let mut filled = 0;
            while filled < wanted {
                let read = match file.read_at(&mut data[filled..], offset + filled as u64) {
                    // A FIFO or a device has no offsets: its data comes in order.
                    Err(err) if err.kind() == ErrorKind::NotSeekable => {
                        (&*file).read(&mut data[filled..])
                    }
                    read => read,
                };
                match read {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            data.truncate(filled);
            Ok(data)
        })
        .await?;
        if data.is_empty() && wanted > 0 {
            return Err(StatusCode::Eof);
        }
        Ok(Data { id, data })
    }

    async fn write(
        &self,
        id: u32,
        handle: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, StatusCode> {
        self.writable()?;
        let file = self.file(handle)?;
        // Acknowledged once the file holds it: a positional write is not buffered here.
        blocking(move || file.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&self, id: u32, path: String) -> Result<Attrs, StatusCode> {
        let metadata = tokio::fs::symlink_metadata(self.inside(&path, false).await?)
            .await
            .map_err(code)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn stat(&self, id: u32, path: String) -> Result<Attrs, StatusCode> {
        let local = self.inside(&path, true).await?;
        let metadata = tokio::fs::metadata(local).await.map_err(code)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn fstat(&self, id: u32, handle: &str) -> Result<Attrs, StatusCode> {
        let file = self.file(handle)?;
        let metadata = blocking(move || file.metadata()).await?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn setstat(
        &self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusCode> {
        self.writable()?;
        let local = self.inside(&path, true).await?;
        if let Some(size) = attrs.size {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&local)
                .await
                .map_err(code)?;
            file.set_len(size).await.map_err(code)?;
        }
        if let Some(mode) = attrs.permissions {
            use std::os::unix::fs::PermissionsExt as _;
            let permissions = std::fs::Permissions::from_mode(mode & 0o7777);
            tokio::fs::set_permissions(&local, permissions)
                .await
                .map_err(code)?;
        }
        Ok(ok(id))
    }

    async fn fsetstat(
        &self,
        id: u32,
        handle: &str,
        attrs: FileAttributes,
    ) -> Result<Status, StatusCode> {
        self.writable()?;
        let file = self.file(handle)?;
        if let Some(size) = attrs.size {
            blocking(move || file.set_len(size)).await?;
        }
        Ok(ok(id))
    }

    async fn opendir(&self, id: u32, path: String) -> Result<Handle, StatusCode> {
        let local = self.inside(&path, true).await?;
        let mut entries = tokio::fs::read_dir(local).await.map_err(code)?;
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(code)? {
            let Ok(metadata) = tokio::fs::symlink_metadata(entry.path()).await else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push(File::new(name, FileAttributes::from(&metadata)));
        }
        Ok(Handle {
            id,
            handle: self.keep(Open::Dir(files)),
        })
    }

    fn readdir(&self, id: u32, handle: &str) -> Result<Name, StatusCode> {
        let mut opened = self.opened();
        let Some(Open::Dir(left)) = opened.get_mut(handle) else {
            return Err(StatusCode::Failure);
        };
        if left.is_empty() {
            return Err(StatusCode::Eof);
        }
        let mut bytes = 0;
        let fits = left
            .iter()
            .take_while(|file| {
                bytes += encoded_len(file);
                bytes <= READDIR_REPLY_BYTES
            })
            .count();
        Ok(Name {
            id,
            files: left.drain(..fits.max(1)).collect(),
        })
    }

    async fn remove(&self, id: u32, filename: String) -> Result<Status, StatusCode> {
        self.writable()?;
        tokio::fs::remove_file(self.inside(&filename, false).await?)
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn mkdir(&self, id: u32, path: String) -> Result<Status, StatusCode> {
        self.writable()?;
        tokio::fs::create_dir(self.inside(&path, false).await?)
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn rmdir(&self, id: u32, path: String) -> Result<Status, StatusCode> {
        self.writable()?;
        tokio::fs::remove_dir(self.inside(&path, false).await?)
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn rename(
        &self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, StatusCode> {
        self.writable()?;
        let (from, to) = (
            self.inside(&oldpath, false).await?,
            self.inside(&newpath, false).await?,
        );
        tokio::fs::rename(from, to).await.map_err(code)?;
        Ok(ok(id))
    }

    async fn readlink(&self, id: u32, path: String) -> Result<Name, StatusCode> {
        let target = tokio::fs::read_link(self.inside(&path, false).await?)
            .await
            .map_err(code)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy())],
        })
    }
}

/// A directory entry's size in a reply, at most: both names with their lengths, and every
/// attribute (flags, size, owner, permissions, times).
fn encoded_len(file: &File) -> usize {
    4 + file.filename.len() + 4 + file.longname.len() + 32
}

fn realpath(id: u32, path: &str) -> Name {
    Name {
        id,
        files: vec![File::dummy(confined(path))],
    }
}

/// Runs file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StatusCode> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(code),
        Err(_) => Err(StatusCode::Failure),
    }
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

fn code(err: std::io::Error) -> StatusCode {
    match err.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}
