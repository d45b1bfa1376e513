//! Open files handed from one process to another over a Unix socket (`SCM_RIGHTS`): a
//! command's own network namespace (its TUN device and namespaces) on its way from the
//! process that made it to tunneld, and sockets made inside that namespace for tunneld.
//! Each message is a few bytes with the files attached to them; files arrive close-on-exec.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most files one message carries.
pub const MAX_FILES: usize = 4;

/// Sends `message` (not empty: an empty one reads as the peer closing) with `files`
/// attached, in one piece. Files are given by number, as some crates only give theirs
/// (a TUN device's): a number that is no open file fails the send.
pub fn send(socket: impl AsFd, message: &[u8], files: &[RawFd]) -> std::io::Result<()> {
    if message.is_empty() || files.len() > MAX_FILES {
        return Err(std::io::Error::other(
            "a message is one byte or more, with at most four files",
        ));
    }
    let rights = [ControlMessage::ScmRights(files)];
    let control = if files.is_empty() {
        &[][..]
    } else {
        &rights[..]
    };
    let sent = sendmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &[IoSlice::new(message)],
        control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != message.len() {
        return Err(std::io::Error::other("the message was cut short"));
    }
    Ok(())
}

/// Receives one message into `buffer` and the files attached to it; returns its length
/// (0: the peer closed) and the files.
pub fn receive(socket: impl AsFd, buffer: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FILES))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut files = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(attached) = message {
            files.extend(attached);
        }
    }
    Ok((received.bytes, files))
}

/// [`send`] on a connection of the async runtime.
pub async fn send_on(stream: &UnixStream, message: &[u8], files: &[RawFd]) -> std::io::Result<()> {
    stream
        .async_io(Interest::WRITABLE, || send(stream, message, files))
        .await
}

/// [`receive`] on a connection of the async runtime.
pub async fn receive_on(
    stream: &UnixStream,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    stream
        .async_io(Interest::READABLE, || receive(stream, buffer))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Seek as _, Write as _};

    #[test]
    fn a_file_sent_is_the_same_open_file_on_the_other_side() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let path = std::env::temp_dir().join(format!("kubedev-fd-passing-{}", std::process::id()));
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("file");
        std::fs::remove_file(&path).expect("unlinked: only the open file is left");
        send(&ours, b"tun", &[file.as_raw_fd()]).expect("send");
        let mut buffer = [0u8; 16];
        let (len, files) = receive(&theirs, &mut buffer).expect("receive");
        assert_eq!(&buffer[..len], b"tun");
        let [received] = <[OwnedFd; 1]>::try_from(files).expect("one file");
        std::fs::File::from(received)
            .write_all(b"written on the far side")
            .expect("write");
        let mut content = String::new();
        file.rewind().expect("rewind");
        file.read_to_string(&mut content).expect("read");
        assert_eq!(content, "written on the far side");
    }

    #[test]
    fn a_closed_peer_reads_as_an_empty_message_and_bad_input_is_refused() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(send(&ours, b"", &[]).is_err());
        drop(ours);
        let (len, files) = receive(&theirs, &mut [0u8; 4]).expect("receive");
        assert_eq!((len, files.len()), (0, 0));
    }
}
