//! Forwarding headers: what the origin is told about the client.
//!
//! Used by [`crate::handshake::rewrite_for_origin`] (step 2 of a connection's life,
//! docs/architecture.md) with the chosen route's [`Forwarding`]. A client may send
//! `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded` and `X-Real-IP`
//! with any value it likes, so by default they are all replaced by the edge's own (the
//! behaviour of Envoy's `use_remote_address` with no trusted hops). A route behind another
//! proxy lists that proxy's addresses in `trusted_proxies`: from such a peer the forwarding
//! headers are kept, the peer is appended to `X-Forwarded-For`, and `X-Real-IP` names the
//! rightmost address of the chain that is not a trusted proxy (nginx's `set_real_ip_from`
//! with `real_ip_recursive on`). Pure: no I/O.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::firewall::Cidr;

/// Whether the origin gets an `X-Real-IP` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XRealIp {
    /// `X-Real-IP: <client address>` (the default).
    #[default]
    Set,
    /// No `X-Real-IP` at all (the client's is removed too).
    Remove,
}

/// One route's forwarding policy. The default trusts no peer and sets `X-Real-IP`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarding {
    /// Peers whose forwarding headers are kept and extended rather than replaced.
    pub trusted_proxies: Vec<Cidr>,
    pub x_real_ip: XRealIp,
}

/// The policy of a route without one (trust nobody, set `X-Real-IP`).
pub static DEFAULT_FORWARDING: Forwarding = Forwarding {
    trusted_proxies: Vec::new(),
    x_real_ip: XRealIp::Set,
};

impl Forwarding {
    /// True if `ip` is one of the trusted proxies (IPv4-mapped addresses count as IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client's address as far as it can be trusted: walking the `X-Forwarded-For`
    /// chain `xff` (its values in header order) from the right, starting at `peer`, each
    /// trusted address lets the one to its left speak; the first address that is not
    /// trusted is the client. An unparsable entry stops the walk at the last good address.
    /// For an untrusted peer this is the peer.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let entries = xff
            .rev()
            .flat_map(|v| v.rsplit(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty());
        for entry in entries {
            let Some(ip) = parse_node(entry) else {
                break;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// An address as proxies write it in `X-Forwarded-For`: `192.0.2.1`, `2001:db8::1`,
/// `[2001:db8::1]`, with or without `:port`.
fn parse_node(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn trusting(cidrs: &[&str]) -> Forwarding {
        Forwarding {
            trusted_proxies: cidrs
                .iter()
                .map(|c| c.parse().unwrap_or_else(|_| panic!("{c}")))
                .collect(),
            x_real_ip: XRealIp::Set,
        }
    }

    fn client(f: &Forwarding, peer: &str, xff: &[&str]) -> IpAddr {
        f.client_address(ip(peer), xff.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let f = Forwarding::default();
        assert_eq!(client(&f, "192.0.2.9", &["6.6.6.6"]), ip("192.0.2.9"));
        assert_eq!(
            client(&f, "::ffff:192.0.2.9", &["6.6.6.6"]),
            ip("192.0.2.9")
        );
        let f = trusting(&["10.0.0.0/8"]);
        assert_eq!(client(&f, "192.0.2.9", &["6.6.6.6"]), ip("192.0.2.9"));
        assert_eq!(DEFAULT_FORWARDING, Forwarding::default());
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let f = trusting(&["10.0.0.0/8", "2001:db8::/32"]);
        // The trusted proxy appended the address it saw: that is the client.
        assert_eq!(
            client(&f, "10.0.0.1", &["6.6.6.6, 203.0.113.5"]),
            ip("203.0.113.5")
        );
        // Several trusted hops, over two header lines.
        assert_eq!(
            client(&f, "10.0.0.1", &["6.6.6.6, 203.0.113.5", "10.9.9.9"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            client(&f, "10.0.0.1", &["[2001:db8::7]:443, 198.51.100.1:5555"]),
            ip("198.51.100.1")
        );
        // Everything trusted: the leftmost address.
        assert_eq!(client(&f, "10.0.0.1", &["10.1.1.1"]), ip("10.1.1.1"));
        // No chain: the trusted peer itself.
        assert_eq!(client(&f, "::ffff:10.0.0.1", &[]), ip("10.0.0.1"));
        // Garbage stops the walk at the last address that parsed.
        assert_eq!(
            client(&f, "10.0.0.1", &["203.0.113.5, unknown, 10.2.2.2"]),
            ip("10.2.2.2")
        );
        assert_eq!(
            client(&f, "10.0.0.1", &["[2001:db8::1]"]),
            ip("2001:db8::1")
        );
        // Empty elements are skipped.
        assert_eq!(
            client(&f, "10.0.0.1", &["203.0.113.5,, ,"]),
            ip("203.0.113.5")
        );
    }
}
