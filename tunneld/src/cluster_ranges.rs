//! Which address ranges belong to the cluster, found with whatever rights the user has:
//! cluster-wide reads (nodes' podCIDRs, ServiceCIDR objects) when allowed, otherwise what
//! a namespace-scoped user can see (its pods' IPs, and the range the API server names when
//! refusing a dry-run Service with an address outside it).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use kubedev::cidr::{self, Cidr};

/// The prefix assumed around a pod IP when the nodes' ranges cannot be read: a cluster's
/// pod range for IPv4, a node's for IPv6 (each node's pods share a /64).
const POD_RANGE_GUESS: u8 = 16;
const POD_RANGE_GUESS_IPV6: u8 = 64;

/// The cluster's pod and service ranges, none inside another.
pub(crate) async fn discover(client: &kube::Client, namespace: &str) -> Vec<Cidr> {
    let mut ranges = service_ranges(client, namespace).await;
    ranges.extend(pod_ranges(client, namespace).await);
    ranges.sort();
    ranges.dedup();
    // A wider range makes any range inside it redundant.
    let all = ranges.clone();
    ranges.retain(|c| !all.iter().any(|other| other != c && cidr::holds(other, c)));
    ranges
}

async fn service_ranges(client: &kube::Client, namespace: &str) -> Vec<Cidr> {
    if let Ok(list) = Api::<ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        let found: Vec<Cidr> = list
            .items
            .iter()
            .flat_map(|s| s.spec.iter().flat_map(|spec| spec.cidrs.iter().flatten()))
            .filter_map(|text| cidr::parse(text).ok())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    let mut found = Vec::new();
    let mut refusals = Vec::new();
    // One probe per family: a dual-stack cluster names the range of the probe's family.
    for loopback in ["127.0.0.1", "::1"] {
        match probe_service_range(client, namespace, loopback).await {
            Ok(range) => found.push(range),
            Err(refusal) => refusals.push(refusal),
        }
    }
    if found.is_empty() {
        tracing::warn!("the service range is unknown: {}", refusals.join("; "));
    }
    found
}

/// Asks the API server to validate (dry run: nothing is created) a Service whose address,
/// `loopback`, cannot be in range; the refusal names the range of that address's family,
/// if the cluster has one. Otherwise, what the API server answered.
async fn probe_service_range(
    client: &kube::Client,
    namespace: &str,
    loopback: &str,
) -> Result<Cidr, String> {
    let probe: Service = serde_json::from_value(json!({
        "metadata": {"name": "kubedev-range-probe"},
        "spec": {"clusterIP": loopback, "ports": [{"port": 80}]}
    }))
    .map_err(|err| err.to_string())?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let Err(err) = Api::<Service>::namespaced(client.clone(), namespace)
        .create(&params, &probe)
        .await
    else {
        return Err(format!("the API server took a Service at {loopback}"));
    };
    let message = match &err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    range_in_refusal(&message).ok_or_else(|| format!("the API server answered {err}"))
}

fn range_in_refusal(message: &str) -> Option<Cidr> {
    let (_, rest) = message.split_once("The range of valid IPs is ")?;
    // What follows the range: the end, a space, a comma, or kube's `: Invalid`.
    let mut range = rest.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';'));
    range
        .next()
        .and_then(|text| cidr::parse(text.trim_end_matches(':')).ok())
}

async fn pod_ranges(client: &kube::Client, namespace: &str) -> Vec<Cidr> {
    if let Ok(nodes) = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        let found: Vec<Cidr> = nodes
            .items
            .iter()
            .filter_map(|node| node.spec.as_ref())
            .flat_map(|spec| spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter()))
            .filter_map(|text| cidr::parse(text).ok())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    let Ok(pods) = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    else {
        return Vec::new();
    };
    pods.items
        .iter()
        .filter(|pod| pod.spec.as_ref().and_then(|s| s.host_network) != Some(true))
        .filter_map(|pod| pod.status.as_ref())
        .flat_map(|status| {
            let all = status.pod_ips.iter().flatten().map(|pod_ip| &pod_ip.ip);
            all.chain(status.pod_ip.as_ref())
        })
        .filter_map(|text| text.parse::<IpAddr>().ok())
        .filter_map(|ip| match ip {
            IpAddr::V4(_) => Cidr::new(ip, POD_RANGE_GUESS).ok(),
            IpAddr::V6(_) => Cidr::new(ip, POD_RANGE_GUESS_IPV6).ok(),
        })
        .map(|range| range.trunc())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_range_from_the_api_servers_refusal() {
        let message = "Service \"kubedev-range-probe\" is invalid: spec.clusterIPs: Invalid value: \
            [\"127.0.0.1\"]: failed to allocate IP 127.0.0.1: the provided IP (127.0.0.1) is not in \
            the valid range. The range of valid IPs is 10.96.0.0/16";
        assert_eq!(
            range_in_refusal(message),
            Some(cidr::parse("10.96.0.0/16").expect("cidr"))
        );
        assert_eq!(range_in_refusal("forbidden"), None);
        assert_eq!(
            range_in_refusal("... The range of valid IPs is fd4b:6b64:96::/112"),
            Some(cidr::parse("fd4b:6b64:96::/112").expect("cidr"))
        );
        assert_eq!(
            range_in_refusal("... The range of valid IPs is fd4b:6b64:96::/112: Invalid"),
            Some(cidr::parse("fd4b:6b64:96::/112").expect("cidr"))
        );
        // As kube's error shows it, the reason after the message.
        assert_eq!(
            range_in_refusal("... The range of valid IPs is 10.96.0.0/16: Invalid"),
            Some(cidr::parse("10.96.0.0/16").expect("cidr"))
        );
    }
}
