//! A session's command in a network namespace of its own, which its plugin made without
//! root where tunneld has no TUN device on the machine: tunneld serves the namespace's
//! TUN device with its userspace stack (every flow the command sends), answers DNS at
//! [`DNS_IP`] there, and delivers the session's incoming connections inside the namespace,
//! until the plugin's connection closes or the session ends.

use std::sync::Arc;

use anyhow::Context as _;
use kubedev::control::{ControlReply, NamespaceFiles, SessionKey};
use kubedev::fd_passing;
use kubedev_protocol::codec::write_message;
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::local_network::LocalNetwork;
use crate::namespace_sockets::NamespaceSockets;
use crate::network::dns::{self, DnsAnswerer};
use crate::network::{DNS_IP, Network, Routed, resolv_conf};

/// A command's network, ready to serve.
struct CommandNetwork {
    network: Network,
    dns: Arc<DnsAnswerer>,
    sockets: Arc<NamespaceSockets>,
    /// The session's local network, which becomes the namespace while it is served.
    local: Arc<LocalNetwork>,
    /// The session's end.
    session_ended: CancellationToken,
    resolv_conf: String,
}

impl Daemon {
    /// Serves the namespace whose files follow the request on `client`, for session `name`.
    pub(super) async fn serve_command_network(
        self: &Arc<Self>,
        session: &SessionKey,
        mut client: UnixStream,
    ) -> anyhow::Result<()> {
        let mut message = [0u8; 16];
        let (_, files) = fd_passing::receive_on(&client, &mut message).await?;
        let prepared = match NamespaceFiles::from_received(files) {
            Some(files) => self.prepare_command_network(session, files).await,
            None => Err(anyhow::anyhow!(
                "expected the namespace's TUN device, user and network namespaces"
            )),
        };
        let served = match prepared {
            Ok(served) => served,
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::warn!("session {session}'s command network: {reason}");
                let refused = ControlReply::Failed { reason };
                return Ok(write_message(&mut client, &refused).await?);
            }
        };
        let reply = ControlReply::CommandNetwork {
            resolv_conf: served.resolv_conf,
        };
        write_message(&mut client, &reply).await?;
        served.local.enter(served.sockets);
        tracing::info!("serving the network of session {session}'s command");
        let ended = tokio::select! {
            served = served.network.run(self.outbound.clone(), served.dns) => match served {
                Ok(()) => "its device closed".to_owned(),
                Err(err) => format!("{err:#}"),
            },
            // The plugin sends nothing more: anything read is the connection's end.
            _ = client.read(&mut message) => "the command exited".to_owned(),
            () = served.session_ended.cancelled() => "the session ended".to_owned(),
        };
        served.local.leave();
        tracing::info!("stopped serving the network of session {session}'s command: {ended}");
        Ok(())
    }

    async fn prepare_command_network(
        &self,
        session: &SessionKey,
        files: NamespaceFiles,
    ) -> anyhow::Result<CommandNetwork> {
        let (local, session_ended) = {
            let sessions = self.sessions.lock().await;
            let tunneled = sessions
                .get(session)
                .with_context(|| format!("no session {session}"))?;
            (tunneled.local.clone(), tunneled.stop.clone())
        };
        let namespace = &session.namespace;
        let domain = self.settings.cluster_domain.trim_end_matches('.');
        let search = dns::search_path(&self.settings.cluster_domain, namespace);
        let (resolv_conf, upstream) =
            resolv_conf::for_commands(&self.settings.resolv_conf, DNS_IP, &search)?;
        let sockets = NamespaceSockets::start(&files.user, &files.network).await?;
        let network = Network::from_fd(files.tun, String::new(), Routed::Everything)?;
        Ok(CommandNetwork {
            network,
            dns: Arc::new(DnsAnswerer::new(self.pool.clone(), domain, upstream)),
            sockets: Arc::new(sockets),
            local,
            session_ended,
            resolv_conf,
        })
    }
}
