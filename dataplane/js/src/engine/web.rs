//! The web formats the bindings speak: HTTP/1.1 responses (a `fetch` answer), and a
//! `new WebSocket(url)`'s target and client handshake. Pure functions; part of `engine`.

use std::net::{IpAddr, SocketAddr};

/// An HTTP/1.1 response with its body: `Content-Length` set, `Connection: close`.
pub(super) fn http_response(status: u16, text: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let reason = if text.is_empty() {
        reason_phrase(status)
    } else {
        text
    };
    let mut out = format!("HTTP/1.1 {status} {}\r\n", clean(reason)).into_bytes();
    let mut typed = false;
    for pair in headers.chunks(2) {
        let [name, value] = pair else { continue };
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-length" | "connection" | "transfer-encoding" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        typed |= lower == "content-type";
        out.extend_from_slice(format!("{}: {}\r\n", clean(name), clean(value)).as_bytes());
    }
    if !typed && !body.is_empty() {
        out.extend_from_slice(b"Content-Type: text/plain;charset=UTF-8\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// A header name or value without line breaks (no response splitting).
fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Where a `new WebSocket(url)` goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WsTarget {
    pub(crate) addr: SocketAddr,
    /// The `Host` header's value.
    pub(crate) host: String,
    /// The request target (path and query).
    pub(crate) target: String,
    /// `wss://`: the name the peer's certificate must carry (`localhost`, or the address).
    pub(crate) tls: Option<String>,
}

/// A `ws://` or `wss://` URL's address, `Host` value, request target and TLS name (no name
/// resolution: `localhost` is 127.0.0.1, anything else must be an address).
pub(crate) fn ws_target(href: &str) -> Result<WsTarget, String> {
    let url = url::Url::parse(href).map_err(|e| format!("{href}: {e}"))?;
    let secure = match url.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(format!(
                "{href}: the scheme must be ws:// or wss://, not {other}:"
            ));
        }
    };
    let port = url.port().unwrap_or(if secure { 443 } else { 80 });
    let ip: IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain("localhost")) => IpAddr::from([127, 0, 0, 1]),
        _ => {
            return Err(format!(
                "{href}: give an IP address (functions resolve no names)"
            ));
        }
    };
    let host = url::quirks::host(&url).to_owned();
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    // The certificate is checked against the name the script wrote: `localhost`, or the
    // address (an IP address SAN), without brackets for IPv6.
    let tls = secure.then(|| match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        _ => ip.to_string(),
    });
    Ok(WsTarget {
        addr: SocketAddr::new(ip, port),
        host,
        target,
        tls,
    })
}

/// The edge's client handshake for `new WebSocket`: the head and the accept value.
pub(super) fn client_head(
    host: &str,
    target: &str,
    protocols: &[String],
    random: [u8; 16],
) -> (Vec<u8>, [u8; 28]) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(random);
    let accept = wsedge_proto::accept::accept_key(key.as_bytes());
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if !protocols.is_empty() {
        head.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            protocols.join(", ")
        ));
    }
    head.push_str("\r\n");
    (head.into_bytes(), accept)
}

/// A token as RFC 7230 defines it (subprotocol names).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_targets_need_an_address_and_a_ws_scheme() {
        let t = ws_target("ws://127.0.0.1:9001/feed?x=1").expect("ok");
        assert_eq!(t.addr, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(
            (t.host.as_str(), t.target.as_str(), t.tls),
            ("127.0.0.1:9001", "/feed?x=1", None)
        );
        let t = ws_target("ws://localhost/").expect("ok");
        assert_eq!((t.addr.port(), t.target.as_str()), (80, "/"));
        // wss://: port 443 by default, verified against the name written.
        let t = ws_target("wss://127.0.0.1/x").expect("ok");
        assert_eq!((t.addr.port(), t.tls.as_deref()), (443, Some("127.0.0.1")));
        let t = ws_target("wss://localhost:8443/").expect("ok");
        assert_eq!(
            (t.addr, t.host.as_str(), t.tls.as_deref()),
            (
                "127.0.0.1:8443".parse().expect("addr"),
                "localhost:8443",
                Some("localhost")
            )
        );
        let t = ws_target("wss://[::1]:9443/").expect("ok");
        assert_eq!(t.tls.as_deref(), Some("::1"));
        assert!(
            ws_target("ws://example.com/")
                .expect_err("dns")
                .contains("IP address")
        );
        assert!(ws_target("http://127.0.0.1/").is_err());
    }

    #[test]
    fn responses_carry_their_length_and_no_line_breaks_from_headers() {
        let r = http_response(
            403,
            "",
            &[
                "X-A".into(),
                "1\r\nInjected: yes".into(),
                "Content-Length".into(),
                "9".into(),
            ],
            b"no",
        );
        let text = String::from_utf8(r).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("X-A: 1Injected: yes\r\n"));
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nno"));
        assert_eq!(text.matches("Content-Length").count(), 1);
    }
}
