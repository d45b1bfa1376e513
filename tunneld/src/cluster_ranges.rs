//! Which address ranges belong to the cluster, found with whatever rights the user has:
//! cluster-wide reads (nodes' podCIDRs, ServiceCIDR objects) when allowed, otherwise what
//! a namespace-scoped user can see (its pods' IPs, and the range the API server names when
//! refusing a dry-run Service with an address outside it).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use kubedev::cidr::{self, Cidr};

/// The prefix assumed around a pod IP when the nodes' ranges cannot be read.
const POD_RANGE_GUESS: u8 = 16;

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
    probe_service_range(client, namespace)
        .await
        .into_iter()
        .collect()
}

/// Asks the API server to validate (dry run: nothing is created) a Service whose address
/// cannot be in range; the refusal names the range.
async fn probe_service_range(client: &kube::Client, namespace: &str) -> Option<Cidr> {
    let probe: Service = serde_json::from_value(json!({
        "metadata": {"name": "kubedev-range-probe"},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": 80}]}
    }))
    .ok()?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let err = Api::<Service>::namespaced(client.clone(), namespace)
        .create(&params, &probe)
        .await
        .err()?;
    let message = match &err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    let range = range_in_refusal(&message);
    if range.is_none() {
        tracing::warn!("the service range is unknown: the API server answered {err}");
    }
    range
}

fn range_in_refusal(message: &str) -> Option<Cidr> {
    let (_, rest) = message.split_once("The range of valid IPs is ")?;
    rest.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'))
        .next()
        .and_then(|text| cidr::parse(text).ok())
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
        .filter_map(|pod| {
            pod.status
                .as_ref()?
                .pod_ip
                .as_ref()?
                .parse::<Ipv4Addr>()
                .ok()
        })
        .filter_map(|ip| Cidr::new(ip, POD_RANGE_GUESS).ok())
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
        // As kube's error shows it, the reason after the message.
        assert_eq!(
            range_in_refusal("... The range of valid IPs is 10.96.0.0/16: Invalid"),
            Some(cidr::parse("10.96.0.0/16").expect("cidr"))
        );
    }
}
