//! The agent's answers to what a workstation opens a stream for: every request gets one
//! [`OpenReply`] before anything else flows on its stream.

use kubedev_protocol::OpenReply;
use kubedev_protocol::codec::write_message;
use kubedev_protocol::mux::MuxStream;

/// Answers a request with why it cannot be served; the stream ends with it.
pub(crate) async fn refuse(stream: &mut MuxStream, reason: String) -> std::io::Result<()> {
    tracing::debug!("refused: {reason}");
    answer(stream, &OpenReply::Failed { reason }).await
}

/// Answers a request on its stream.
pub(crate) async fn answer(stream: &mut MuxStream, reply: &OpenReply) -> std::io::Result<()> {
    write_message(stream, reply)
        .await
        .map_err(std::io::Error::other)
}
