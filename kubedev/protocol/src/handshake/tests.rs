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
