//! The app container's volumes, served over SFTP (russh-sftp) on a stream from the
//! workstation, which mounts them with `sshfs -o passive`. Paths are confined to the
//! volumes' root: `..` never climbs above it. For ingest every change is refused here, in
//! the agent, whatever the client's mount options say.

use std::collections::HashMap;
use std::io::{ErrorKind, SeekFrom};
use std::path::{Path, PathBuf};

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::{OpenReply, VOLUMES_ROOT};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::outgoing::answer;

/// The most one read returns: what sshfs asks for, and what russh-sftp's packets allow.
const MAX_READ: u32 = 256 * 1024;

enum Open {
    File(tokio::fs::File),
    /// A directory's entries, handed out by the first `readdir`.
    Dir(Option<Vec<File>>),
}

/// Serves the volumes over SFTP on `stream` until the workstation ends the session.
pub(crate) async fn serve(mut stream: MuxStream, read_only: bool) -> std::io::Result<()> {
    answer(&mut stream, &OpenReply::Connected).await?;
    let server = VolumeServer::new(Path::new(VOLUMES_ROOT), read_only);
    russh_sftp::server::run(stream, server).await;
    Ok(())
}

struct VolumeServer {
    root: PathBuf,
    read_only: bool,
    open: HashMap<String, Open>,
    next_handle: u64,
}

impl VolumeServer {
    fn new(root: &Path, read_only: bool) -> Self {
        Self {
            root: root.to_owned(),
            read_only,
            open: HashMap::new(),
            next_handle: 0,
        }
    }

    fn local(&self, path: &str) -> PathBuf {
        self.root.join(confined(path).trim_start_matches('/'))
    }

    fn writable(&self) -> Result<(), StatusCode> {
        if self.read_only {
            Err(StatusCode::PermissionDenied)
        } else {
            Ok(())
        }
    }

    fn keep(&mut self, open: Open) -> String {
        self.next_handle += 1;
        let handle = self.next_handle.to_string();
        self.open.insert(handle.clone(), open);
        handle
    }

    fn file(&mut self, handle: &str) -> Result<&mut tokio::fs::File, StatusCode> {
        match self.open.get_mut(handle) {
            Some(Open::File(file)) => Ok(file),
            _ => Err(StatusCode::Failure),
        }
    }
}

/// `path` with `.` and `..` resolved without ever leaving `/`.
fn confined(path: &str) -> String {
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

impl russh_sftp::server::Handler for VolumeServer {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let changes =
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if pflags.intersects(changes) {
            self.writable()?;
        }
        let mut options = tokio::fs::OpenOptions::new();
        options
            .read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                options.create_new(true);
            } else {
                options.create(true);
            }
            options.mode(attrs.permissions.map_or(0o644, |mode| mode & 0o7777));
        }
        let file = options.open(self.local(&filename)).await.map_err(code)?;
        Ok(Handle {
            id,
            handle: self.keep(Open::File(file)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.open.remove(&handle);
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(code)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            let read = file.read(&mut data[filled..]).await.map_err(code)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 && !data.is_empty() {
            return Err(StatusCode::Eof);
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.file(&handle)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(code)?;
        file.write_all(&data).await.map_err(code)?;
        // tokio writes in the background: acknowledge only what the file really holds.
        file.flush().await.map_err(code)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let metadata = tokio::fs::symlink_metadata(self.local(&path))
            .await
            .map_err(code)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let metadata = tokio::fs::metadata(self.local(&path)).await.map_err(code)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let metadata = self.file(&handle)?.metadata().await.map_err(code)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&metadata),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let local = self.local(&path);
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
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.file(&handle)?;
        if let Some(size) = attrs.size {
            file.set_len(size).await.map_err(code)?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let mut entries = tokio::fs::read_dir(self.local(&path)).await.map_err(code)?;
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
            handle: self.keep(Open::Dir(Some(files))),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.open.get_mut(&handle) {
            Some(Open::Dir(files)) => match files.take() {
                Some(files) if !files.is_empty() => Ok(Name { id, files }),
                _ => Err(StatusCode::Eof),
            },
            _ => Err(StatusCode::Failure),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.writable()?;
        tokio::fs::remove_file(self.local(&filename))
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        tokio::fs::create_dir(self.local(&path))
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.writable()?;
        tokio::fs::remove_dir(self.local(&path))
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        tokio::fs::rename(self.local(&oldpath), self.local(&newpath))
            .await
            .map_err(code)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        Ok(Name {
            id,
            files: vec![File::dummy(confined(&path))],
        })
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = tokio::fs::read_link(self.local(&path))
            .await
            .map_err(code)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy())],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh_sftp::server::Handler as _;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kubedev-volumes-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("scratch dir");
        std::fs::write(dir.join("data/seed.txt"), "from the pod").expect("seed");
        dir
    }

    #[tokio::test]
    async fn read_only_volumes_refuse_every_change_whatever_the_client_asks() {
        let root = scratch("ro");
        let mut server = VolumeServer::new(&root, true);
        let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let refused = server
            .open(1, "/data/new.txt".into(), write, FileAttributes::default())
            .await;
        assert!(matches!(refused, Err(StatusCode::PermissionDenied)));
        for refused in [
            server.remove(2, "/data/seed.txt".into()).await,
            server
                .mkdir(3, "/data/dir".into(), FileAttributes::default())
                .await,
            server
                .rename(4, "/data/seed.txt".into(), "/data/moved".into())
                .await,
            server
                .setstat(5, "/data/seed.txt".into(), FileAttributes::default())
                .await,
        ] {
            assert!(matches!(refused, Err(StatusCode::PermissionDenied)));
        }
        let handle = server
            .open(
                6,
                "/data/seed.txt".into(),
                OpenFlags::READ,
                FileAttributes::default(),
            )
            .await
            .expect("reading is allowed");
        let data = server.read(7, handle.handle, 0, 1024).await.expect("read");
        assert_eq!(data.data, b"from the pod");
        assert!(!root.join("data/new.txt").exists());
        std::fs::remove_dir_all(root).ok();
    }

    #[tokio::test]
    async fn writable_volumes_take_new_files() {
        let root = scratch("rw");
        let mut server = VolumeServer::new(&root, false);
        let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = server
            .open(
                1,
                "/data/../data/new.txt".into(),
                write,
                FileAttributes::default(),
            )
            .await
            .expect("created");
        server
            .write(2, handle.handle.clone(), 0, b"from the laptop".to_vec())
            .await
            .expect("written");
        server.close(3, handle.handle).await.expect("closed");
        assert_eq!(
            std::fs::read_to_string(root.join("data/new.txt")).expect("on disk"),
            "from the laptop"
        );
        let listed = server.opendir(4, "/data".into()).await.expect("opendir");
        let names = server.readdir(5, listed.handle).await.expect("entries");
        let mut names: Vec<_> = names.files.into_iter().map(|f| f.filename).collect();
        names.sort();
        assert_eq!(names, ["new.txt", "seed.txt"]);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn paths_never_leave_the_root() {
        assert_eq!(confined("/data/a.txt"), "/data/a.txt");
        assert_eq!(confined("data/./b/../a.txt"), "/data/a.txt");
        assert_eq!(confined("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(confined(""), "/");
        assert_eq!(confined("."), "/");
        let server = VolumeServer::new(Path::new("/kubedev/volumes"), false);
        assert_eq!(
            server.local("/../etc/shadow"),
            Path::new("/kubedev/volumes/etc/shadow")
        );
    }
}
