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
mod tests {
    use super::*;
    use crate::codec::read_message;

    const POD: &str = "6f0b2a4e-agent-pod";

    #[tokio::test]
    async fn matching_token_and_version_are_welcome() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let (greeted, welcomed) = tokio::join!(
            greet_agent(&mut client, "s3cret", "tunneld test", POD),
            welcome_client(&mut agent, "s3cret", "kubedev-agent test", POD),
        );
        assert_eq!(greeted.expect("welcome"), "kubedev-agent test");
        assert_eq!(welcomed.expect("hello").client, "tunneld test");
    }

    #[tokio::test]
    async fn a_client_with_the_wrong_token_is_refused_with_a_reason() {
        // An agent with the wrong token cannot prove itself: the client stops there.
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let greeting = async {
            let greeted = greet_agent(&mut client, "guess", "tunneld test", POD).await;
            drop(client);
            greeted
        };
        let (greeted, welcomed) = tokio::join!(
            greeting,
            welcome_client(&mut agent, "s3cret", "kubedev-agent test", POD),
        );
        assert!(
            matches!(greeted, Err(HandshakeError::NotTheAgent)),
            "{greeted:?}"
        );
        assert!(welcomed.is_err());

        // A client that answers the challenge without knowing the token is refused.
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let guessing = async {
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                client: "guesser".into(),
                nonce: "00".into(),
            };
            write_message(&mut client, &hello).await.expect("write");
            let _: HelloReply = read_message(&mut client).await.expect("challenge");
            let answer = Proof {
                proof: hex(&[0u8; 32]),
            };
            write_message(&mut client, &answer).await.expect("write");
            read_message::<_, HelloReply>(&mut client)
                .await
                .expect("reply")
        };
        let (reply, welcomed) =
            tokio::join!(guessing, welcome_client(&mut agent, "s3cret", "agent", POD));
        assert!(matches!(welcomed, Err(HandshakeError::BadToken)));
        assert_eq!(
            reply,
            HelloReply::Refused {
                reason: "wrong session token".into()
            }
        );
    }

    #[tokio::test]
    async fn an_impostor_learns_nothing_of_the_token() {
        // Whatever answers the client's hello sees only the hello: no token, nothing
        // derived from it.
        let (mut client, mut impostor) = tokio::io::duplex(4096);
        let listening = async {
            let hello: Hello = read_message(&mut impostor).await.expect("hello");
            let reply = HelloReply::Challenge {
                protocol: PROTOCOL_VERSION,
                agent: "impostor".into(),
                nonce: "11".into(),
                proof: hex(&[7u8; 32]),
            };
            write_message(&mut impostor, &reply).await.expect("write");
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut impostor, &mut rest).await;
            (serde_json::to_string(&hello).expect("json"), rest)
        };
        let greeting = async {
            let greeted = greet_agent(&mut client, "s3cret", "tunneld test", POD).await;
            drop(client);
            greeted
        };
        let (greeted, (hello, rest)) = tokio::join!(greeting, listening);
        assert!(
            matches!(greeted, Err(HandshakeError::NotTheAgent)),
            "{greeted:?}"
        );
        assert!(!hello.contains("s3cret"), "{hello}");
        assert!(rest.is_empty(), "nothing after the hello: {rest:?}");
    }

    #[tokio::test]
    async fn other_protocol_version_is_explained() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let future_client = async {
            let hello = Hello {
                protocol: PROTOCOL_VERSION + 1,
                client: "tunneld future".into(),
                nonce: "00".into(),
            };
            write_message(&mut client, &hello).await.expect("write");
        };
        let (_, welcomed) = tokio::join!(
            future_client,
            welcome_client(&mut agent, "s3cret", "agent", POD)
        );
        let err = welcomed.expect_err("mismatch").to_string();
        assert!(err.contains("protocol version mismatch"), "{err}");
        assert!(err.contains("--agent-image"), "says what to do: {err}");
    }

    #[test]
    fn proofs_are_bound_to_the_role_the_pod_and_both_nonces() {
        let exchange = |pod_uid, client_nonce, agent_nonce| Exchange {
            pod_uid,
            client_nonce,
            agent_nonce,
        };
        let agent = proof("t", Role::Agent, exchange(POD, "aa", "bb"));
        assert!(proves("t", Role::Agent, exchange(POD, "aa", "bb"), &agent));
        assert!(
            !proves("t", Role::Client, exchange(POD, "aa", "bb"), &agent),
            "not the client's"
        );
        assert!(
            !proves("t", Role::Agent, exchange("other", "aa", "bb"), &agent),
            "another pod"
        );
        assert!(
            !proves("t", Role::Agent, exchange(POD, "ab", "bb"), &agent),
            "another nonce"
        );
        assert!(
            !proves("t", Role::Agent, exchange(POD, "aa", "bc"), &agent),
            "another nonce"
        );
        assert!(
            !proves("u", Role::Agent, exchange(POD, "aa", "bb"), &agent),
            "another token"
        );
        assert!(
            !proves("t", Role::Agent, exchange(POD, "aa", "bb"), "zz"),
            "not hex"
        );
        assert!(!proves(
            "t",
            Role::Agent,
            exchange(POD, "aa", "bb"),
            &agent.to_uppercase()
        ));
        // Length prefixes: moving a boundary changes what is signed.
        assert_ne!(
            signed(Role::Agent, exchange(POD, "aab", "b")),
            signed(Role::Agent, exchange(POD, "aa", "bb"))
        );
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("+f"), None);
    }

    #[tokio::test]
    async fn a_pod_relaying_the_real_agent_is_not_taken_for_it() {
        // tunneld dials the impostor's pod; the impostor passes everything to and from the
        // real agent, in another pod. The agent's proof names its own pod: refused.
        let (mut client, mut impostor_near) = tokio::io::duplex(4096);
        let (mut impostor_far, mut agent) = tokio::io::duplex(4096);
        let relay = async {
            let hello: Hello = read_message(&mut impostor_near).await.expect("hello");
            write_message(&mut impostor_far, &hello)
                .await
                .expect("relay");
            let challenge: HelloReply = read_message(&mut impostor_far).await.expect("challenge");
            write_message(&mut impostor_near, &challenge)
                .await
                .expect("relay");
            drop(impostor_far);
        };
        let greeting = async {
            let greeted = greet_agent(&mut client, "s3cret", "tunneld", "impostor-pod").await;
            drop(client);
            greeted
        };
        let (greeted, welcomed, ()) = tokio::join!(
            greeting,
            welcome_client(&mut agent, "s3cret", "agent", POD),
            relay
        );
        assert!(
            matches!(greeted, Err(HandshakeError::NotTheAgent)),
            "{greeted:?}"
        );
        assert!(welcomed.is_err(), "the agent never welcomes the relay");
    }

    #[tokio::test]
    async fn an_unproved_peer_may_send_little_and_is_quoted_short() {
        let (mut client, mut agent) = tokio::io::duplex(64 * 1024);
        let big = async {
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                client: "x".repeat(4096),
                nonce: "00".into(),
            };
            write_message(&mut client, &hello).await.expect("write");
        };
        let (_, welcomed) = tokio::join!(big, welcome_client(&mut agent, "t", "agent", POD));
        assert!(
            matches!(
                welcomed,
                Err(HandshakeError::Codec(CodecError::TooLong(..)))
            ),
            "{welcomed:?}"
        );

        let (mut client, mut impostor) = tokio::io::duplex(64 * 1024);
        let refusing = async {
            let _: Hello = read_message(&mut impostor).await.expect("hello");
            let reason = format!("line one\nforged line two{}", "!".repeat(1000));
            let refused = HelloReply::Refused { reason };
            write_message(&mut impostor, &refused).await.expect("write");
        };
        let (greeted, ()) = tokio::join!(greet_agent(&mut client, "t", "c", POD), refusing);
        let Err(HandshakeError::Refused(reason)) = greeted else {
            panic!("{greeted:?}");
        };
        assert!(!reason.contains('\n'), "{reason}");
        assert!(reason.len() < 300, "{}", reason.len());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (mut client, _agent) = tokio::io::duplex(4096);
        let err = greet_agent(&mut client, "t", "c", POD)
            .await
            .expect_err("timeout");
        assert!(matches!(err, HandshakeError::Timeout));
    }
}
