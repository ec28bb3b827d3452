//! The upstream guard (SSRF): which addresses and hosts patchfeed may fetch.
//!
//! By default only globally reachable unicast addresses pass. The refused
//! ranges are one table, [`SPECIAL`]: the IANA IPv4 and IPv6 special-purpose
//! address registries (every entry not globally reachable, plus the
//! documentation, benchmarking, translation and deprecated ones), multicast
//! and the reserved 240.0.0.0/4. IPv4 embedded in IPv6 (mapped, the
//! well-known NAT64 prefix, 6to4) is judged by its IPv4 address. The check
//! runs on the addresses DNS returned — in the resolver the HTTP client
//! connects through, so there is no window between check and connect — and
//! on IP literals in the URL of every request and every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A network: an address and a prefix length.
#[derive(Clone, Copy, Debug)]
pub enum Prefix {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn same(a: u128, b: u128, len: u8, bits: u8) -> bool {
            let shift = u32::from(bits - len.min(bits));
            a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
        }
        match (*self, ip) {
            (Prefix::V4(net, len), IpAddr::V4(ip)) => {
                same(u32::from(net).into(), u32::from(ip).into(), len, 32)
            }
            (Prefix::V6(net, len), IpAddr::V6(ip)) => same(net.into(), ip.into(), len, 128),
            _ => false,
        }
    }
}

/// What a range of [`SPECIAL`] does to an address in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused.
    Refuse,
    /// Judged by the IPv4 address in its low 32 bits (mapped, NAT64).
    EmbeddedLow32,
    /// Judged by the IPv4 address in bits 16..48 (6to4).
    Embedded6to4,
}

/// One special-purpose range.
#[derive(Clone, Copy, Debug)]
pub struct Special {
    pub prefix: Prefix,
    pub name: &'static str,
    /// Where the range is defined: for readers of the table (the code
    /// refuses by `name` and `verdict`; tests check every row has one).
    #[allow(dead_code)]
    pub rfc: &'static str,
    pub verdict: Verdict,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str, rfc: &'static str) -> Special {
    Special {
        prefix: Prefix::V4(Ipv4Addr::new(a, b, c, d), len),
        name,
        rfc,
        verdict: Verdict::Refuse,
    }
}

const fn v6(
    seg: [u16; 8],
    len: u8,
    name: &'static str,
    rfc: &'static str,
    verdict: Verdict,
) -> Special {
    let [a, b, c, d, e, f, g, h] = seg;
    Special {
        prefix: Prefix::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h), len),
        name,
        rfc,
        verdict,
    }
}

use Verdict::{Embedded6to4, EmbeddedLow32, Refuse};

/// Every range the guard knows, first match wins (so a narrow range comes
/// before the wider one holding it). From the IANA "IPv4 Special-Purpose
/// Address Registry" and "IPv6 Special-Purpose Address Registry": each
/// entry that is not globally reachable, the documentation, benchmarking
/// and deprecated entries, and the translation prefixes; plus multicast and
/// 240.0.0.0/4 from the address-space registries. Left out, because they
/// are globally reachable unicast: AS112 (192.31.196.0/24, 192.175.48.0/24,
/// 2620:4f:8000::/48) and AMT (192.52.193.0/24). The whole of 192.0.0.0/24
/// and 2001::/23 is refused, including their few anycast services (PCP,
/// TURN), none of which is a JSON upstream.
#[rustfmt::skip]
pub const SPECIAL: &[Special] = &[
    // ---- IPv4
    v4(0, 0, 0, 0, 8, "unspecified (\"this network\")", "RFC 791"),
    v4(10, 0, 0, 0, 8, "private", "RFC 1918"),
    v4(100, 64, 0, 0, 10, "shared (CGNAT)", "RFC 6598"),
    v4(127, 0, 0, 0, 8, "loopback", "RFC 1122"),
    v4(169, 254, 0, 0, 16, "link-local", "RFC 3927"),
    v4(172, 16, 0, 0, 12, "private", "RFC 1918"),
    v4(192, 0, 0, 0, 24, "IETF protocol assignments", "RFC 6890"),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1)", "RFC 5737"),
    v4(192, 88, 99, 0, 24, "deprecated 6to4 relay anycast", "RFC 7526"),
    v4(192, 168, 0, 0, 16, "private", "RFC 1918"),
    v4(198, 18, 0, 0, 15, "benchmarking", "RFC 2544"),
    v4(198, 51, 100, 0, 24, "documentation (TEST-NET-2)", "RFC 5737"),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3)", "RFC 5737"),
    v4(224, 0, 0, 0, 4, "multicast", "RFC 5771"),
    v4(255, 255, 255, 255, 32, "limited broadcast", "RFC 919"),
    v4(240, 0, 0, 0, 4, "reserved", "RFC 1112"),
    // ---- IPv6
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", "RFC 4291", Refuse),
    v6([0; 8], 128, "unspecified", "RFC 4291", Refuse),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped", "RFC 4291", EmbeddedLow32),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, "IPv4-translated", "RFC 2765", Refuse),
    v6([0; 8], 96, "IPv4-compatible (deprecated)", "RFC 4291", Refuse),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 well-known prefix", "RFC 6052", EmbeddedLow32),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "NAT64 local-use prefix", "RFC 8215", Refuse),
    v6([0; 8], 8, "reserved by IETF", "RFC 4291", Refuse),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only", "RFC 6666", Refuse),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy prefix", "RFC 9780", Refuse),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo", "RFC 4380", Refuse),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking", "RFC 5180", Refuse),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "ORCHID (deprecated)", "RFC 4843", Refuse),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", "RFC 7343", Refuse),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF protocol assignments", "RFC 2928", Refuse),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation", "RFC 3849", Refuse),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056", Embedded6to4),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation", "RFC 9637", Refuse),
    v6([0x3ffe, 0, 0, 0, 0, 0, 0, 0], 16, "6bone (returned)", "RFC 3701", Refuse),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing SIDs", "RFC 9602", Refuse),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local", "RFC 4193", Refuse),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local", "RFC 4291", Refuse),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)", "RFC 3879", Refuse),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", "RFC 4291", Refuse),
];

/// The range of [`SPECIAL`] holding `ip`, if any.
pub fn special(ip: IpAddr) -> Option<&'static Special> {
    SPECIAL.iter().find(|s| s.prefix.contains(ip))
}

/// Why a destination is refused, for the error message: the name of its
/// range (for IPv4 embedded in IPv6, the embedded address's range).
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    let s = special(ip)?;
    let IpAddr::V6(v6) = ip else {
        return Some(s.name);
    };
    let bits = u128::from(v6);
    // Truncation intended: the embedded address is exactly these 32 bits.
    let embedded = match s.verdict {
        Verdict::Refuse => return Some(s.name),
        Verdict::EmbeddedLow32 => bits as u32,
        Verdict::Embedded6to4 => (bits >> 80) as u32,
    };
    let embedded = IpAddr::V4(Ipv4Addr::from(embedded));
    special(embedded).map(|e| e.name)
}

/// A host name allowed by `allowed_hosts`: exact (case-insensitive), or
/// `*.example.com` for any subdomain of example.com.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
            None => host == pattern,
        }
    })
}

/// Errors the resolver returns; found again in the HTTP client's error chain.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{host} resolves only to refused addresses ({why} {ip}); set allow_private_upstreams = true to allow")]
    Blocked {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
}

/// Resolves with the system resolver and drops refused addresses (all of
/// them refused: an error). With `allow_private`, only resolves.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

/// Addresses returned per name, at most: a hostile DNS answer stays small.
const MAX_ADDRS: usize = 16;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError::Dns {
                    host: host.clone(),
                    reason: e.to_string(),
                })?;
            let mut ok: Vec<SocketAddr> = Vec::new();
            let mut refused = None;
            for addr in found.take(MAX_ADDRS) {
                match refusal(addr.ip()) {
                    Some(why) if !allow_private => refused = Some((addr.ip(), why)),
                    _ => ok.push(addr),
                }
            }
            if ok.is_empty() {
                return Err(Box::new(match refused {
                    Some((ip, why)) => ResolveError::Blocked { host, ip, why },
                    None => ResolveError::Dns {
                        host,
                        reason: "no addresses".into(),
                    },
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

impl GuardedResolver {
    pub fn shared(allow_private: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow_private })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        refusal(s.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_internal_ranges() {
        for s in [
            "127.0.0.1",
            "127.255.1.2",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ] {
            assert!(refused(s), "{s} must be refused");
        }
    }

    /// The ranges issue 17 found admitted, each with the name it is now
    /// refused under.
    #[test]
    fn issue_17_guard_gaps_are_refused() {
        for (addr, name) in [
            ("::ffff:0:0", "unspecified (\"this network\")"),
            ("::ffff:0:0:0", "IPv4-translated"),
            ("::ffff:0:808:808", "IPv4-translated"),
            ("64:ff9b:1::1", "NAT64 local-use prefix"),
            ("64:ff9b:1:ffff::808:808", "NAT64 local-use prefix"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("192.0.0.1", "IETF protocol assignments"),
            ("192.0.0.170", "IETF protocol assignments"),
            ("192.0.2.1", "documentation (TEST-NET-1)"),
            ("198.51.100.7", "documentation (TEST-NET-2)"),
            ("203.0.113.255", "documentation (TEST-NET-3)"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("3ffe::1", "6bone (returned)"),
            ("2001:10::1", "ORCHID (deprecated)"),
            ("2001:20::1", "ORCHIDv2"),
            ("2001:2::1", "benchmarking"),
            ("2001:1::1", "IETF protocol assignments"),
            ("100::1", "discard-only"),
            ("5f00::1", "segment routing SIDs"),
            ("::2:0:0", "reserved by IETF"),
            ("192.88.99.1", "deprecated 6to4 relay anycast"),
            ("2002:c000:0201::1", "documentation (TEST-NET-1)"),
            ("64:ff9b::c633:6401", "documentation (TEST-NET-2)"),
            ("::ffff:203.0.113.9", "documentation (TEST-NET-3)"),
        ] {
            assert_eq!(refusal(addr.parse().unwrap()), Some(name), "{addr}");
        }
    }

    /// One address inside every range of the table: refused (for ranges
    /// judged by an embedded IPv4 address: refused with a loopback one,
    /// admitted with a public one).
    #[test]
    fn every_special_range_is_refused() {
        for s in SPECIAL {
            // The first, middle and last address: the middle one is in no
            // narrower range listed before this one.
            let (first, mid, last) = match s.prefix {
                Prefix::V4(net, len) => {
                    let n = u32::from(net);
                    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                    let mid = if host == 0 { n } else { n | ((host >> 1) + 1) };
                    let ip = |x: u32| IpAddr::V4(x.into());
                    (ip(n), ip(mid), ip(n | host))
                }
                Prefix::V6(net, len) => {
                    let n = u128::from(net);
                    let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                    let mid = if host == 0 { n } else { n | ((host >> 1) + 1) };
                    let ip = |x: u128| IpAddr::V6(x.into());
                    (ip(n), ip(mid), ip(n | host))
                }
            };
            match (s.verdict, s.prefix) {
                (Verdict::Refuse, _) => {
                    for ip in [first, mid, last] {
                        assert!(refusal(ip).is_some(), "{ip} ({}) admitted", s.name);
                    }
                    assert_eq!(refusal(mid), Some(s.name), "{mid}");
                }
                (_, Prefix::V6(net, _)) => {
                    let put = |v4: [u8; 4]| -> IpAddr {
                        let v4 = u128::from(u32::from_be_bytes(v4));
                        let n = u128::from(net);
                        IpAddr::V6(
                            match s.verdict {
                                Verdict::Embedded6to4 => n | (v4 << 80),
                                _ => n | v4,
                            }
                            .into(),
                        )
                    };
                    assert_eq!(refusal(put([127, 0, 0, 1])), Some("loopback"), "{}", s.name);
                    assert_eq!(refusal(put([10, 1, 2, 3])), Some("private"), "{}", s.name);
                    assert_eq!(refusal(put([8, 8, 8, 8])), None, "{}", s.name);
                }
                (_, Prefix::V4(..)) => panic!("{}: IPv4 ranges embed nothing", s.name),
            }
            assert!(!s.rfc.is_empty() && !s.name.is_empty());
        }
    }

    #[test]
    fn admits_public_addresses() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "192.0.1.255",
            "192.0.3.1",
            "192.88.98.255",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2001:200::1",
            "2001:db9::1",
            "2001:db7:ffff::1",
            "2620:4f:8000::1",
            "4000::1",
        ] {
            assert!(
                !refused(s),
                "{s} must pass: {:?}",
                refusal(s.parse().unwrap())
            );
        }
    }

    #[test]
    fn allowed_hosts_patterns() {
        let allowed = vec![
            "api.example.com".to_string(),
            "*.data.example.org".to_string(),
        ];
        assert!(host_allowed("API.example.com", &allowed));
        assert!(host_allowed("api.example.com.", &allowed));
        assert!(host_allowed("x.data.example.org", &allowed));
        assert!(!host_allowed("data.example.org", &allowed));
        assert!(!host_allowed("evildata.example.org", &allowed));
        assert!(!host_allowed("api.example.com.evil.net", &allowed));
    }

    #[tokio::test]
    async fn resolver_refuses_loopback_names_unless_allowed() {
        let name: Name = "localhost".parse().unwrap();
        let err = GuardedResolver {
            allow_private: false,
        }
        .resolve(name)
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("refused"), "{err}");
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = GuardedResolver {
            allow_private: true,
        }
        .resolve(name)
        .await
        .unwrap()
        .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
