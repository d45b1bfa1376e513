//! IPv4 address ranges as users write them (`10.96.0.0/16`, or one address), and the set
//! arithmetic that deciding which of them to route takes.

use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net as Cidr;
use ipnet::{Ipv4Subnets, PrefixLenError};

/// Reads `10.96.0.0/16` (host bits are dropped: `10.96.7.1/16` is `10.96.0.0/16`) or a
/// single address (`/32`).
pub fn parse(text: &str) -> Result<Cidr, String> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 range (like 10.96.0.0/16)"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{text:?}: the prefix length must be 0 to 32"))?;
    Cidr::new(address, prefix)
        .map(|cidr| cidr.trunc())
        .map_err(|PrefixLenError| format!("{text:?}: the prefix length must be 0 to 32"))
}

/// Whether `outer` holds all of `inner` (equal ranges hold each other).
pub fn holds(outer: &Cidr, inner: &Cidr) -> bool {
    outer.network() <= inner.network() && inner.broadcast() <= outer.broadcast()
}

/// Whether the two ranges share an address.
pub fn overlap(a: &Cidr, b: &Cidr) -> bool {
    holds(a, b) || holds(b, a)
}

/// The two ranges one bit longer that make up `cidr`; none for a single address.
pub fn halves(cidr: &Cidr) -> Option<[Cidr; 2]> {
    let mut halves = cidr.subnets(cidr.prefix_len().checked_add(1)?).ok()?;
    Some([halves.next()?, halves.next()?])
}

/// What is left of `range` without `removed`, as the fewest ranges.
pub fn subtract(range: &Cidr, removed: &[Cidr]) -> Vec<Cidr> {
    let mut holes: Vec<(u32, u32)> = removed
        .iter()
        .filter(|cut| overlap(range, cut))
        .map(|cut| {
            let cut = if holds(range, cut) { cut } else { range };
            (u32::from(cut.network()), u32::from(cut.broadcast()))
        })
        .collect();
    holes.sort_unstable();
    let mut left = Vec::new();
    let mut next = u64::from(u32::from(range.network()));
    let end = u64::from(u32::from(range.broadcast()));
    for (first, last) in holes {
        if u64::from(first) > next {
            left.push((next, u64::from(first) - 1));
        }
        next = next.max(u64::from(last) + 1);
    }
    if next <= end {
        left.push((next, end));
    }
    left.into_iter()
        .flat_map(|(first, last)| {
            let first = u32::try_from(first).map_or(Ipv4Addr::BROADCAST, Ipv4Addr::from);
            let last = u32::try_from(last).map_or(Ipv4Addr::BROADCAST, Ipv4Addr::from);
            Ipv4Subnets::new(first, last, 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        parse(text).expect("valid range")
    }

    #[test]
    fn parses_ranges_and_single_addresses() {
        assert_eq!(cidr("10.96.7.1/16").to_string(), "10.96.0.0/16");
        assert_eq!(cidr("10.0.0.1").to_string(), "10.0.0.1/32");
        assert!(parse("10.0.0.0/33").is_err());
        assert!(parse("10.0.0.0/x").is_err());
        assert!(parse("cluster").is_err());
    }

    #[test]
    fn holding_and_overlapping() {
        assert!(holds(&cidr("10.0.0.0/8"), &cidr("10.96.0.0/16")));
        assert!(holds(&cidr("10.96.0.0/16"), &cidr("10.96.0.0/16")));
        assert!(!holds(&cidr("10.96.0.0/16"), &cidr("10.0.0.0/8")));
        assert!(overlap(&cidr("10.96.0.0/16"), &cidr("10.0.0.0/8")));
        assert!(!overlap(&cidr("10.96.0.0/16"), &cidr("10.97.0.0/16")));
    }

    #[test]
    fn halves_are_one_bit_longer() {
        assert_eq!(
            halves(&cidr("10.96.0.0/16")),
            Some([cidr("10.96.0.0/17"), cidr("10.96.128.0/17")])
        );
        assert_eq!(halves(&cidr("10.0.0.1/32")), None);
    }

    #[test]
    fn subtracting_leaves_the_fewest_ranges() {
        assert_eq!(
            subtract(&cidr("10.96.0.0/16"), &[cidr("10.96.0.0/17")]),
            [cidr("10.96.128.0/17")]
        );
        assert_eq!(
            subtract(&cidr("10.96.0.0/16"), &[cidr("10.96.0.1/32")]).len(),
            16
        );
        assert!(subtract(&cidr("10.96.0.0/16"), &[cidr("10.0.0.0/8")]).is_empty());
        assert_eq!(
            subtract(&cidr("10.96.0.0/16"), &[cidr("10.97.0.0/16")]),
            [cidr("10.96.0.0/16")]
        );
        assert_eq!(
            subtract(&cidr("0.0.0.0/0"), &[cidr("255.255.255.255/32")]).len(),
            32
        );
    }
}
