//! A session's socket addresses (its client, its origin or peer) in 24 bytes: std's
//! `SocketAddr` takes 32, for an IPv6 flow label nothing here sets or reads. Every
//! connection keeps two (issue 18's memory budget per idle connection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// An IPv4 or IPv6 address, port and IPv6 scope (link-local origins need it to connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackedAddr {
    /// IPv4 in the first 4 bytes.
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    v6: bool,
}

impl From<SocketAddr> for PackedAddr {
    fn from(addr: SocketAddr) -> Self {
        let mut ip = [0; 16];
        let (v6, scope_id) = match addr {
            SocketAddr::V4(a) => {
                ip[..4].copy_from_slice(&a.ip().octets());
                (false, 0)
            }
            SocketAddr::V6(a) => {
                ip = a.ip().octets();
                (true, a.scope_id())
            }
        };
        PackedAddr {
            ip,
            scope_id,
            port: addr.port(),
            v6,
        }
    }
}

impl PackedAddr {
    pub(super) fn get(self) -> SocketAddr {
        if self.v6 {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(self.ip),
                self.port,
                0,
                self.scope_id,
            ))
        } else {
            let [a, b, c, d, ..] = self.ip;
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), self.port))
        }
    }

    pub(super) fn ip(self) -> IpAddr {
        self.get().ip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_back_as_given_but_for_the_flow_label() {
        for text in [
            "127.0.0.1:8080",
            "[::1]:443",
            "[fe80::1%7]:9001",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = text.parse().expect("address");
            assert_eq!(PackedAddr::from(addr).get(), addr, "{text}");
        }
        let labelled = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0x12345, 0));
        assert_eq!(
            PackedAddr::from(labelled).get(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0, 0))
        );
        assert_eq!(std::mem::size_of::<Option<PackedAddr>>(), 24);
    }
}
