//! The workstation's end of a session with one agent: flows opened through the pod.

mod link;

pub use link::{AgentLink, LinkError};
