//! An app that terminates TLS itself (`--tls-secret`): the agent gets the app's
//! certificate and key, the `kubernetes.io/tls` Secret the user names, read-only at
//! [`TLS_DIR`], and terminates TLS on the intercepted ports to read the requests.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecretVolumeSource, Volume, VolumeMount};
use kubedev_protocol::{Listener, TLS_DIR};

/// The pod volume of the Secret, which the agent alone mounts.
pub const TLS_VOLUME: &str = "kubedev-tls";

/// The agent terminates TLS on each of `listeners`.
pub(super) fn terminate(listeners: &mut [Listener]) {
    for listener in listeners {
        listener.tls = true;
    }
}

/// Mounts Secret `secret` into `agent` at [`TLS_DIR`], through a volume of `pod`.
pub(super) fn mount_secret(pod: &mut PodSpec, agent: &mut Container, secret: &str) {
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: TLS_VOLUME.to_owned(),
        // Optional: a missing Secret then makes the agent fail at once, saying so, rather
        // than hold the pods unstarted until the timeout.
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: Some(true),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    agent
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: TLS_VOLUME.to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
}

/// The Secret the agent in `pod` terminates TLS with, if it does.
pub fn secret_of(pod: &PodSpec) -> Option<&str> {
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TLS_VOLUME)?;
    volume.secret.as_ref()?.secret_name.as_deref()
}
