//! Per-client limits: what a client is counted as, and the sketch that
//! counts attempts per minute in bounded memory (decision 0009).

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

/// What per-client limits count `ip` as: an IPv4 address as it is, an IPv6
/// address as its /64. A /64 is what one subscriber or network is given, and
/// holds more addresses than any limit could list: counted one by one, a
/// client could rotate through them and meet no limit at all.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The network a client's address belongs to, for a count a guesser must
/// not multiply by the addresses they hold: an IPv6 address's /56, what an
/// ISP gives one home (its /64 is one network in it); an IPv4 address itself.
pub fn network_key(ip: IpAddr) -> IpAddr {
    match client_key(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 56)).into()),
        v4 => v4,
    }
}

/// A per-minute rate estimator sized for a flood from many addresses. An
/// innocent key is over-counted when all four of its slots hold a busy key:
/// with pingora-limits' default sketch (4 × 1,024 slots) 2,000 busy
/// addresses do that to about half of all others, with 4 × 16,384 to about
/// one in 6,000 (decision 0009). It holds 1 MiB.
pub fn per_minute() -> Rate {
    Rate::new_with_estimator_config(Duration::from_secs(60), 4, 16_384)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_counts_as_its_64() {
        let key = |text: &str| client_key(text.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn an_ipv6_network_is_its_56() {
        let key = |text: &str| network_key(text.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2ff::1"), "2001:db8:1:200::");
        assert_eq!(key("2001:db8:1:200::1"), key("2001:db8:1:2ff:1::1"));
        assert_ne!(key("2001:db8:1:300::1"), key("2001:db8:1:200::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn a_flood_from_many_addresses_rarely_limits_another() {
        // 2,000 addresses each at the limit; then 1,000 others, once each.
        let rate = per_minute();
        let limit = 30;
        for i in 0..2_000u32 {
            rate.observe(&IpAddr::from((0x0a00_0000 + i).to_be_bytes()), limit);
        }
        let limited = (0..1_000u32)
            .filter(|i| rate.observe(&IpAddr::from((0xc000_0200 + i).to_be_bytes()), 1) > limit)
            .count();
        assert!(
            limited <= 5,
            "{limited} of 1,000 innocent addresses limited"
        );
    }
}
