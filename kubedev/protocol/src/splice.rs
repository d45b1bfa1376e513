//! Relaying a TCP connection over a stream (or to another connection) and back: the copy
//! loop kubedev's relays share (the agent's flows and takeovers, tunneld's delivery to local
//! ports and its `--to-pod` ports). Two copy on their own: the agent's wiretapped
//! connections, whose bytes also go to the wiretaps, and tunneld's cluster network, which
//! bounds how long the workstation's side may take to close.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved per read and write, each way.
pub const CHUNK: usize = 64 * 1024;

/// Copies both ways until both are done; each direction ends on its own (half-close), as
/// the endpoints' own FINs do. Returns the bytes moved from `a` to `b` and back.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, CHUNK, CHUNK).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn each_direction_ends_on_its_own() {
        let (mut client, mut client_end) = tokio::io::duplex(1024);
        let (mut server_end, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { splice(&mut client_end, &mut server_end).await });
        client.write_all(b"request").await.expect("send");
        client.shutdown().await.expect("half-close");
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.expect("request");
        assert_eq!(request, b"request");
        // The other direction still flows after the first ended.
        server.write_all(b"answer").await.expect("answer");
        server.shutdown().await.expect("close");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        assert_eq!(answer, b"answer");
        assert_eq!(relay.await.expect("relay").expect("spliced"), (7, 6));
    }
}
