//! The TLS settings made from one certificate and key: the agent as a server for each set
//! of HTTP versions, and as a client of the app (which must present one of the pinned
//! certificates) and of a workstation (any certificate).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::TlsError;

/// The agent's TLS settings for one certificate and key.
pub(super) struct Configs {
    /// For clients, by whether the app speaks HTTP/2 too (index 1) or HTTP/1.1 only (0):
    /// a client is offered only what the app speaks.
    pub(super) servers: [Arc<ServerConfig>; 2],
    /// To the app, by `Version::index`.
    pub(super) to_app: [TlsConnector; 2],
    /// To a workstation, by `Version::index`.
    pub(super) to_workstation: [TlsConnector; 2],
    /// Asks the app which versions it speaks, offering both.
    pub(super) probe: TlsConnector,
    /// The leaf of `chain`.
    pub(super) leaf: CertificateDer<'static>,
}

impl Configs {
    /// Serves `chain` with `key`; the app must present `chain`'s leaf or one of `earlier`
    /// (the leaves of a certificate renewed during the session, which the app may still
    /// present for a while).
    pub(super) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        earlier: &[CertificateDer<'static>],
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let servers = [server(&[b"http/1.1"])?, server(&[b"h2", b"http/1.1"])?];
        let leaf = chain.first().cloned().ok_or_else(|| TlsError::Read {
            file: "tls.crt".into(),
            reason: "no certificate in it".into(),
        })?;
        let pinned: Vec<_> = [leaf.clone()]
            .into_iter()
            .chain(earlier.iter().cloned())
            .collect();
        let client = |leaves: &[CertificateDer<'static>], alpn: &[&[u8]]| {
            let verifier = Arc::new(Pinned {
                leaves: leaves.to_vec(),
                provider: provider.clone(),
            });
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
            Ok::<_, TlsError>(TlsConnector::from(Arc::new(config)))
        };
        let by_version = |leaves: &[CertificateDer<'static>]| {
            Ok::<_, TlsError>([client(leaves, &[b"http/1.1"])?, client(leaves, &[b"h2"])?])
        };
        Ok(Self {
            servers,
            to_app: by_version(&pinned)?,
            to_workstation: by_version(&[])?,
            probe: client(&pinned, &[b"h2", b"http/1.1"])?,
            leaf,
        })
    }
}

/// Accepts the certificates `leaves` only (the app's), or any (none given: a
/// workstation's); the handshake's signatures are checked either way.
#[derive(Debug)]
struct Pinned {
    leaves: Vec<CertificateDer<'static>>,
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
        let pinned = |leaf: &CertificateDer<'_>| leaf.as_ref() == end_entity.as_ref();
        if self.leaves.is_empty() || self.leaves.iter().any(pinned) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ))
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
