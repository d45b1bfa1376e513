//! TLS on a filtered port whose app terminates TLS itself (`--tls-secret`): the agent
//! answers the client with the app's own certificate and key, reads each request to route
//! it, and speaks TLS onward as the client did (same HTTP version, same server name): to
//! the app, which must present that same certificate, and to a workstation, whose server
//! may present any (a local development certificate: the stream to it is the session's
//! own, authenticated by its token).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use tokio_util::either::Either;

/// The HTTP version a client chose in its TLS handshake (ALPN; HTTP/1.1 without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Http1,
    Http2,
}

impl Version {
    fn index(self) -> usize {
        match self {
            Self::Http1 => 0,
            Self::Http2 => 1,
        }
    }
}

/// Where a request goes on from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    App,
    Workstation,
}

/// The app's certificate and key, as a server and as what the app must present.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    /// To the app, by [`Version::index`].
    to_app: [TlsConnector; 2],
    /// To a workstation, by [`Version::index`].
    to_workstation: [TlsConnector; 2],
}

/// Why the certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file is missing or not PEM.
    #[error("reading {file}: {reason}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// rustls refused them (a key that does not match the certificate, say).
    #[error("the certificate and key: {0}")]
    Refused(#[from] rustls::Error),
}

impl Tls {
    /// Reads `tls.crt` (the chain, leaf first) and `tls.key` from `dir`, as a
    /// `kubernetes.io/tls` Secret holds them.
    pub(crate) fn load(dir: &Path) -> Result<Self, TlsError> {
        let unreadable = |file: &Path| {
            let file = file.display().to_string();
            move |err: rustls::pki_types::pem::Error| TlsError::Read {
                file,
                reason: err.to_string(),
            }
        };
        let chain_file = dir.join("tls.crt");
        let chain = CertificateDer::pem_file_iter(&chain_file)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(unreadable(&chain_file))?;
        let key_file = dir.join("tls.key");
        let key = PrivateKeyDer::from_pem_file(&key_file).map_err(unreadable(&key_file))?;
        Self::new(chain, key)
    }

    /// Serves `chain` with `key`; the app must present `chain`'s leaf.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let leaf = chain.into_iter().next().ok_or_else(|| TlsError::Read {
            file: "tls.crt".into(),
            reason: "no certificate in it".into(),
        })?;
        let connectors = |leaf: Option<CertificateDer<'static>>| {
            let verifier = Arc::new(Pinned {
                leaf,
                provider: provider.clone(),
            });
            let client = |alpn: &[u8]| -> Result<TlsConnector, TlsError> {
                let mut config = ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier.clone())
                    .with_no_client_auth();
                config.alpn_protocols = vec![alpn.to_vec()];
                Ok(TlsConnector::from(Arc::new(config)))
            };
            Ok::<_, TlsError>([client(b"http/1.1")?, client(b"h2")?])
        };
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            to_app: connectors(Some(leaf))?,
            to_workstation: connectors(None)?,
        })
    }

    /// Completes a client's handshake; returns the HTTP version and server name it chose.
    pub(crate) async fn accept<C>(
        self: &Arc<Self>,
        connection: C,
    ) -> io::Result<(server::TlsStream<C>, Onward)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor.accept(connection).await?;
        let (_, session) = stream.get_ref();
        let version = match session.alpn_protocol() {
            Some(b"h2") => Version::Http2,
            _ => Version::Http1,
        };
        let name = (session.server_name())
            .and_then(|name| ServerName::try_from(name.to_owned()).ok())
            .unwrap_or_else(|| ServerName::try_from("localhost").expect("a valid name"));
        let onward = Onward {
            tls: self.clone(),
            version,
            name,
        };
        Ok((stream, onward))
    }
}

/// How a client that spoke TLS is spoken for onward.
#[derive(Clone)]
pub(crate) struct Onward {
    tls: Arc<Tls>,
    pub(crate) version: Version,
    name: ServerName<'static>,
}

/// `io` to `peer`, in TLS where the client spoke it (`onward`).
pub(crate) async fn onward<S>(
    onward: Option<&Onward>,
    io: S,
    peer: Peer,
) -> io::Result<Either<S, client::TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(onward) = onward else {
        return Ok(Either::Left(io));
    };
    let connectors = match peer {
        Peer::App => &onward.tls.to_app,
        Peer::Workstation => &onward.tls.to_workstation,
    };
    let connector = &connectors[onward.version.index()];
    Ok(Either::Right(
        connector.connect(onward.name.clone(), io).await?,
    ))
}

/// Accepts the certificate `leaf` only (the app's), or any (`None`: a workstation's); the
/// handshake's signatures are checked either way.
#[derive(Debug)]
struct Pinned {
    leaf: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.leaf {
            Some(leaf) if leaf.as_ref() != end_entity.as_ref() => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            ),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, signature, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, signature, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        (self.provider.signature_verification_algorithms).supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};

    use super::*;

    /// A self-signed certificate for `name`, and its key.
    fn certificate(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let signed = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a cert");
        let key = PrivateKeyDer::try_from(signed.signing_key.serialize_der()).expect("a key");
        (signed.cert.der().clone(), key)
    }

    /// A TLS server on `io` with `cert`, answering `hello` once the handshake is done.
    fn serve(io: DuplexStream, (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>)) {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("a server config");
        tokio::spawn(async move {
            if let Ok(mut stream) = TlsAcceptor::from(Arc::new(config)).accept(io).await {
                let _ = stream.write_all(b"hello").await;
                let _ = stream.shutdown().await;
            }
        });
    }

    /// What a client trusting `trusted`, asking for `name` and `alpn`, makes of `tls`.
    async fn client_hands_over(
        tls: &Arc<Tls>,
        trusted: &CertificateDer<'static>,
        name: &'static str,
        alpn: &[u8],
    ) -> Onward {
        let (near, far) = duplex(64 * 1024);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).expect("a root");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let client = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(name).expect("a name");
        let (client, accepted) = tokio::join!(client.connect(name, near), tls.accept(far));
        client.expect("the client trusts the app's certificate");
        accepted.expect("accepted").1
    }

    async fn greeting(
        onward: &Onward,
        peer: Peer,
        server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    ) -> io::Result<String> {
        let (near, far) = duplex(64 * 1024);
        serve(far, server);
        let mut stream = super::onward(Some(onward), near, peer).await?;
        let mut said = String::new();
        stream.read_to_string(&mut said).await?;
        Ok(said)
    }

    #[tokio::test]
    async fn the_agent_answers_with_the_apps_certificate_and_keeps_the_clients_choices() {
        let app = certificate("web.shop.svc");
        let tls = Arc::new(Tls::new(vec![app.0.clone()], app.1.clone_key()).expect("usable"));
        let onward = client_hands_over(&tls, &app.0, "web.shop.svc", b"h2").await;
        assert_eq!(onward.version, Version::Http2);
        assert_eq!(
            onward.name,
            ServerName::try_from("web.shop.svc").expect("name")
        );
        let onward = client_hands_over(&tls, &app.0, "web.shop.svc", b"http/1.1").await;
        assert_eq!(onward.version, Version::Http1);
    }

    #[tokio::test]
    async fn onward_the_app_must_present_its_certificate_and_a_workstation_any() {
        let app = certificate("web.shop.svc");
        let tls = Arc::new(Tls::new(vec![app.0.clone()], app.1.clone_key()).expect("usable"));
        let onward = client_hands_over(&tls, &app.0, "web.shop.svc", b"http/1.1").await;
        let same = (app.0.clone(), app.1.clone_key());
        assert_eq!(
            greeting(&onward, Peer::App, same).await.expect("the app"),
            "hello"
        );
        let impostor = certificate("web.shop.svc");
        let refused = greeting(&onward, Peer::App, impostor).await;
        assert!(
            refused.is_err(),
            "another certificate on the app's port: {refused:?}"
        );
        let local = certificate("localhost");
        let said = greeting(&onward, Peer::Workstation, local).await;
        assert_eq!(said.expect("a development certificate here"), "hello");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (cert, _) = certificate("web");
        let (_, other_key) = certificate("web");
        let refused = Tls::new(vec![cert], other_key).err().expect("refused");
        assert!(
            refused.to_string().contains("the certificate and key"),
            "{refused}"
        );
    }
}
