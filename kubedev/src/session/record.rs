//! The record of a session on its workload: what changed, the originals to restore, and
//! which sessions (and runs of the plugin) share the agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SessionError;
use super::error::corrupt;
use crate::mode::Mode;
use crate::workload::Workload;
use kubedev_protocol::HttpFilter;

/// The workload annotation holding a session's [`Record`] (JSON).
pub const RECORD_ANNOTATION: &str = "kubedev.io/session";

/// Flux's per-object pause: its kustomize-controller leaves an object whose annotation
/// says [`FLUX_PAUSED`] as it is (`--pause-flux`).
pub const FLUX_RECONCILE: &str = "kustomize.toolkit.fluxcd.io/reconcile";
/// The value of [`FLUX_RECONCILE`] that pauses Flux.
pub const FLUX_PAUSED: &str = "disabled";

/// What a session changed, and the originals to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The session that added the agent; its name labels the pods.
    pub name: String,
    /// intercept: its HTTP filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<HttpFilter>,
    /// intercept: a wiretap, which gets copies and takes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wiretap: bool,
    /// Intercepts and wiretaps that joined the agent this session added, each with its own
    /// filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<Joined>,
    /// The mode the agent was injected for.
    pub mode: Mode,
    /// The app container.
    pub container: String,
    /// The pod template exactly as it was.
    pub template: Value,
    /// The pod template as the session wrote it: restoring takes that change back out of
    /// the live template, so what others changed meanwhile stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Value>,
    /// Services whose ports were changed, with their original ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRecord>,
    /// The key of the agent's token in the tokens' Secret ([`crate::inject::TOKENS_SECRET`]),
    /// dropped when the agent goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
    /// The session paused Flux on the workload (see [`FLUX_RECONCILE`]): leaving resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_flux: bool,
    /// The run of the plugin that started the session (a random id): tunneld, ending the
    /// session of a plugin that died, ends only that run's, never a namesake's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The workload's replicas when the session started: a change to them by others is
    /// kept and named at leave, as any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Who managed which fields of the workload when the session started: kubedev's writes
    /// take fields from their managers, and leaving hands them back
    /// ([`crate::workload::hand_back_fields`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managers: Option<Vec<ManagedFieldsEntry>>,
}

/// An intercept that joined an existing one (with a different HTTP filter), or a wiretap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The intercept's session name.
    pub name: String,
    /// The HTTP requests it takes (or, as a wiretap, copies); every request without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<HttpFilter>,
    /// A wiretap, which gets copies and takes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wiretap: bool,
    /// The plugin run that started it (see [`Record::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What taking a session off a [`Record`] leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// No session of that name.
    NotThere,
    /// The session of that name belongs to another run of a plugin: left as it is.
    NotOwned,
    /// Taken off; this many sessions remain and keep the agent.
    OthersRemain(usize),
    /// It was the last one: the workload is to be restored.
    Last,
}

impl Record {
    /// The record as the workload's [`RECORD_ANNOTATION`] holds it.
    pub fn to_annotation(&self) -> String {
        // Strings, numbers and JSON values only: serializing cannot fail.
        serde_json::to_string(self).expect("a record is plain JSON")
    }

    /// The run that started session `name`, if it is on the record and said.
    pub fn owner_of(&self, name: &str) -> Option<&str> {
        self.holders()
            .find(|(session, _)| *session == name)
            .and_then(|(_, owner)| owner)
    }

    /// Every session on the workload with the run that started it, if it said.
    pub fn holders(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        std::iter::once((self.name.as_str(), self.owner.as_deref())).chain(
            self.joined
                .iter()
                .map(|joined| (joined.name.as_str(), joined.owner.as_deref())),
        )
    }

    /// Takes session `name` off the record, if it is there and (with `owner`) that run's.
    /// The first session leaving hands the agent over to the next that joined.
    pub fn remove(&mut self, name: &str, owner: Option<&str>) -> Removal {
        let Some((_, recorded_owner)) = self.holders().find(|(session, _)| *session == name) else {
            return Removal::NotThere;
        };
        if owner.is_some() && recorded_owner != owner {
            return Removal::NotOwned;
        }
        if self.joined.is_empty() {
            return Removal::Last;
        }
        if self.name == name {
            let heir = self.joined.remove(0);
            self.name = heir.name;
            self.filter = heir.filter;
            self.wiretap = heir.wiretap;
            self.owner = heir.owner;
        } else {
            self.joined.retain(|joined| joined.name != name);
        }
        Removal::OthersRemain(self.sessions().count())
    }

    /// Whether the session's container mounts any volume (in the original template).
    pub fn container_has_volumes(&self) -> bool {
        self.template
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("name").and_then(Value::as_str) == Some(self.container.as_str()))
            .filter_map(|c| c.get("volumeMounts").and_then(Value::as_array))
            .any(|mounts| !mounts.is_empty())
    }

    /// Every session on the workload: the one that added the agent, then those that joined.
    pub fn sessions(&self) -> impl Iterator<Item = Listed<'_>> {
        let first = Listed {
            name: &self.name,
            filter: self.filter.as_ref(),
            wiretap: self.wiretap,
        };
        std::iter::once(first).chain(self.joined.iter().map(|joined| Listed {
            name: &joined.name,
            filter: joined.filter.as_ref(),
            wiretap: joined.wiretap,
        }))
    }
}

/// One session on a workload, as its [`Record`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The session's name.
    pub name: &'a str,
    /// The HTTP requests it takes or copies; all without one.
    pub filter: Option<&'a HttpFilter>,
    /// A wiretap: it gets copies and takes nothing.
    pub wiretap: bool,
}

/// A Service whose ports a session changed, and its original ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The Service's name.
    pub name: String,
    /// Its `spec.ports` exactly as they were.
    pub ports: Value,
    /// Its `spec.ports` as the session set them (see [`Record::applied`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ports: Option<Value>,
    /// The session paused Flux on the Service (see [`FLUX_RECONCILE`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_flux: bool,
    /// Who managed which fields of the Service when the session started (see
    /// [`Record::managers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managers: Option<Vec<ManagedFieldsEntry>>,
}

/// The session recorded on `workload`, if any.
pub fn record_of(workload: &Workload) -> Result<Option<Record>, SessionError> {
    workload
        .annotation(RECORD_ANNOTATION)
        .map(|text| {
            serde_json::from_str(text).map_err(|err| {
                corrupt(
                    &workload.reference,
                    format!("its {RECORD_ANNOTATION} annotation is unreadable: {err}"),
                )
            })
        })
        .transpose()
}
