//! Flows a workstation opens into the cluster, as if from the pod: TCP connections ([`tcp`]),
//! UDP flows ([`udp`]) and name lookups with the pod's resolver ([`dns`]).

pub(crate) mod dns;
pub(crate) mod tcp;
pub(crate) mod udp;
