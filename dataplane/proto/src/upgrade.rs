//! Handshakes the edge makes itself: the 101 it answers when a built-in function serves a
//! route, and the request it sends when it is a WebSocket client (`bridge`).
//!
//! Pure: the ring driver sends what these build.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::accept::accept_key;

/// The subprotocol a `broadcast` client asks for to get JSON envelopes.
pub const BROADCAST_V1: &str = "wsedge.v1";

/// The edge's own `101 Switching Protocols` for a client whose key gave `accept`, selecting
/// `protocol` if any.
pub fn switching_protocols(accept: &[u8; 28], protocol: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a `Sec-WebSocket-Protocol` offer (a comma list) contains `wanted`.
pub fn offers_protocol(offer: Option<&[u8]>, wanted: &str) -> bool {
    offer.is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(wanted.as_bytes()))
    })
}

/// A client handshake for `bridge`: the edge's own request to `host` and `path`, with a key
/// from 16 random bytes. Returns the request and the accept value the answer must carry.
pub fn bridge_request(
    host: &str,
    path: &str,
    random: [u8; 16],
    peer: IpAddr,
) -> (Vec<u8>, [u8; 28]) {
    let mut key = [0u8; 24];
    // 16 bytes always encode to exactly 24 base64 characters.
    let _ = STANDARD.encode_slice(random, &mut key);
    let accept = accept_key(&key);
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(&key);
    out.extend_from_slice(b"\r\nX-Forwarded-For: ");
    out.extend_from_slice(peer.to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    (out, accept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{HeadLimits, RequestKind, parse_request};
    use crate::response::parse_response;

    #[test]
    fn switching_protocols_passes_the_response_check() {
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let head = switching_protocols(&accept, Some(BROADCAST_V1));
        let response = parse_response(&head, &HeadLimits::default(), Some(&accept))
            .expect("valid")
            .expect("complete");
        assert!(response.upgraded);
        assert_eq!(response.head_len, head.len());
        assert!(String::from_utf8_lossy(&head).contains("Sec-WebSocket-Protocol: wsedge.v1\r\n"));
    }

    #[test]
    fn bridge_request_is_a_valid_upgrade_with_a_matching_accept() {
        let (head, accept) = bridge_request(
            "127.0.0.1:9000",
            "/feed?x=1",
            [7; 16],
            "::ffff:10.1.2.3".parse().expect("ip"),
        );
        let request = parse_request(&head, &HeadLimits::default())
            .expect("valid")
            .expect("complete");
        let RequestKind::WebSocket { key } = request.kind else {
            panic!("not an upgrade");
        };
        assert_eq!(accept_key(key), accept);
        assert_eq!(request.target, "/feed?x=1");
        assert_eq!(request.header("x-forwarded-for"), Some(&b"10.1.2.3"[..]));
    }

    #[test]
    fn protocol_offers() {
        assert!(offers_protocol(Some(b"chat, wsedge.v1"), BROADCAST_V1));
        assert!(!offers_protocol(Some(b"chat"), BROADCAST_V1));
        assert!(!offers_protocol(None, BROADCAST_V1));
    }
}
