//! tunneld's control channel on Windows: a TCP listener on 127.0.0.1 and an endpoint file,
//! where a Unix socket would be, that names its port and holds two random keys. The file
//! is in the user's own profile, which no other user may read. A client sends the client
//! key before anything else and sends nothing more unless tunneld answers with the server
//! key: a process of another user that took the port after a tunneld exited learns only a
//! key that no tunneld takes any more.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::private_files::{read_own, write_own};
use crate::tunneld::TunneldError;

/// How long either side waits for the other's key.
const KEY_DEADLINE: Duration = Duration::from_secs(5);

/// What the endpoint file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Endpoint {
    address: SocketAddr,
    client_key: [u8; 32],
    server_key: [u8; 32],
}

/// Whether two keys are equal, in a time that tells nothing about where they differ.
fn same_key(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Connects to the tunneld named by the endpoint file `socket`, refusing one that does
/// not answer with the server key.
pub(in crate::tunneld) async fn connect(socket: &Path) -> Result<TcpStream, TunneldError> {
    let endpoint = read_endpoint(socket)?.ok_or_else(|| TunneldError::NotRunning(socket.into()))?;
    let mut stream = TcpStream::connect(endpoint.address)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::ConnectionRefused => TunneldError::NotRunning(socket.into()),
            _ => TunneldError::Connect {
                socket: socket.into(),
                source,
            },
        })?;
    let _ = stream.set_nodelay(true);
    let unproven = || TunneldError::Unproven {
        socket: socket.into(),
        address: endpoint.address.to_string(),
    };
    stream
        .write_all(&endpoint.client_key)
        .await
        .map_err(|_| unproven())?;
    let mut answer = [0u8; 32];
    match tokio::time::timeout(KEY_DEADLINE, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) if same_key(&answer, &endpoint.server_key) => Ok(stream),
        _ => Err(unproven()),
    }
}

fn read_endpoint(socket: &Path) -> Result<Option<Endpoint>, TunneldError> {
    let Some(text) = read_own(socket).map_err(|why| TunneldError::RuntimeDir {
        dir: socket.parent().unwrap_or(socket).into(),
        why,
    })?
    else {
        return Ok(None);
    };
    // A file cut short by a crash is no tunneld.
    Ok(serde_json::from_str(&text).ok())
}

/// tunneld's side: the listener and the endpoint file that names it.
#[derive(Debug)]
pub struct ControlListener {
    listener: TcpListener,
    endpoint: Endpoint,
}

impl ControlListener {
    /// Listens on a port of 127.0.0.1 the system picks, with new keys, and writes the
    /// endpoint file `socket`; refused if a tunneld already answers there.
    pub async fn bind(socket: &Path) -> std::io::Result<Self> {
        if connect(socket).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another tunneld is already serving {}", socket.display()),
            ));
        }
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let random = ring::rand::SystemRandom::new();
        let key = || {
            ring::rand::generate::<[u8; 32]>(&random)
                .map(ring::rand::Random::expose)
                .map_err(|_| std::io::Error::other("no randomness for the control keys"))
        };
        let endpoint = Endpoint {
            address: listener.local_addr()?,
            client_key: key()?,
            server_key: key()?,
        };
        let text = serde_json::to_string(&endpoint).map_err(std::io::Error::other)?;
        // Whole or not at all: a client never reads half an endpoint, and two tunnelds
        // starting at once never write into one file.
        let written = socket.with_extension(format!("sock-new-{}", std::process::id()));
        write_own(&written, &text).map_err(std::io::Error::other)?;
        std::fs::rename(&written, socket)?;
        Ok(Self { listener, endpoint })
    }

    /// Removes the endpoint file `socket` if it is still this listener's: a tunneld that
    /// started meanwhile and replaced it keeps its own.
    pub fn remove_endpoint(&self, socket: &Path) {
        if let Ok(Some(found)) = read_endpoint(socket)
            && same_key(&found.client_key, &self.endpoint.client_key)
        {
            let _ = std::fs::remove_file(socket);
        }
    }

    /// The next connection, not yet proven: see [`Self::admit`].
    pub async fn accept(&self) -> std::io::Result<TcpStream> {
        let (stream, _) = self.listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Admits `stream` once it has sent the client key, and answers with the server key;
    /// the refusal says what it was sent instead.
    pub async fn admit(&self, stream: &mut TcpStream) -> Result<(), String> {
        let mut key = [0u8; 32];
        match tokio::time::timeout(KEY_DEADLINE, stream.read_exact(&mut key)).await {
            Ok(Ok(_)) if same_key(&key, &self.endpoint.client_key) => {}
            Ok(Ok(_)) => return Err("refused a control connection: a wrong key".into()),
            _ => return Err("refused a control connection: no key".into()),
        }
        stream
            .write_all(&self.endpoint.server_key)
            .await
            .map_err(|err| format!("control connection: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(same_key(&a, &b));
        b[31] = 8;
        assert!(!same_key(&a, &b));
    }

    #[tokio::test]
    async fn a_client_with_the_keys_is_admitted_and_one_without_is_not() {
        let dir = std::env::temp_dir().join(format!("kubedev-endpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("tunneld.sock");
        let listener = ControlListener::bind(&socket).await.expect("bind");
        let served = async {
            let mut stream = listener.accept().await.expect("accept");
            listener.admit(&mut stream).await
        };
        let (client, admitted) = tokio::join!(connect(&socket), served);
        assert!(client.is_ok() && admitted.is_ok());

        let served = async {
            let mut stream = listener.accept().await.expect("accept");
            listener.admit(&mut stream).await
        };
        let stranger = async {
            let mut stream = TcpStream::connect(listener.endpoint.address).await?;
            stream.write_all(&[0u8; 32]).await?;
            let mut answer = [0u8; 32];
            stream.read_exact(&mut answer).await.map(|_| answer)
        };
        let (answer, refused) = tokio::join!(stranger, served);
        assert!(answer.is_err(), "a stranger got the server key");
        assert!(refused.expect_err("refused").contains("wrong key"));

        // A newer tunneld's endpoint stays when this one goes; its own goes.
        let newer = Endpoint {
            client_key: [1u8; 32],
            ..listener.endpoint.clone()
        };
        let text = serde_json::to_string(&newer).expect("json");
        write_own(&socket, &text).expect("a newer endpoint");
        listener.remove_endpoint(&socket);
        assert!(socket.exists(), "the newer tunneld's endpoint was removed");
        let own = serde_json::to_string(&listener.endpoint).expect("json");
        write_own(&socket, &own).expect("this endpoint");
        listener.remove_endpoint(&socket);
        assert!(!socket.exists(), "its own endpoint stayed");
        std::fs::remove_dir_all(&dir).ok();
    }
}
