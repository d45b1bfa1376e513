//! Address ranges of either family as users write them (`10.96.0.0/16`, `fd00:96::/112`,
//! or one address), and the set arithmetic that deciding which of them to route takes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet as Cidr;
use ipnet::{Ipv4Subnets, Ipv6Subnets, PrefixLenError};

/// Reads `10.96.0.0/16` or `fd00:96::/112` (host bits are dropped: `10.96.7.1/16` is
/// `10.96.0.0/16`) or a single address (`/32`, `/128`).
pub fn parse(text: &str) -> Result<Cidr, String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| {
        format!("{text:?} is not an address range (like 10.96.0.0/16 or fd00:96::/112)")
    })?;
    let longest = single_address_prefix(address);
    let bad_prefix = || format!("{text:?}: the prefix length must be 0 to {longest}");
    let prefix: u8 = match prefix {
        Some(prefix) => prefix.parse().map_err(|_| bad_prefix())?,
        None => longest,
    };
    Cidr::new(address, prefix)
        .map(|cidr| cidr.trunc())
        .map_err(|PrefixLenError| bad_prefix())
}

/// The range of exactly one address.
pub fn single(address: IpAddr) -> Cidr {
    Cidr::from(address)
}

/// The prefix length of a range of one address of `address`'s family.
fn single_address_prefix(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Whether `outer` holds all of `inner` (equal ranges hold each other); ranges of two
/// families hold nothing of each other.
pub fn holds(outer: &Cidr, inner: &Cidr) -> bool {
    outer.contains(inner)
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
    let span = |cidr: &Cidr| (number(cidr.network()), number(cidr.broadcast()));
    let mut holes: Vec<(u128, u128)> = removed
        .iter()
        .filter(|cut| overlap(range, cut))
        .map(|cut| span(if holds(range, cut) { cut } else { range }))
        .collect();
    holes.sort_unstable();
    let (start, end) = span(range);
    let mut left = Vec::new();
    // One past the last address dealt with; none once the family's last address is.
    let mut next = Some(start);
    for (first, last) in holes {
        let Some(from) = next else { break };
        if first > from {
            left.push((from, first - 1));
        }
        next = next.max(last.checked_add(1)).filter(|_| last < end);
    }
    if let Some(from) = next.filter(|from| *from <= end) {
        left.push((from, end));
    }
    left.into_iter()
        .flat_map(|(first, last)| ranges_between(range, first, last))
        .collect()
}

/// The address as a number, whatever its family.
fn number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The fewest ranges from `first` to `last`, addresses of `family`'s family.
fn ranges_between(family: &Cidr, first: u128, last: u128) -> Vec<Cidr> {
    match family {
        Cidr::V4(_) => {
            let v4 = |n: u128| Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX));
            Ipv4Subnets::new(v4(first), v4(last), 0)
                .map(Cidr::V4)
                .collect()
        }
        Cidr::V6(_) => Ipv6Subnets::new(Ipv6Addr::from(first), Ipv6Addr::from(last), 0)
            .map(Cidr::V6)
            .collect(),
    }
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
        assert_eq!(cidr("fd00:96::7/112").to_string(), "fd00:96::/112");
        assert_eq!(cidr("fd00::1").to_string(), "fd00::1/128");
        assert!(parse("fd00::/129").is_err());
        assert_eq!(
            parse("10.0.0.0/33"),
            Err("\"10.0.0.0/33\": the prefix length must be 0 to 32".into())
        );
    }

    #[test]
    fn holding_and_overlapping() {
        assert!(holds(&cidr("10.0.0.0/8"), &cidr("10.96.0.0/16")));
        assert!(holds(&cidr("10.96.0.0/16"), &cidr("10.96.0.0/16")));
        assert!(!holds(&cidr("10.96.0.0/16"), &cidr("10.0.0.0/8")));
        assert!(overlap(&cidr("10.96.0.0/16"), &cidr("10.0.0.0/8")));
        assert!(!overlap(&cidr("10.96.0.0/16"), &cidr("10.97.0.0/16")));
        assert!(holds(&cidr("fd00::/48"), &cidr("fd00:0:0:96::/112")));
        assert!(
            !overlap(&cidr("0.0.0.0/0"), &cidr("::/0")),
            "families apart"
        );
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
        assert_eq!(
            subtract(&cidr("fd00::/64"), &[cidr("fd00::/65")]),
            [cidr("fd00:0:0:0:8000::/65")]
        );
        assert_eq!(
            subtract(
                &cidr("::/0"),
                &[cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")]
            )
            .len(),
            128
        );
        assert_eq!(
            subtract(&cidr("fd00::/64"), &[cidr("10.0.0.0/8")]),
            [cidr("fd00::/64")],
            "a range of the other family takes nothing"
        );
    }
}
