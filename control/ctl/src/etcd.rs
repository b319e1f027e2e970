//! A small blocking client of etcd's v3 JSON gateway (etcd 3.4 and later), for the fleet
//! configuration: range, put, a compare-and-swap transaction, leases, and a watch stream.
//!
//! Why the gateway and not the `etcd-client` crate: that crate speaks gRPC through tonic, so
//! it needs tokio and `protoc` at build time, while the control process is a handful of
//! threads with blocking calls. The gateway is plain HTTP/1.1 with JSON bodies (bytes as
//! standard base64, 64-bit integers as strings); a watch is one long chunked response with
//! one JSON object per message. Why not `ureq` for the HTTP part: a watch is a response that
//! never ends, and the client must own its socket to turn on TCP keepalive (a dead or
//! partitioned etcd then fails the read within ~25 s instead of never) while having no read
//! timeout for the quiet stream; ureq 3 only has whole-body timeouts. What the gateway needs
//! of HTTP is small: one request per connection (`Connection: close`), a head parsed with
//! `httparse` (already the dataplane's parser) and a chunked body. No TLS: see
//! docs/operations.md ("Fleet configuration from etcd").
//!
//! Every request carries `Grpc-Metadata-Hasleader: true` (etcd's require-leader metadata),
//! so a member cut off from its cluster's leader cancels the watch instead of keeping a
//! stream that will never deliver.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The largest unary answer read (a document is at most etcd's 1.5 MiB request limit; base64
/// and JSON make it larger).
const MAX_ANSWER: u64 = 16 << 20;
/// The largest response head.
const MAX_HEAD: usize = 16 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    /// No endpoint could be reached or answered (connection refused, timeout, reset).
    #[error("cannot reach etcd ({endpoints}): {last}")]
    Unreachable { endpoints: String, last: String },
    /// etcd answered with an error.
    #[error("etcd: {message}")]
    Server { message: String },
    /// The answer could not be read.
    #[error("unreadable answer from etcd: {0}")]
    Protocol(String),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
}

/// A range answer: the store's revision and the keys found.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    pub(crate) revision: i64,
    pub(crate) kvs: Vec<Kv>,
}

/// The outcome of [`Etcd::put_if_revision`].
#[derive(Debug, Clone)]
pub(crate) enum Cas {
    /// Written at this revision.
    Written { revision: i64 },
    /// The key's revision was not the expected one; this is what it holds now.
    Conflict { current: Option<Kv> },
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchMessage {
    /// The watch is set up.
    Created,
    /// Changes of the watched key, in order.
    Events(Vec<WatchEvent>),
    /// The start revision was compacted away: read the key again and watch from there.
    Compacted { compact_revision: i64 },
    /// etcd ended the watch for another reason (e.g. its member lost the leader).
    Canceled(String),
    /// Anything else (progress notifications).
    Other,
}

/// One change of a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchEvent {
    Put(Kv),
    Delete { revision: i64 },
}

/// A client for a list of endpoints; calls go to the last one that answered, then the others.
#[derive(Debug)]
pub(crate) struct Etcd {
    endpoints: Vec<String>,
    preferred: AtomicUsize,
    timeout: Duration,
}

impl Etcd {
    /// A client of `urls` (`http://host:port`, checked by the configuration); each unary call
    /// waits at most `timeout` per endpoint.
    pub(crate) fn new(urls: &[String], timeout: Duration) -> Etcd {
        let endpoints = urls
            .iter()
            .map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect();
        Etcd {
            endpoints,
            preferred: AtomicUsize::new(0),
            timeout,
        }
    }

    /// The value of `key` (none if absent) and the store's revision.
    pub(crate) fn get(&self, key: &str) -> Result<Range, EtcdError> {
        let answer = self.call("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))?;
        range_of(&answer)
    }

    /// Every key that starts with `prefix`.
    pub(crate) fn get_prefix(&self, prefix: &str) -> Result<Range, EtcdError> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        range_of(&answer)
    }

    /// Writes `value` at `key` (attached to `lease` when given); the new revision.
    pub(crate) fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(lease) = lease {
            body["lease"] = Value::String(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", &body)?;
        revision_of(&answer)
    }

    /// Writes `value` at `key` only if the key's last change is `expected` (0: only if the
    /// key does not exist): the compare-and-swap of `wsedgectl fleet apply`.
    pub(crate) fn put_if_revision(
        &self,
        key: &str,
        value: &[u8],
        expected: i64,
    ) -> Result<Cas, EtcdError> {
        let k = b64(key.as_bytes());
        let body = json!({
            "compare": [{ "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string() }],
            "success": [{ "request_put": { "key": k, "value": b64(value) } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let answer = self.call("/v3/kv/txn", &body)?;
        // Protobuf's JSON leaves out false and zero values: no `succeeded` means false.
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Cas::Written {
                revision: revision_of(&answer)?,
            });
        }
        let current = answer["responses"]
            .as_array()
            .and_then(|r| r.first())
            .map(|r| range_of(&r["response_range"]))
            .transpose()?
            .and_then(|r| r.kvs.into_iter().next());
        Ok(Cas::Conflict { current })
    }

    /// Grants a lease of `ttl`; its id.
    pub(crate) fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs().max(1) }))?;
        if let Some(e) = answer["error"].as_str().filter(|e| !e.is_empty()) {
            return Err(EtcdError::Server {
                message: e.to_owned(),
            });
        }
        int(&answer["ID"]).ok_or_else(|| EtcdError::Protocol("lease grant without an ID".into()))
    }

    /// Renews lease `id` once; false if etcd no longer knows it (it expired).
    pub(crate) fn lease_keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        // The gateway streams `{"result": {...}}`; an unknown lease comes back with no TTL.
        Ok(int(&answer["result"]["TTL"]).unwrap_or(0) > 0)
    }

    /// Starts watching `key` from `revision` (inclusive).
    pub(crate) fn watch(&self, key: &str, revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(key.as_bytes()),
            "start_revision": revision.to_string(),
        }});
        let (endpoint, reader) = self.first_answer(|authority| {
            let (stream, reader) = open(authority, "/v3/watch", &body, self.timeout)?;
            // A quiet watch is normal: no read timeout, TCP keepalive finds a dead peer.
            stream.set_read_timeout(None)?;
            keepalive(&stream)?;
            Ok(reader)
        })?;
        let _ = endpoint;
        Ok(Watch {
            messages: serde_json::Deserializer::from_reader(BufReader::new(reader))
                .into_iter::<Value>(),
        })
    }

    /// A unary call: POSTs `body` to `path` and reads the whole JSON answer.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let (_, answer) = self.first_answer(|authority| {
            let (_, reader) = open(authority, path, body, self.timeout)?;
            let mut text = Vec::new();
            reader.take(MAX_ANSWER).read_to_end(&mut text)?;
            // Streaming endpoints (keepalive) send one `{"result": ...}` object and a newline.
            let first = serde_json::Deserializer::from_slice(&text)
                .into_iter::<Value>()
                .next()
                .transpose()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok(first.unwrap_or(Value::Null))
        })?;
        if let Some(message) = error_of(&answer) {
            return Err(EtcdError::Server { message });
        }
        Ok(answer)
    }

    /// Runs `attempt` on the preferred endpoint, then on the others, until one succeeds.
    fn first_answer<T>(
        &self,
        attempt: impl Fn(&str) -> io::Result<T>,
    ) -> Result<(usize, T), EtcdError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = String::from("no endpoint configured");
        for i in 0..n {
            let index = (start + i) % n;
            let authority = &self.endpoints[index];
            match attempt(authority) {
                Ok(v) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((index, v));
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(EtcdError::Protocol(format!("{authority}: {e}")));
                }
                Err(e) => last = format!("{authority}: {e}"),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints.join(", "),
            last,
        })
    }
}

/// A running watch: one message at a time, blocking until etcd sends one.
pub(crate) struct Watch {
    messages:
        serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<Body>>, Value>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

impl Watch {
    /// The next message; an error when the stream ends or breaks (watch again from the
    /// revision after the last event seen).
    pub(crate) fn next_message(&mut self) -> Result<WatchMessage, EtcdError> {
        match self.messages.next() {
            None => Err(EtcdError::Unreachable {
                endpoints: "watch".into(),
                last: "the watch stream ended".into(),
            }),
            Some(Err(e)) if e.is_io() || e.is_eof() => Err(EtcdError::Unreachable {
                endpoints: "watch".into(),
                last: e.to_string(),
            }),
            Some(Err(e)) => Err(EtcdError::Protocol(e.to_string())),
            Some(Ok(value)) => parse_watch(&value),
        }
    }
}

/// Reads one watch message (`{"result": ...}` or `{"error": ...}`).
pub(crate) fn parse_watch(value: &Value) -> Result<WatchMessage, EtcdError> {
    if let Some(message) = error_of(value) {
        return Err(EtcdError::Server { message });
    }
    let result = &value["result"];
    if let Some(rev) = int(&result["compact_revision"]).filter(|r| *r > 0) {
        return Ok(WatchMessage::Compacted {
            compact_revision: rev,
        });
    }
    if result["canceled"].as_bool() == Some(true) {
        let reason = result["cancel_reason"].as_str().unwrap_or("canceled");
        return Ok(WatchMessage::Canceled(reason.to_owned()));
    }
    if result["created"].as_bool() == Some(true) {
        return Ok(WatchMessage::Created);
    }
    let Some(events) = result["events"].as_array() else {
        return Ok(WatchMessage::Other);
    };
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let kv = kv_of(&event["kv"])?;
        // PUT is the enum's zero value, so it is left out of the JSON.
        if event["type"].as_str() == Some("DELETE") {
            out.push(WatchEvent::Delete {
                revision: kv.mod_revision,
            });
        } else {
            out.push(WatchEvent::Put(kv));
        }
    }
    Ok(WatchMessage::Events(out))
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the key range of every key starting with `prefix` (etcd's prefix rule).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit integer, which the gateway writes as a string.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn error_of(answer: &Value) -> Option<String> {
    match &answer["error"] {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(
            other["message"]
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned),
        ),
    }
}

fn revision_of(answer: &Value) -> Result<i64, EtcdError> {
    int(&answer["header"]["revision"])
        .ok_or_else(|| EtcdError::Protocol(format!("no revision in {answer}")))
}

fn kv_of(kv: &Value) -> Result<Kv, EtcdError> {
    let decode = |field: &str| -> Result<Vec<u8>, EtcdError> {
        match kv[field].as_str() {
            None => Ok(Vec::new()),
            Some(s) => B64
                .decode(s)
                .map_err(|e| EtcdError::Protocol(format!("{field} is not base64: {e}"))),
        }
    };
    let key = String::from_utf8(decode("key")?)
        .map_err(|_| EtcdError::Protocol("a key that is not UTF-8".into()))?;
    Ok(Kv {
        key,
        value: decode("value")?,
        mod_revision: int(&kv["mod_revision"]).unwrap_or(0),
    })
}

fn range_of(answer: &Value) -> Result<Range, EtcdError> {
    let kvs = match answer["kvs"].as_array() {
        None => Vec::new(),
        Some(list) => list.iter().map(kv_of).collect::<Result<_, _>>()?,
    };
    Ok(Range {
        revision: revision_of(answer)?,
        kvs,
    })
}

/// TCP keepalive: first probe after 10 s of silence, then every 5 s, dead after 3 misses.
fn keepalive(stream: &TcpStream) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = |r: nix::Result<()>| r.map_err(io::Error::from);
    set(setsockopt(stream, sockopt::KeepAlive, &true))?;
    set(setsockopt(stream, sockopt::TcpKeepIdle, &10))?;
    set(setsockopt(stream, sockopt::TcpKeepInterval, &5))?;
    set(setsockopt(stream, sockopt::TcpKeepCount, &3))
}

/// Connects to `authority`, POSTs `body` to `path`, reads the response head; the socket and
/// a reader of the body. A status other than 200 with a JSON body is returned as the body
/// (etcd puts its error there); any other failure is an error.
fn open(
    authority: &str,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> io::Result<(TcpStream, Body)> {
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nGrpc-Metadata-Hasleader: true\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (&stream).write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        if head[before..] == *b"\r\n" || head[before..] == *b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP response",
            ));
        }
    }
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    if status != 200 && !json {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP {status} from {path} (is this an etcd 3.4+ client URL?)"),
        ));
    }
    let framing = if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        Framing::Chunked {
            left: 0,
            done: false,
        }
    } else if let Some(len) = header("content-length") {
        Framing::Length(
            len.parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?,
        )
    } else {
        Framing::UntilClose
    };
    Ok((stream, Body { reader, framing }))
}

/// How a response body ends.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    UntilClose,
}

/// A response body: de-chunked, or cut at its length.
#[derive(Debug)]
pub(crate) struct Body {
    reader: BufReader<TcpStream>,
    framing: Framing,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::UntilClose => self.reader.read(buf),
            Framing::Length(left) => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                Ok(n)
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let size = chunk_size(&mut self.reader)?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        loop {
                            let mut line = Vec::new();
                            let n = (&mut self.reader)
                                .take(MAX_HEAD as u64)
                                .read_until(b'\n', &mut line)?;
                            if n == 0 || line == b"\r\n" || line == b"\n" {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.reader.read_exact(&mut crlf)?;
                    if crlf != *b"\r\n" {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
                    }
                }
                Ok(n)
            }
        }
    }
}

/// Reads a chunk-size line (`1a3f;ext\r\n`).
fn chunk_size(reader: &mut impl BufRead) -> io::Result<u64> {
    let mut line = Vec::new();
    let n = reader.take(1024).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
    let hex = text.split([';', '\r', '\n']).next().unwrap_or("").trim();
    u64::from_str_radix(hex, 16).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad chunk size {hex:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot HTTP server that answers `response` verbatim.
    fn serve_once(response: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(response);
            }
        });
        addr
    }

    #[test]
    fn reads_chunked_and_length_framed_answers() {
        let etcd = Etcd::new(
            &[format!(
                "http://{}",
                serve_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"hea\r\n18;x=y\r\nder\":{\"revision\":\"42\"}}\n\r\n0\r\n\r\n")
            )],
            Duration::from_secs(5),
        );
        let range = etcd.get("/k").expect("range");
        assert_eq!(range.revision, 42);
        assert!(range.kvs.is_empty());

        let etcd = Etcd::new(
            &[format!(
                "http://{}",
                serve_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 96\r\n\r\n{\"header\":{\"revision\":\"7\"},\"kvs\":[{\"key\":\"L2s=\",\"value\":\"aGk=\",\"mod_revision\":\"6\"}],\"count\":\"1\"}")
            )],
            Duration::from_secs(5),
        );
        let range = etcd.get("/k").expect("range");
        assert_eq!(
            range.kvs,
            vec![Kv {
                key: "/k".into(),
                value: b"hi".to_vec(),
                mod_revision: 6
            }]
        );
    }

    #[test]
    fn errors_and_unreachable_endpoints() {
        let etcd = Etcd::new(
            &[format!(
                "http://{}",
                serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"error\":\"requested lease not found\",\"message\":\"lease\",\"code\":5}")
            )],
            Duration::from_secs(5),
        );
        match etcd.lease_keepalive(1) {
            Err(EtcdError::Server { message }) => assert!(message.contains("lease"), "{message}"),
            other => panic!("{other:?}"),
        }
        let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = dead.local_addr().expect("addr");
        drop(dead);
        let etcd = Etcd::new(&[format!("http://{addr}")], Duration::from_secs(2));
        assert!(matches!(etcd.get("/k"), Err(EtcdError::Unreachable { .. })));
        let etcd = Etcd::new(
            &[format!(
                "http://{}",
                serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nNot Found")
            )],
            Duration::from_secs(5),
        );
        assert!(
            matches!(etcd.get("/k"), Err(EtcdError::Protocol(_))),
            "not etcd"
        );
    }

    #[test]
    fn watch_messages() {
        let parse = |s: &str| parse_watch(&serde_json::from_str(s).expect("json")).expect("ok");
        assert_eq!(
            parse(r#"{"result":{"header":{"revision":"2"},"created":true}}"#),
            WatchMessage::Created
        );
        assert_eq!(
            parse(
                r#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"L2s=","mod_revision":"3","value":"aGk="}},{"type":"DELETE","kv":{"key":"L2s=","mod_revision":"4"}}]}}"#
            ),
            WatchMessage::Events(vec![
                WatchEvent::Put(Kv {
                    key: "/k".into(),
                    value: b"hi".to_vec(),
                    mod_revision: 3
                }),
                WatchEvent::Delete { revision: 4 }
            ])
        );
        assert_eq!(
            parse(r#"{"result":{"header":{},"canceled":true,"compact_revision":"3"}}"#),
            WatchMessage::Compacted {
                compact_revision: 3
            }
        );
        assert!(parse_watch(&serde_json::json!({"error": {"message": "boom"}})).is_err());
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
