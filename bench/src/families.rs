//! The kubedev path over each family of a dual-stack cluster: the same pod at its IPv4 and
//! its IPv6 address, through the same tunneld and agent, in the same run.

use crate::measure::{Results, Sizes, ms};

/// The table of IPv6 against IPv4; a ratio of 1 means the families cost the same.
pub(crate) fn table(sizes: &Sizes, ipv4: &Results, ipv6: &Results) -> String {
    let throughput = |name: &str, of: fn(&Results) -> f64| {
        let (four, six) = (of(ipv4), of(ipv6));
        format!("| {name} | {four:.0} | {six:.0} | {:.2}x |\n", six / four)
    };
    let latency = |name: &str, of: fn(&Results) -> std::time::Duration| {
        let (four, six) = (of(ipv4), of(ipv6));
        let ratio = six.as_secs_f64() / four.as_secs_f64();
        format!("| {name} | {} | {} | {ratio:.2}x |\n", ms(four), ms(six))
    };
    let bulk_gib = sizes.bulk_bytes as f64 / f64::from(1 << 30);
    let mut out = String::from(
        "### kubedev over IPv6\n\nThe same measurements by kubedev to the same pod at its IPv6 \
         address (the test cluster is dual-stack), through the same tunneld.\n\n\
         | measurement | IPv4 | IPv6 | IPv6 / IPv4 |\n| --- | ---: | ---: | ---: |\n",
    );
    out += &throughput(
        &format!("bulk, one stream ({bulk_gib:.2} GiB), MiB/s"),
        |r| r.bulk_mib_s,
    );
    out += &latency("new connection to first byte, p50", |r| r.connect_p50);
    out += &latency("1-byte round trip, p50", |r| r.rtt_p50);
    out += &latency("1-byte round trip, p99", |r| r.rtt_p99);
    out += &throughput("parallel streams, aggregate MiB/s", |r| r.parallel_mib_s);
    out += "\n";
    out
}
