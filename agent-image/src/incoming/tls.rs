//! TLS on a filtered port whose app terminates TLS itself (`--tls-secret`): the agent
//! answers the client with the app's own certificate and key, offering the HTTP versions
//! the app speaks (it asks the app once), reads each request to route it, and speaks TLS
//! onward as the client did (same HTTP version, same server name), each handshake bounded: to
//! the app, which must present that same certificate, and to a workstation, whose server
//! may present any (a local development certificate: the stream to it is the session's
//! own, authenticated by its token).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, client, server};
use tokio_util::either::Either;

mod configs;

use configs::Configs;

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

/// The app's certificate and key, as a server and as what the app must present; read
/// again when the Secret is renewed.
pub(crate) struct Tls {
    /// Where they are read from (none: given once).
    dir: Option<PathBuf>,
    /// The settings of the certificate read last, and when its file was changed.
    current: Mutex<(Arc<Configs>, Option<SystemTime>)>,
    /// Whether the app speaks HTTP/2, by port, once it said.
    app_speaks_h2: Mutex<HashMap<u16, bool>>,
}

/// How long a TLS handshake with the app or a workstation may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `kubernetes.io/tls` Secret holds them, and again whenever `tls.crt` changes.
    pub(crate) fn load(dir: &Path) -> Result<Self, TlsError> {
        let (chain, key, modified) = read(dir)?;
        let configs = Arc::new(Configs::new(chain, key, &[])?);
        Ok(Self {
            dir: Some(dir.to_owned()),
            current: Mutex::new((configs, modified)),
            app_speaks_h2: Mutex::default(),
        })
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, (Arc<Configs>, Option<SystemTime>)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The settings of the certificate in force: read again where its file changed (the
    /// kubelet renews a mounted Secret in place), keeping the earlier leaf pinned too, as
    /// the app may present it until it reloads.
    fn configs(&self) -> Arc<Configs> {
        let mut current = self.lock_current();
        let Some(dir) = &self.dir else {
            return current.0.clone();
        };
        let modified = std::fs::metadata(dir.join("tls.crt")).and_then(|meta| meta.modified());
        if modified.as_ref().ok() == current.1.as_ref() {
            return current.0.clone();
        }
        let renewed = read(dir).and_then(|(chain, key, modified)| {
            let earlier = [current.0.leaf.clone()];
            Ok((Arc::new(Configs::new(chain, key, &earlier)?), modified))
        });
        match renewed {
            Ok(renewed) => {
                tracing::info!("the app's certificate changed: using the new one");
                *current = renewed;
            }
            Err(err) => tracing::warn!("the app's certificate changed, and reads: {err}"),
        }
        current.0.clone()
    }

    /// Completes the handshake of a client of the app on `app_port`, offering the HTTP
    /// versions the app speaks; returns the version and server name the client chose.
    pub(crate) async fn accept<C>(
        self: &Arc<Self>,
        connection: C,
        app_port: u16,
    ) -> io::Result<(server::TlsStream<C>, Onward)>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), connection).await?;
        let name = (start.client_hello().server_name())
            .and_then(|name| ServerName::try_from(name.to_owned()).ok())
            .unwrap_or_else(|| ServerName::try_from("localhost").expect("a valid name"));
        let configs = self.configs();
        let h2 = self.app_speaks_h2(&configs, app_port, &name).await;
        let server = configs.servers[usize::from(h2)].clone();
        let stream = start.into_stream(server).await?;
        let version = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Version::Http2,
            _ => Version::Http1,
        };
        let onward = Onward {
            configs,
            version,
            name,
        };
        Ok((stream, onward))
    }

    /// Whether the app on `port` speaks HTTP/2 in TLS, as its handshake for `name` said
    /// (once; until it answers, HTTP/1.1 only).
    async fn app_speaks_h2(
        &self,
        configs: &Configs,
        port: u16,
        name: &ServerName<'static>,
    ) -> bool {
        let known = |known: &Mutex<HashMap<u16, bool>>| {
            let known = known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            known.get(&port).copied()
        };
        if let Some(h2) = known(&self.app_speaks_h2) {
            return h2;
        }
        let asked = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let app = TcpStream::connect(("127.0.0.1", port)).await?;
            let stream = configs.probe.connect(name.clone(), app).await?;
            Ok::<_, io::Error>(stream.get_ref().1.alpn_protocol() == Some(b"h2"))
        });
        match asked.await {
            Ok(Ok(h2)) => {
                let mut known =
                    (self.app_speaks_h2.lock()).unwrap_or_else(std::sync::PoisonError::into_inner);
                known.insert(port, h2);
                h2
            }
            Ok(Err(err)) => {
                tracing::debug!("asking the app's port {port} for its HTTP versions: {err}");
                false
            }
            Err(_) => false,
        }
    }
}

/// The chain and key in `dir`, and when `tls.crt` was changed.
fn read(
    dir: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Option<SystemTime>,
    ),
    TlsError,
> {
    let unreadable = |file: &Path| {
        let file = file.display().to_string();
        move |err: rustls::pki_types::pem::Error| TlsError::Read {
            file,
            reason: err.to_string(),
        }
    };
    let chain_file = dir.join("tls.crt");
    let modified = std::fs::metadata(&chain_file)
        .and_then(|meta| meta.modified())
        .ok();
    let chain = CertificateDer::pem_file_iter(&chain_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(unreadable(&chain_file))?;
    let key_file = dir.join("tls.key");
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(unreadable(&key_file))?;
    Ok((chain, key, modified))
}

/// How a client that spoke TLS is spoken for onward.
#[derive(Clone)]
pub(crate) struct Onward {
    configs: Arc<Configs>,
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
        Peer::App => &onward.configs.to_app,
        Peer::Workstation => &onward.configs.to_workstation,
    };
    let connector = &connectors[onward.version.index()];
    let connecting = connector.connect(onward.name.clone(), io);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(connected) => Ok(Either::Right(connected?)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no TLS handshake in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConfig, ServerConfig};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A self-signed certificate for `name` and its key, as DER and as PEM.
    struct Pair {
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        pem: (String, String),
    }

    fn certificate(name: &str) -> Pair {
        let signed = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a cert");
        let key = PrivateKeyDer::try_from(signed.signing_key.serialize_der()).expect("a key");
        let pem = (signed.cert.pem(), signed.signing_key.serialize_pem());
        Pair {
            cert: signed.cert.der().clone(),
            key,
            pem,
        }
    }

    /// `pair` written as a mounted `kubernetes.io/tls` Secret is, in a directory of the
    /// test's own, changed at `at` seconds.
    fn mount(dir: &Path, pair: &Pair, at: u64) {
        std::fs::create_dir_all(dir).expect("a directory");
        std::fs::write(dir.join("tls.key"), &pair.pem.1).expect("tls.key");
        std::fs::write(dir.join("tls.crt"), &pair.pem.0).expect("tls.crt");
        let file = std::fs::File::options()
            .append(true)
            .open(dir.join("tls.crt"))
            .expect("open");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        file.set_modified(at).expect("mtime");
    }

    /// The agent's TLS with `pair`, read from a directory of the test's own.
    fn tls_of(test: &str, pair: &Pair) -> (Arc<Tls>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("kubedev-tls-{test}-{}", std::process::id()));
        mount(&dir, pair, 1);
        (Arc::new(Tls::load(&dir).expect("usable")), dir)
    }

    /// A TLS server with `pair` speaking `alpn`, answering `hello` to each handshake.
    fn acceptor(pair: &Pair, alpn: &[&[u8]]) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![pair.cert.clone()], pair.key.clone_key())
            .expect("a server config");
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }

    async fn greet<S: AsyncRead + AsyncWrite + Unpin>(acceptor: TlsAcceptor, io: S) {
        if let Ok(mut stream) = acceptor.accept(io).await {
            let _ = stream.write_all(b"hello").await;
            let _ = stream.shutdown().await;
        }
    }

    /// The app: `pair` on a loopback port, speaking `alpn`.
    async fn app(pair: &Pair, alpn: &[&[u8]]) -> u16 {
        let acceptor = acceptor(pair, alpn);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(greet(acceptor.clone(), connection));
            }
        });
        port
    }

    /// What a client trusting `trusted`, asking for `web.shop.svc` and `alpn`, makes of
    /// `tls` in front of the app on `app_port`.
    async fn client_hands_over(
        tls: &Arc<Tls>,
        (trusted, app_port): (&CertificateDer<'static>, u16),
        alpn: &[&[u8]],
    ) -> Onward {
        let (near, far) = duplex(64 * 1024);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).expect("a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let client = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("web.shop.svc").expect("a name");
        let (client, accepted) =
            tokio::join!(client.connect(name, near), tls.accept(far, app_port));
        client.expect("the client trusts the app's certificate");
        accepted.expect("accepted").1
    }

    async fn greeting(onward: &Onward, peer: Peer, server: &Pair) -> io::Result<String> {
        let (near, far) = duplex(64 * 1024);
        tokio::spawn(greet(acceptor(server, &[b"h2", b"http/1.1"]), far));
        let mut stream = super::onward(Some(onward), near, peer).await?;
        let mut said = String::new();
        stream.read_to_string(&mut said).await?;
        Ok(said)
    }

    #[tokio::test]
    async fn clients_are_offered_the_http_versions_the_app_speaks() {
        let pair = certificate("web.shop.svc");
        let (tls, dir) = tls_of("versions", &pair);
        let both = app(&pair, &[b"h2", b"http/1.1"]).await;
        let any: &[&[u8]] = &[b"h2", b"http/1.1"];
        let onward = client_hands_over(&tls, (&pair.cert, both), any).await;
        assert_eq!(onward.version, Version::Http2);
        assert_eq!(
            onward.name,
            ServerName::try_from("web.shop.svc").expect("name")
        );
        let onward = client_hands_over(&tls, (&pair.cert, both), &[b"http/1.1"]).await;
        assert_eq!(onward.version, Version::Http1);
        // An app of HTTP/1.1 alone: a client that would speak HTTP/2 speaks HTTP/1.1.
        for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
            let port = app(&pair, alpn).await;
            let onward = client_hands_over(&tls, (&pair.cert, port), any).await;
            assert_eq!(onward.version, Version::Http1, "an app offering {alpn:?}");
        }
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[tokio::test]
    async fn onward_the_app_must_present_its_certificate_and_a_workstation_any() {
        let pair = certificate("web.shop.svc");
        let (tls, dir) = tls_of("onward", &pair);
        let port = app(&pair, &[b"http/1.1"]).await;
        let onward = client_hands_over(&tls, (&pair.cert, port), &[b"http/1.1"]).await;
        let said = greeting(&onward, Peer::App, &pair).await;
        assert_eq!(said.expect("the app"), "hello");
        let impostor = certificate("web.shop.svc");
        let refused = greeting(&onward, Peer::App, &impostor).await;
        assert!(
            refused.is_err(),
            "another certificate on the app's port: {refused:?}"
        );
        let said = greeting(&onward, Peer::Workstation, &certificate("localhost")).await;
        assert_eq!(said.expect("a development certificate here"), "hello");
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_and_the_app_may_present_either() {
        let (old, new) = (certificate("web.shop.svc"), certificate("web.shop.svc"));
        let (tls, dir) = tls_of("renewed", &old);
        let port = app(&old, &[b"http/1.1"]).await;
        mount(&dir, &new, 2);
        // Clients now get the new certificate (they trust the new one only here).
        let onward = client_hands_over(&tls, (&new.cert, port), &[b"http/1.1"]).await;
        for presented in [&old, &new] {
            let said = greeting(&onward, Peer::App, presented).await;
            assert_eq!(said.expect("the app, before or after it reloads"), "hello");
        }
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_finishes_its_handshake_is_given_up() {
        let (tls, dir) = tls_of("silent", &certificate("web.shop.svc"));
        let onward = Onward {
            configs: tls.configs(),
            version: Version::Http1,
            name: ServerName::try_from("web.shop.svc").expect("name"),
        };
        let (near, _silent) = duplex(64 * 1024);
        let Err(refused) = super::onward(Some(&onward), near, Peer::App).await else {
            panic!("a handshake that never ends was waited for");
        };
        assert_eq!(refused.kind(), io::ErrorKind::TimedOut);
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (cert, other) = (certificate("web"), certificate("web"));
        let dir = std::env::temp_dir().join(format!("kubedev-tls-mismatch-{}", std::process::id()));
        mount(
            &dir,
            &Pair {
                pem: (cert.pem.0, other.pem.1),
                ..other
            },
            1,
        );
        let refused = Tls::load(&dir).err().expect("refused");
        assert!(
            refused.to_string().contains("the certificate and key"),
            "{refused}"
        );
        std::fs::remove_dir_all(dir).expect("removed");
    }
}
