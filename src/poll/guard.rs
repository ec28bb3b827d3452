//! The upstream guard (SSRF): which addresses and hosts patchfeed may fetch.
//!
//! By default only public unicast addresses pass: loopback, private,
//! link-local (169.254.0.0/16, the cloud metadata range), unique-local,
//! unspecified, shared (CGNAT), multicast, broadcast and reserved ranges are
//! refused, including IPv4 embedded in IPv6 (mapped, NAT64, 6to4). The check
//! runs on the addresses DNS returned — in the resolver the HTTP client
//! connects through, so there is no window between check and connect — and
//! on IP literals in the URL of every request and every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination is refused, for the error message.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if a == 0 => "unspecified",
        _ if a == 100 && (64..128).contains(&b) => "shared (CGNAT)",
        _ if a == 198 && (b == 18 || b == 19) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() || a >= 240 => "reserved",
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach an IPv4 host.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refusal_v4(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32));
    }
    if seg[0] == 0x2002 {
        return refusal_v4(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32));
    }
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if seg[0] & 0xfe00 == 0xfc00 => "unique-local",
        _ if seg[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if seg[0] & 0xffc0 == 0xfec0 => "site-local",
        _ if ip.is_multicast() => "multicast",
        // IPv4-compatible (deprecated) ::a.b.c.d
        _ if seg[..6] == [0; 6] => "reserved",
        _ => return None,
    })
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

    #[test]
    fn admits_public_addresses() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(!refused(s), "{s} must pass");
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
