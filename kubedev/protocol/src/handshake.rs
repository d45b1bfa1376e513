//! The versioned handshake that opens every session, before the multiplexer starts.

use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{CodecError, read_message, write_message};
use super::{HANDSHAKE_TIMEOUT, Hello, HelloReply, PROTOCOL_VERSION};

/// Why a session did not open.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side sent nothing in time.
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The two sides speak different protocol versions.
    #[error(
        "protocol version mismatch: this side speaks {ours}, the other {theirs}; \
         use a kubedev agent image of the same release as the plugins (--agent-image)"
    )]
    VersionMismatch {
        /// This side's version.
        ours: u32,
        /// The other side's version.
        theirs: u32,
    },
    /// The agent refused, and said why.
    #[error("the agent refused the session: {0}")]
    Refused(String),
    /// The client's token is not the agent's.
    #[error("wrong session token")]
    BadToken,
    /// The connection failed, or carried something unreadable.
    #[error("handshake: {0}")]
    Codec(#[from] CodecError),
}

/// tunneld's side: introduces itself and returns the agent's name and version.
pub async fn greet_agent<S>(io: &mut S, token: &str, client: &str) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            token: token.to_owned(),
            client: client.to_owned(),
        };
        write_message(io, &hello).await?;
        match read_message(io).await? {
            HelloReply::Welcome { protocol, agent } if protocol == PROTOCOL_VERSION => Ok(agent),
            HelloReply::Welcome { protocol, .. } => Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: protocol,
            }),
            HelloReply::Refused { reason } => Err(HandshakeError::Refused(reason)),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The agent's side: accepts a client that speaks our version and knows the token,
/// tells any other why it is refused, and returns the client's [`Hello`].
pub async fn welcome_client<S>(
    io: &mut S,
    token: &str,
    agent: &str,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let hello: Hello = read_message(io).await?;
        let refusal = if hello.protocol != PROTOCOL_VERSION {
            Some(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: hello.protocol,
            })
        } else if !same_secret(&hello.token, token) {
            Some(HandshakeError::BadToken)
        } else {
            None
        };
        let reply = match &refusal {
            // The client compares versions itself and explains the mismatch.
            Some(HandshakeError::VersionMismatch { .. }) | None => HelloReply::Welcome {
                protocol: PROTOCOL_VERSION,
                agent: agent.to_owned(),
            },
            Some(other) => HelloReply::Refused {
                reason: other.to_string(),
            },
        };
        write_message(io, &reply).await?;
        match refusal {
            Some(err) => Err(err),
            None => Ok(hello),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matching_token_and_version_are_welcome() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let (greeted, welcomed) = tokio::join!(
            greet_agent(&mut client, "s3cret", "tunneld test"),
            welcome_client(&mut agent, "s3cret", "kubedev-agent test"),
        );
        assert_eq!(greeted.expect("welcome"), "kubedev-agent test");
        assert_eq!(welcomed.expect("hello").client, "tunneld test");
    }

    #[tokio::test]
    async fn wrong_token_is_refused_with_a_reason() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let (greeted, welcomed) = tokio::join!(
            greet_agent(&mut client, "guess", "tunneld test"),
            welcome_client(&mut agent, "s3cret", "kubedev-agent test"),
        );
        assert!(matches!(welcomed, Err(HandshakeError::BadToken)));
        let err = greeted.expect_err("refused").to_string();
        assert_eq!(err, "the agent refused the session: wrong session token");
    }

    #[tokio::test]
    async fn other_protocol_version_is_explained() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let old_client = async {
            let hello = Hello {
                protocol: PROTOCOL_VERSION + 1,
                token: "s3cret".into(),
                client: "tunneld future".into(),
            };
            write_message(&mut client, &hello).await.expect("write");
        };
        let (_, welcomed) = tokio::join!(old_client, welcome_client(&mut agent, "s3cret", "agent"));
        let err = welcomed.expect_err("mismatch").to_string();
        assert!(err.contains("protocol version mismatch"), "{err}");
        assert!(err.contains("--agent-image"), "says what to do: {err}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (mut client, _agent) = tokio::io::duplex(4096);
        let err = greet_agent(&mut client, "t", "c")
            .await
            .expect_err("timeout");
        assert!(matches!(err, HandshakeError::Timeout));
    }
}
