//! The versioned handshake that opens every session, before the multiplexer starts: a
//! mutual challenge-response over the session's secret. Each side sends a fresh random
//! nonce; each proves it knows the secret with an HMAC-SHA256 over its role, the agent
//! pod's uid and both nonces. tunneld checks the agent's proof before it proves anything
//! itself, so a pod that only wears a session's labels learns nothing of the secret, and
//! the agent welcomes only a client whose proof holds. The pod's uid (the agent reads its
//! own from the downward API; tunneld, that of the pod it port-forwards to) keeps a pod
//! from relaying the real agent's proof as its own. The secret never crosses the wire.

use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{CodecError, read_message_within, write_message};
use super::{HANDSHAKE_TIMEOUT, Hello, HelloReply, PROTOCOL_VERSION, Proof};

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
    /// The client does not know the session's secret.
    #[error("wrong session token")]
    BadToken,
    /// What answered does not know the session's secret: not this session's agent.
    #[error(
        "what answered is not this session's agent (it does not know the session's secret): \
         nothing was sent to it"
    )]
    NotTheAgent,
    /// The other side answered out of turn.
    #[error("the other side broke the handshake")]
    OutOfTurn,
    /// No randomness for a nonce.
    #[error("no random numbers for the handshake")]
    NoRandom,
    /// The connection failed, or carried something unreadable.
    #[error("handshake: {0}")]
    Codec(#[from] CodecError),
}

/// The largest handshake message: a few short fields, from a peer that has proved nothing.
const HANDSHAKE_MESSAGE_LIMIT: usize = 2048;

/// The most of a refusal's reason shown: it comes from a peer not yet proved.
const REASON_LIMIT: usize = 256;

/// Reads one handshake message.
async fn read_handshake<S, T>(io: &mut S) -> Result<T, CodecError>
where
    S: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    read_message_within(io, HANDSHAKE_MESSAGE_LIMIT).await
}

/// A refusal's reason as it may be shown: short, on one line.
fn shown(reason: &str) -> String {
    let cut: String = reason.chars().take(REASON_LIMIT).collect();
    cut.escape_debug().to_string()
}

/// Which side a proof is from: each side's proof covers its role, so neither can replay
/// the other's.
#[derive(Debug, Clone, Copy)]
enum Role {
    Agent,
    Client,
}

/// What a proof covers: the agent pod it is about and both sides' challenges.
#[derive(Debug, Clone, Copy)]
struct Exchange<'a> {
    pod_uid: &'a str,
    client_nonce: &'a str,
    agent_nonce: &'a str,
}

/// A side's proof that it knows `token`, for this exchange.
fn proof(token: &str, role: Role, exchange: Exchange<'_>) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hex(hmac::sign(&key, &signed(role, exchange)).as_ref())
}

/// Whether `given` is `role`'s proof for this exchange, compared in constant time.
fn proves(token: &str, role: Role, exchange: Exchange<'_>, given: &str) -> bool {
    let Some(tag) = unhex(given) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hmac::verify(&key, &signed(role, exchange), &tag).is_ok()
}

/// The text a proof signs: every field prefixed with its length, so no two exchanges
/// sign the same bytes.
fn signed(role: Role, exchange: Exchange<'_>) -> Vec<u8> {
    let role = match role {
        Role::Agent => "kubedev agent",
        Role::Client => "kubedev client",
    };
    let fields = [
        role,
        exchange.pod_uid,
        exchange.client_nonce,
        exchange.agent_nonce,
    ];
    fields
        .iter()
        .map(|field| format!("{}:{field};", field.len()))
        .collect::<String>()
        .into_bytes()
}

/// Whether `nonce` is one [`nonce`] could have made: 64 lowercase hex digits.
fn well_formed(nonce: &str) -> bool {
    nonce.len() == 64
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh random nonce, hex.
fn nonce() -> Result<String, HandshakeError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| HandshakeError::NoRandom)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || text.len() > 128
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// tunneld's side: challenges the agent in pod `pod_uid`, checks its proof, proves itself,
/// and returns the agent's name and version.
pub async fn greet_agent<S>(
    io: &mut S,
    token: &str,
    client: &str,
    pod_uid: &str,
) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let client_nonce = nonce()?;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            client: client.to_owned(),
            nonce: client_nonce.clone(),
        };
        write_message(io, &hello).await?;
        let (agent, agent_nonce) = match read_handshake(io).await? {
            HelloReply::Challenge { protocol, .. } if protocol != PROTOCOL_VERSION => {
                return Err(HandshakeError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: protocol,
                });
            }
            HelloReply::Challenge {
                agent,
                nonce,
                proof: given,
                ..
            } => {
                let exchange = Exchange {
                    pod_uid,
                    client_nonce: &client_nonce,
                    agent_nonce: &nonce,
                };
                if !well_formed(&nonce) || !proves(token, Role::Agent, exchange, &given) {
                    return Err(HandshakeError::NotTheAgent);
                }
                (agent, nonce)
            }
            HelloReply::Refused { reason } => return Err(HandshakeError::Refused(shown(&reason))),
            HelloReply::Welcome => return Err(HandshakeError::OutOfTurn),
        };
        let exchange = Exchange {
            pod_uid,
            client_nonce: &client_nonce,
            agent_nonce: &agent_nonce,
        };
        let answer = Proof {
            proof: proof(token, Role::Client, exchange),
        };
        write_message(io, &answer).await?;
        match read_handshake(io).await? {
            HelloReply::Welcome => Ok(agent),
            HelloReply::Refused { reason } => Err(HandshakeError::Refused(shown(&reason))),
            HelloReply::Challenge { .. } => Err(HandshakeError::OutOfTurn),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The agent's side, in pod `pod_uid`: proves itself to a client that speaks our version,
/// checks the client's proof, tells a client that fails why, and returns the client's
/// [`Hello`].
pub async fn welcome_client<S>(
    io: &mut S,
    token: &str,
    agent: &str,
    pod_uid: &str,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let hello: Hello = read_handshake(io).await?;
        let agent_nonce = nonce()?;
        let exchange = Exchange {
            pod_uid,
            client_nonce: &hello.nonce,
            agent_nonce: &agent_nonce,
        };
        // Sent whatever the client's version: the client compares versions itself and
        // explains a mismatch.
        let challenge = HelloReply::Challenge {
            protocol: PROTOCOL_VERSION,
            agent: agent.to_owned(),
            nonce: agent_nonce.clone(),
            proof: proof(token, Role::Agent, exchange),
        };
        write_message(io, &challenge).await?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: hello.protocol,
            });
        }
        let answer: Proof = read_handshake(io).await?;
        if !proves(token, Role::Client, exchange, &answer.proof) {
            let refused = HelloReply::Refused {
                reason: HandshakeError::BadToken.to_string(),
            };
            write_message(io, &refused).await?;
            return Err(HandshakeError::BadToken);
        }
        write_message(io, &HelloReply::Welcome).await?;
        Ok(hello)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

#[cfg(test)]
mod tests;
