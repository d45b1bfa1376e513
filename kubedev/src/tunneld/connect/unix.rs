//! Connecting to this user's tunneld, and to nothing else: the plugins send it the
//! sessions' tokens and run `-- CMD` with the environment it answers, so whatever serves
//! the socket must be this user's own tunneld. The socket file must be a socket of this
//! user's (checked before connecting), and the process at the other end must run as this
//! user (checked with `SO_PEERCRED` before a byte is sent).

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use tokio::net::UnixStream;

use crate::private_files::own_uid;
use crate::tunneld::TunneldError;

/// Connects to the tunneld at `socket`, refusing a socket or a peer that is not this
/// user's.
pub(in crate::tunneld) async fn connect(socket: &Path) -> Result<UnixStream, TunneldError> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(TunneldError::NotRunning(socket.to_owned()));
        }
        Err(source) => return Err(connect_error(socket, source)),
    };
    check_socket_file(socket, meta.file_type().is_socket(), meta.uid(), own_uid())?;
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| connect_error(socket, source))?;
    let peer = stream
        .peer_cred()
        .map_err(|source| connect_error(socket, source))?;
    check_peer(socket, peer.uid(), peer.pid(), own_uid())?;
    Ok(stream)
}

/// Refuses a socket file that is not a socket (a symbolic link is not), or not `you`'s.
fn check_socket_file(
    socket: &Path,
    is_socket: bool,
    owner: u32,
    you: u32,
) -> Result<(), TunneldError> {
    if !is_socket {
        return Err(TunneldError::NotASocket(socket.to_owned()));
    }
    if owner != you {
        return Err(TunneldError::ForeignSocket {
            socket: socket.to_owned(),
            owner,
        });
    }
    Ok(())
}

/// Refuses a peer that runs as another user than `you`.
fn check_peer(socket: &Path, uid: u32, pid: Option<i32>, you: u32) -> Result<(), TunneldError> {
    if uid == you {
        return Ok(());
    }
    Err(TunneldError::Impostor {
        socket: socket.to_owned(),
        uid,
        pid: pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
    })
}

/// What a failed connection means: nothing there, a socket that is not this user's, or
/// something else, shown as it is.
fn connect_error(socket: &Path, source: std::io::Error) -> TunneldError {
    match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            TunneldError::NotRunning(socket.to_owned())
        }
        std::io::ErrorKind::PermissionDenied => match std::fs::symlink_metadata(socket) {
            Ok(meta) if meta.uid() != own_uid() => TunneldError::ForeignSocket {
                socket: socket.to_owned(),
                owner: meta.uid(),
            },
            _ => TunneldError::Connect {
                socket: socket.to_owned(),
                source,
            },
        },
        _ => TunneldError::Connect {
            socket: socket.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_or_a_peer_of_another_user_is_refused_naming_them() {
        let socket = Path::new("/tmp/kubedev-1000/tunneld-dev.sock");
        assert!(check_socket_file(socket, true, 1000, 1000).is_ok());
        let err = check_socket_file(socket, true, 0, 1000).expect_err("root's");
        let message = err.to_string();
        assert!(message.contains("belongs to uid 0"), "{message}");
        assert!(message.contains("sudo"), "{message}");
        assert!(
            message.contains("remove it or stop that tunneld"),
            "{message}"
        );
        assert!(matches!(
            check_socket_file(socket, false, 1000, 1000),
            Err(TunneldError::NotASocket(_))
        ));

        assert!(check_peer(socket, 1000, Some(42), 1000).is_ok());
        let err = check_peer(socket, 1001, Some(4242), 1000).expect_err("impostor");
        let message = err.to_string();
        assert!(message.contains("uid 1001"), "{message}");
        assert!(message.contains("pid 4242"), "{message}");
    }

    #[test]
    fn refused_and_missing_sockets_are_not_running_and_denied_ones_say_whose() {
        let socket = Path::new("/nonexistent/tunneld.sock");
        for kind in [
            std::io::ErrorKind::NotFound,
            std::io::ErrorKind::ConnectionRefused,
        ] {
            assert!(matches!(
                connect_error(socket, kind.into()),
                TunneldError::NotRunning(_)
            ));
        }
        let other = connect_error(
            socket,
            std::io::Error::from_raw_os_error(nix::libc::ENOTSOCK),
        );
        assert!(matches!(other, TunneldError::Connect { .. }), "{other}");
        assert!(other.to_string().contains(&socket.display().to_string()));
    }

    #[tokio::test]
    async fn this_users_own_tunneld_is_accepted() {
        let dir = std::env::temp_dir().join(format!("kubedev-peer-{}", std::process::id()));
        crate::private_files::private_dir(&dir).expect("dir");
        let socket = dir.join("tunneld.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        assert!(connect(&socket).await.is_ok());
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&socket, &link).expect("symlink");
        assert!(matches!(
            connect(&link).await,
            Err(TunneldError::NotASocket(_))
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
