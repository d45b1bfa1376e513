//! Answers the workstation's DNS queries: names in the cluster's domain are resolved by an
//! agent with the pod's own resolver; every other name is forwarded, unchanged, to the
//! nameserver the workstation used before (so nothing else about DNS changes).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::agents::AgentPool;

/// Cluster answers change when pods do: keep them short-lived in caches.
const CLUSTER_TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const LINK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct DnsAnswerer {
    pool: Arc<AgentPool>,
    /// Lowercase, with a trailing dot: `cluster.local.`
    cluster_domain: String,
    upstream: Option<SocketAddr>,
    /// Whether the cluster's IPv6 addresses are reachable here: if not, none is given
    /// (AAAA has no data), so that a program does not try them through the machine's own
    /// IPv6 default route, off the machine.
    ipv6: bool,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Resolve this absolute name in the cluster, for addresses of this type.
    Cluster {
        name: String,
        record_type: RecordType,
    },
    /// A cluster name, but a record type the cluster resolver does not give: no data.
    ClusterNoData,
    /// Not a cluster name: ask the workstation's own nameserver.
    Upstream,
}

impl DnsAnswerer {
    pub(crate) fn new(
        pool: Arc<AgentPool>,
        cluster_domain: &str,
        upstream: Option<SocketAddr>,
    ) -> Self {
        Self {
            pool,
            cluster_domain: format!(
                "{}.",
                cluster_domain.trim_end_matches('.').to_ascii_lowercase()
            ),
            upstream,
            ipv6: true,
        }
    }

    /// The same, giving no IPv6 address: the cluster's IPv6 ranges are not routed here.
    pub(crate) fn ipv4_only(self) -> Self {
        Self {
            ipv6: false,
            ..self
        }
    }

    pub(crate) async fn answer(&self, query: &[u8]) -> Vec<u8> {
        let Ok(request) = Message::from_vec(query) else {
            return Vec::new();
        };
        match route(&request, &self.cluster_domain) {
            Route::Cluster {
                record_type: RecordType::AAAA,
                ..
            } if !self.ipv6 => response(&request, ResponseCode::NoError, &[], RecordType::AAAA),
            Route::Cluster { name, record_type } => match self.resolve_in_cluster(&name).await {
                Some(addresses) => {
                    response(&request, ResponseCode::NoError, &addresses, record_type)
                }
                None => response(&request, ResponseCode::NXDomain, &[], record_type),
            },
            Route::ClusterNoData => response(&request, ResponseCode::NoError, &[], RecordType::A),
            Route::Upstream => match self.forward(query).await {
                Some(answer) => answer,
                None => response(&request, ResponseCode::ServFail, &[], RecordType::A),
            },
        }
    }

    /// Whether `name` (absolute or not, any case) is in the cluster's domain: the names
    /// this answerer resolves in the cluster.
    pub(crate) fn is_cluster_name(&self, name: &str) -> bool {
        let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        in_domain(&name, &self.cluster_domain)
    }

    /// The addresses of the absolute name `name` in the cluster, as an agent's pod resolves
    /// it; none when it has none or no agent answers.
    pub(crate) async fn resolve_in_cluster(&self, name: &str) -> Option<Vec<IpAddr>> {
        let link = self.pool.pick(None, LINK_WAIT).await?;
        match link.resolve(name).await {
            Ok(addresses) => Some(addresses),
            Err(err) => {
                tracing::debug!("{name}: {err}");
                None
            }
        }
    }

    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.upstream?;
        let exchange = async {
            let socket = UdpSocket::bind(if upstream.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .await?;
            // Connected, so an unreachable nameserver fails at once instead of timing out.
            socket.connect(upstream).await?;
            socket.send(query).await?;
            let mut buf = vec![0u8; 65535];
            let len = socket.recv(&mut buf).await?;
            buf.truncate(len);
            Ok::<_, std::io::Error>(buf)
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
            .await
            .ok()?
            .ok()
    }
}

fn route(request: &Message, cluster_domain: &str) -> Route {
    let Some(query) = request.queries.first() else {
        return Route::Upstream;
    };
    let name = query.name().to_lowercase().to_ascii();
    if !in_domain(&name, cluster_domain) {
        return Route::Upstream;
    }
    match query.query_type() {
        record_type @ (RecordType::A | RecordType::AAAA) => Route::Cluster { name, record_type },
        _ => Route::ClusterNoData,
    }
}

/// Whether the lowercase absolute `name` is `domain` or in it (both end with a dot).
fn in_domain(name: &str, domain: &str) -> bool {
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// Where a program in `namespace` looks for a short name, in order: the search path the
/// kubelet gives its pods.
pub(crate) fn search_path(cluster_domain: &str, namespace: &str) -> Vec<String> {
    let domain = cluster_domain.trim_end_matches('.');
    vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ]
}

fn response(
    request: &Message,
    code: ResponseCode,
    addresses: &[IpAddr],
    record_type: RecordType,
) -> Vec<u8> {
    let mut message = Message::response(request.metadata.id, request.metadata.op_code);
    message.metadata.recursion_desired = request.metadata.recursion_desired;
    message.metadata.recursion_available = true;
    message.metadata.response_code = code;
    message.queries = request.queries.clone();
    if let Some(query) = request.queries.first() {
        let name = query.name().clone();
        message.answers = addresses
            .iter()
            .filter_map(|address| match (address, record_type) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), CLUSTER_TTL, rdata))
            .collect();
    }
    message.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            record_type,
        ));
        message
    }

    #[test]
    fn cluster_names_go_to_the_cluster_and_others_upstream() {
        let domain = "cluster.local.";
        assert_eq!(
            route(
                &query("Echo.Shop.svc.cluster.local.", RecordType::A),
                domain
            ),
            Route::Cluster {
                name: "echo.shop.svc.cluster.local.".into(),
                record_type: RecordType::A
            }
        );
        assert_eq!(
            route(&query("example.com.", RecordType::A), domain),
            Route::Upstream
        );
        assert_eq!(
            route(&query("notcluster.local.", RecordType::A), domain),
            Route::Upstream
        );
        assert_eq!(
            route(&query("db.svc.cluster.local.", RecordType::SRV), domain),
            Route::ClusterNoData
        );
    }

    #[test]
    fn answers_carry_only_addresses_of_the_asked_type() {
        let request = query("echo.shop.svc.cluster.local.", RecordType::A);
        let addresses: Vec<IpAddr> = vec![
            "10.96.0.42".parse().expect("v4"),
            "fd00::1".parse().expect("v6"),
        ];
        let answer = Message::from_vec(&response(
            &request,
            ResponseCode::NoError,
            &addresses,
            RecordType::A,
        ))
        .expect("valid message");
        assert_eq!(answer.metadata.id, 4242);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.queries, request.queries);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(
            answer.answers[0].data,
            RData::A(A("10.96.0.42".parse().expect("v4")))
        );
        assert_eq!(answer.answers[0].ttl, CLUSTER_TTL);

        let missing = Message::from_vec(&response(
            &request,
            ResponseCode::NXDomain,
            &[],
            RecordType::A,
        ))
        .expect("valid message");
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(missing.answers.is_empty());
    }

    #[tokio::test]
    async fn without_the_clusters_ipv6_an_aaaa_question_has_no_answer() {
        let pool = Arc::new(AgentPool::default());
        let answerer = DnsAnswerer::new(pool, "cluster.local", None).ipv4_only();
        let request = query("echo.shop.svc.cluster.local.", RecordType::AAAA);
        let answer = answerer.answer(&request.to_vec().expect("query")).await;
        let answer = Message::from_vec(&answer).expect("valid message");
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty(), "no data, not an error");
    }
}
