//! The broadcast function's HTTP publish API, on `[functions] publish_listen`.
//!
//! - `POST /publish/<channel>`: the body is the message (text if it is UTF-8, else binary),
//!   delivered to that channel on every broadcast route of every worker; the answer is
//!   `200 {"delivered":N}`.
//! - `GET /channels/<channel>`: `200 {"channel":"…","subscribers":N}` (presence, all workers;
//!   with a `[broker]`, the fleet's total and `"hosts":{"<host>":N,…}`).
//!
//! Requests reach the workers exactly as `wsedgectl publish` does (a command in each worker's
//! mailbox, answers summed here). One request per connection (`Connection: close`), a
//! `Content-Length` is required (no chunked bodies), bodies are bounded by [`MAX_BODY`] (413
//! past it, answered before the body is read), and every read and write has a timeout. A
//! connection is served on its own short-lived thread, at most [`MAX_CONCURRENT`] at once
//! (503 past it), so a slow client holds up nobody. Nothing a peer sends can panic the thread:
//! the head is parsed by hand with bounds everywhere.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wsedge_command::wire::{Request, Response};

use super::Shared;

/// The largest message accepted, in bytes.
const MAX_BODY: usize = wsedge_command::wire::MAX_PUBLISH;
/// Connections served at once.
const MAX_CONCURRENT: usize = 32;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and starts the accept thread; returns the bound address.
pub(super) fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<SocketAddr> {
    let listener = shared.upgrade.service_listener(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("wsedge-publish".to_owned())
        .spawn(move || accept_loop(&listener, &shared))?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            // Shut down: a newer generation serves this address.
            Err(_) if shared.upgrade.retired() => return,
            Err(e) => {
                tracing::warn!(error = %e, "publish API accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONCURRENT {
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = respond(
                &mut stream,
                &Answer::error("503 Service Unavailable", "busy"),
            );
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (s, a) = (Arc::clone(shared), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("wsedge-publish-conn".to_owned())
            .spawn(move || {
                if let Err(e) = serve(stream, &s) {
                    tracing::debug!(error = %e, "publish API request failed");
                }
                a.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot spawn a publish API thread");
        }
    }
}

/// A response: status line text and JSON body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: &'static str,
    body: String,
    /// Extra header lines, each ending in CRLF.
    extra: &'static str,
}

impl Answer {
    fn ok(body: String) -> Answer {
        Answer {
            status: "200 OK",
            body,
            extra: "",
        }
    }

    fn error(status: &'static str, error: &str) -> Answer {
        Answer {
            status,
            body: serde_json::json!({ "error": error }).to_string(),
            extra: "",
        }
    }
}

/// What the request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Publish { channel: String, length: usize },
    Presence { channel: String },
}

/// A parsed head: the target, whether the client waits for `100 Continue`, and how many
/// bytes of the buffer the head took.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    target: Target,
    expect_continue: bool,
    head_len: usize,
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut stream,
                &Answer::error("431 Request Header Fields Too Large", "head_too_large"),
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let parsed = match parse_head(&buf[..head_len]) {
        Ok(p) => p,
        Err(answer) => return respond(&mut stream, &answer),
    };
    let answer = match parsed.target {
        Target::Presence { channel } => answer_of(shared.handle(Request::Presence { channel })),
        Target::Publish { channel, length } => {
            let mut body = buf.split_off(parsed.head_len);
            if body.len() < length && parsed.expect_continue {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            while body.len() < length {
                let want = (length - body.len()).min(chunk.len());
                let n = stream.read(&mut chunk[..want])?;
                if n == 0 {
                    return Ok(());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
            answer_of(shared.handle(Request::Publish {
                channel,
                message: body,
            }))
        }
    };
    respond(&mut stream, &answer)
}

/// The HTTP answer for a control response.
fn answer_of(response: Response) -> Answer {
    match response {
        Response::Published { delivered, .. } => {
            Answer::ok(serde_json::json!({ "delivered": delivered }).to_string())
        }
        Response::Presence {
            channel,
            subscribers,
            hosts,
        } => {
            let mut body = serde_json::json!({ "channel": channel, "subscribers": subscribers });
            // With a broker: each host's count (docs/broker.md).
            if !hosts.is_empty() {
                body["hosts"] = hosts
                    .iter()
                    .map(|h| (h.host.clone(), serde_json::Value::from(h.subscribers)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            Answer::ok(body.to_string())
        }
        Response::Error { kind, message } => {
            let status = match kind {
                wsedge_command::wire::ErrorKind::BadRequest => "400 Bad Request",
                wsedge_command::wire::ErrorKind::Unavailable => "503 Service Unavailable",
                _ => "500 Internal Server Error",
            };
            Answer {
                status,
                body: serde_json::json!({ "error": kind.as_str(), "message": message }).to_string(),
                extra: "",
            }
        }
        _ => Answer::error("500 Internal Server Error", "internal"),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a request head (ending in CRLF CRLF); an error is the answer to send.
fn parse_head(head: &[u8]) -> Result<Parsed, Answer> {
    let bad = |what: &str| Answer::error("400 Bad Request", what);
    let text = std::str::from_utf8(head).map_err(|_| bad("bad_request"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad_request"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("bad_request"));
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("bad_request"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("bad_content_length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("bad_content_length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    let (route, channel) = if let Some(c) = path.strip_prefix("/publish/") {
        ("publish", c)
    } else if let Some(c) = path.strip_prefix("/channels/") {
        ("channels", c)
    } else {
        return Err(Answer::error("404 Not Found", "not_found"));
    };
    if !wsedge_proto::channels::is_valid_channel(channel) {
        return Err(bad("bad_channel"));
    }
    let channel = channel.to_owned();
    match (route, method) {
        ("publish", "POST") => {
            if chunked {
                return Err(Answer::error("411 Length Required", "length_required"));
            }
            let length =
                length.ok_or_else(|| Answer::error("411 Length Required", "length_required"))?;
            if length > MAX_BODY {
                return Err(Answer::error("413 Content Too Large", "too_large"));
            }
            Ok(Parsed {
                target: Target::Publish { channel, length },
                expect_continue,
                head_len: head.len(),
            })
        }
        ("channels", "GET") => Ok(Parsed {
            target: Target::Presence { channel },
            expect_continue: false,
            head_len: head.len(),
        }),
        ("publish", _) => Err(Answer {
            extra: "Allow: POST\r\n",
            ..Answer::error("405 Method Not Allowed", "method_not_allowed")
        }),
        _ => Err(Answer {
            extra: "Allow: GET\r\n",
            ..Answer::error("405 Method Not Allowed", "method_not_allowed")
        }),
    }
}

fn respond(stream: &mut TcpStream, answer: &Answer) -> io::Result<()> {
    let text = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{}\n",
        answer.status,
        answer.body.len() + 1,
        answer.extra,
        answer.body
    );
    stream.write_all(text.as_bytes())?;
    stream.flush()?;
    // Unread request bytes (a refused body) would make close send a reset that can destroy
    // the answer in flight: end our side, then drain briefly.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < MAX_BODY {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> &'static str {
        match parse_head(head.as_bytes()) {
            Ok(_) => "ok",
            Err(a) => a.status,
        }
    }

    #[test]
    fn parses_publish_and_presence() {
        let p = parse_head(b"POST /publish/news?x=1 HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nExpect: 100-continue\r\n\r\n")
            .expect("publish");
        assert_eq!(
            p.target,
            Target::Publish {
                channel: "news".into(),
                length: 5
            }
        );
        assert!(p.expect_continue);
        let p = parse_head(b"GET /channels/a.b:c-d_e HTTP/1.0\r\n\r\n").expect("presence");
        assert_eq!(
            p.target,
            Target::Presence {
                channel: "a.b:c-d_e".into()
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\n\r\n"),
            "411 Length Required"
        );
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "411 Length Required"
        );
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"),
            "413 Content Too Large"
        );
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n"),
            "ok"
        );
        assert_eq!(
            status("POST /publish/bad%20name HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
            "400 Bad Request"
        );
        assert_eq!(
            status("POST /publish/ HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
            "400 Bad Request"
        );
        assert_eq!(
            status("POST /publish/n HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
            "400 Bad Request"
        );
        assert_eq!(
            status("POST /publish/n HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "400 Bad Request"
        );
        assert_eq!(
            status("GET /publish/news HTTP/1.1\r\n\r\n"),
            "405 Method Not Allowed"
        );
        assert_eq!(
            status("DELETE /channels/news HTTP/1.1\r\n\r\n"),
            "405 Method Not Allowed"
        );
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(status("GET\r\n\r\n"), "400 Bad Request");
        assert_eq!(status("GET / SPDY/3\r\n\r\n"), "400 Bad Request");
        assert_eq!(
            status("GET /channels/x HTTP/1.1\r\nno colon\r\n\r\n"),
            "400 Bad Request"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet = b"POST /publish/channels: \r\n0123456789\xff";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let mut bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = parse_head(&bytes);
        }
    }
}
