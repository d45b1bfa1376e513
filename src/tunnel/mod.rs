//! The workstation's end of a session with one agent: flows opened through the pod.

mod link;
#[cfg(feature = "client")]
mod portforward;

pub use link::{AgentLink, LinkError};
#[cfg(feature = "client")]
pub use portforward::link_through_port_forward;
