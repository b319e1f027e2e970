//! Connecting a NATS link (nats.rs): TCP, the server's `INFO`, the TLS upgrade for
//! `tls://` addresses (stream.rs), `CONNECT`, and the protocol lines both of the link's
//! threads and a presence request read.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use wsedge_tls::OriginTls;

use super::stream::Stream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The server pings every 2 minutes by default; a read this long without a byte is a dead
/// connection.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest protocol line read (an `INFO` can be a few KiB).
const MAX_LINE: usize = 64 * 1024;

/// What a link connects with: its shard's server and the host's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) address: String,
    pub(super) url: String,
    pub(super) tls: Option<(String, Result<OriginTls, String>)>,
    /// Start TLS at once, before the server's `INFO` (`[broker] tls_first`).
    pub(super) tls_first: bool,
    pub(super) prefix: String,
    pub(super) host: String,
    pub(super) user: Option<String>,
    pub(super) pass: Option<String>,
}

/// A connected client: the server's `max_payload`, and the two halves.
pub(super) struct Conn {
    pub(super) reader: BufReader<Stream>,
    pub(super) writer: BufWriter<Stream>,
    pub(super) max_payload: usize,
}

/// Reads one `\r\n`-terminated line (without it), bounded.
pub(super) fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<(), String> {
    line.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed by the server".into());
    }
    if line.last() != Some(&b'\n') {
        return Err("protocol line too long".into());
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(())
}

/// Connects, reads `INFO`, sends `CONNECT` and waits for the `PONG` that confirms it.
pub(super) fn connect(s: &Settings) -> Result<Conn, String> {
    let addrs: Vec<SocketAddr> = s
        .address
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", s.url))?
        .collect();
    let mut last = format!("{}: no address", s.url);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(st) => {
                stream = Some(st);
                break;
            }
            Err(e) => last = format!("{}: {e}", s.url),
        }
    }
    let stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let (info, stream) = match &s.tls {
        // TLS first (the server's `handshake_first`): the ClientHello before anything is
        // read; `INFO` comes encrypted.
        Some(tls) if s.tls_first => {
            let mut reader = BufReader::new(upgrade(s, tls, stream)?);
            let info = read_info(s, &mut reader, &mut line)?;
            (info, reader)
        }
        _ => {
            let mut plain = BufReader::new(&stream);
            let info = read_info(s, &mut plain, &mut line)?;
            let offers =
                |key: &str| info.get(key).and_then(serde_json::Value::as_bool) == Some(true);
            let stream = match &s.tls {
                None if offers("tls_required") => {
                    return Err(format!(
                        "{}: the server requires TLS: write tls://{} in [broker] addresses",
                        s.url, s.address
                    ));
                }
                None => Stream::plain(stream),
                Some(_) if !offers("tls_required") && !offers("tls_available") => {
                    return Err(format!(
                        "{}: the server does not offer TLS (enable it there, or write nats://{})",
                        s.url, s.address
                    ));
                }
                // The server waits for our ClientHello after its INFO: nothing else can be read.
                Some(_) if !plain.buffer().is_empty() => {
                    return Err(format!("{}: bytes after INFO before TLS", s.url));
                }
                Some(tls) => upgrade(s, tls, stream)?,
            };
            (info, BufReader::new(stream))
        }
    };
    let mut writer = BufWriter::new(stream.get_ref().try_clone().map_err(|e| e.to_string())?);
    let mut reader = stream;
    let max_payload = info
        .get("max_payload")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1024 * 1024) as usize;
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust-wsedge",
        "version": env!("CARGO_PKG_VERSION"),
        "name": format!("wsedge {}", s.host),
        "protocol": 1,
        "tls_required": s.tls.is_some(),
    });
    if let Some(user) = &s.user {
        connect["user"] = user.clone().into();
    }
    if let Some(pass) = &s.pass {
        connect["pass"] = pass.clone().into();
    }
    let text = format!("CONNECT {connect}\r\nPING\r\n");
    writer
        .write_all(text.as_bytes())
        .and_then(|()| writer.flush())
        .map_err(|e| format!("{}: {e}", s.url))?;
    loop {
        // A server refusing our client certificate says so here (TLS 1.3: after the
        // handshake, on the first read).
        read_line(&mut reader, &mut line).map_err(|e| format!("{}: {e}", s.url))?;
        match line.as_slice() {
            b"PONG" => break,
            b"PING" => {
                let _ = writer.write_all(b"PONG\r\n").and_then(|()| writer.flush());
            }
            l if l.starts_with(b"-ERR") => {
                return Err(format!("{}: {}", s.url, String::from_utf8_lossy(l)));
            }
            _ => {}
        }
    }
    reader
        .get_ref()
        .socket()
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(Conn {
        reader,
        writer,
        max_payload,
    })
}

/// Reads the server's `INFO` line (plain, or the first line over TLS-first).
fn read_info(
    s: &Settings,
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
) -> Result<serde_json::Value, String> {
    read_line(reader, line).map_err(|e| {
        // A `handshake_first` server says nothing until it gets a ClientHello.
        if s.tls.is_some() && !s.tls_first {
            format!(
                "{}: no INFO from the server ({e}); if it has handshake_first (it waits for TLS first), set tls_first = true",
                s.url
            )
        } else {
            format!("{}: {e}", s.url)
        }
    })?;
    let info = line
        .strip_prefix(b"INFO ")
        .ok_or_else(|| format!("{}: not a NATS server (no INFO)", s.url))?;
    serde_json::from_slice(info).map_err(|e| format!("{}: bad INFO: {e}", s.url))
}

/// Runs the TLS handshake on `stream` with the server named `name`.
fn upgrade(
    s: &Settings,
    (name, client): &(String, Result<OriginTls, String>),
    stream: TcpStream,
) -> Result<Stream, String> {
    let client = client.as_ref().map_err(|e| format!("{}: {e}", s.url))?;
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    let session = client
        .connect_named(name, peer.ip())
        .map_err(|e| format!("{}: {e}", s.url))?;
    Stream::tls(stream, session).map_err(|e| {
        // A server that is not `handshake_first` sends its INFO in plaintext at once.
        let hint = if s.tls_first {
            " (tls_first: the server must have handshake_first: true)"
        } else {
            ""
        };
        format!("{}: {e}{hint}", s.url)
    })
}

/// A message as the reader parsed it.
pub(super) struct Msg {
    pub(super) subject: String,
    pub(super) reply: Option<String>,
    pub(super) payload: Vec<u8>,
}

/// Reads the payload of a `MSG`/`HMSG` line (`headers` bytes of headers first, skipped).
pub(super) fn read_msg(
    reader: &mut impl Read,
    args: &[&str],
    headers: bool,
) -> Result<Msg, String> {
    // MSG <subject> <sid> [reply] <#bytes>; HMSG <subject> <sid> [reply] <#hdr> <#total>
    let fixed = if headers { 4 } else { 3 };
    let bad = || "malformed MSG line".to_owned();
    if args.len() != fixed && args.len() != fixed + 1 {
        return Err(bad());
    }
    let reply = (args.len() == fixed + 1).then(|| args[2].to_owned());
    let total: usize = args[args.len() - 1].parse().map_err(|_| bad())?;
    let header_len: usize = if headers {
        args[args.len() - 2].parse().map_err(|_| bad())?
    } else {
        0
    };
    if header_len > total || total > 64 * 1024 * 1024 {
        return Err(bad());
    }
    let mut body = vec![0u8; total + 2];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    body.truncate(total);
    Ok(Msg {
        subject: args[0].to_owned(),
        reply,
        payload: body.split_off(header_len),
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use wsedge_tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use wsedge_tls::rustls::{ServerConfig, ServerConnection, StreamOwned};

    use super::*;

    /// A CA named `name` (its PEM) and a server configuration with a certificate it signed
    /// for 127.0.0.1.
    fn pki(name: &str) -> (String, Arc<ServerConfig>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        let provider = Arc::new(wsedge_tls::rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        (ca.pem(), Arc::new(config))
    }

    /// A one-connection NATS server: sends `info`, then (with `tls`) upgrades, answers
    /// `PING` with `PONG` and a `MSG`. Returns the client's `CONNECT` line.
    fn server(info: &str, tls: Option<Arc<ServerConfig>>) -> (Settings, JoinHandle<String>) {
        server_with(info, tls, false)
    }

    /// [`server`]; `handshake_first`: TLS before anything, `INFO` sent encrypted.
    fn server_with(
        info: &str,
        tls: Option<Arc<ServerConfig>>,
        handshake_first: bool,
    ) -> (Settings, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let info = format!("INFO {info}\r\n");
        let handle = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            if !handshake_first {
                sock.write_all(info.as_bytes()).expect("info");
            }
            let Some(config) = tls else {
                return String::new();
            };
            let conn = ServerConnection::new(config).expect("session");
            let mut tls = BufReader::new(StreamOwned::new(conn, sock));
            if handshake_first {
                // The handshake runs on this first write (or fails: no CONNECT then).
                let out = tls.get_mut();
                if out
                    .write_all(info.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return String::new();
                }
            }
            let mut connect = String::new();
            let mut line = Vec::new();
            while read_line(&mut tls, &mut line).is_ok() {
                let text = String::from_utf8_lossy(&line).into_owned();
                if text == "PING" {
                    let out = tls.get_mut();
                    out.write_all(b"PONG\r\nMSG wsedge.x 5 2\r\nhi\r\n")
                        .and_then(|()| out.flush())
                        .expect("answer");
                } else if text.starts_with("CONNECT ") {
                    connect = text;
                }
            }
            connect
        });
        let settings = Settings {
            url: format!("nats://{address}"),
            address,
            tls: None,
            tls_first: false,
            prefix: "wsedge.".into(),
            host: "h".into(),
            user: None,
            pass: None,
        };
        (settings, handle)
    }

    fn trusting(pem: &str) -> Result<OriginTls, String> {
        let path = std::env::temp_dir().join(format!(
            "wsedge-nats-ca-{}-{:?}.pem",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, pem).expect("write CA");
        let tls = OriginTls::trusting("broker.tls_ca", "broker.tls_ca", Some(&path), None)
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        tls
    }

    #[test]
    fn tls_upgrades_after_info_and_carries_the_protocol() {
        let (ca, config) = pki("CA");
        let (mut s, server) = server(r#"{"tls_required":true,"max_payload":4096}"#, Some(config));
        s.tls = Some(("127.0.0.1".into(), trusting(&ca)));
        let Conn {
            mut reader,
            writer,
            max_payload,
        } = connect(&s).expect("connect over TLS");
        assert_eq!(max_payload, 4096);
        // The MSG the server sent after its PONG comes through the TLS reader half.
        let mut line = Vec::new();
        read_line(&mut reader, &mut line).expect("MSG line");
        assert_eq!(line, b"MSG wsedge.x 5 2");
        let msg = read_msg(&mut reader, &["wsedge.x", "5", "2"], false).expect("MSG");
        assert_eq!(msg.payload, b"hi");
        writer.get_ref().shutdown();
        drop((reader, writer));
        let connect_line = server.join().expect("server");
        assert!(
            connect_line.contains(r#""tls_required":true"#),
            "{connect_line}"
        );
    }

    #[test]
    fn tls_first_starts_tls_before_info() {
        let (ca, config) = pki("CA");
        let info = r#"{"tls_required":true,"max_payload":2048}"#;
        let (mut s, server) = server_with(info, Some(config), true);
        s.tls = Some(("127.0.0.1".into(), trusting(&ca)));
        s.tls_first = true;
        let Conn {
            mut reader,
            writer,
            max_payload,
        } = connect(&s).expect("connect TLS-first");
        // The INFO was read over TLS: its max_payload is the server's.
        assert_eq!(max_payload, 2048);
        let mut line = Vec::new();
        read_line(&mut reader, &mut line).expect("MSG line");
        assert_eq!(line, b"MSG wsedge.x 5 2");
        writer.get_ref().shutdown();
        drop((reader, writer));
        assert!(server.join().expect("server").starts_with("CONNECT "));
    }

    #[test]
    fn tls_first_mismatches_name_the_fix() {
        let (ca, config) = pki("CA");
        // tls_first against a server that sends its INFO in plaintext at once.
        let (mut s, _server) = server(r#"{"tls_required":true}"#, Some(config.clone()));
        s.tls = Some(("127.0.0.1".into(), trusting(&ca)));
        s.tls_first = true;
        let e = connect(&s).err().expect("refused");
        assert!(
            e.contains("tls_first: the server must have handshake_first: true"),
            "{e}"
        );
        // A handshake_first server (silent until the ClientHello), tls_first unset: the
        // INFO never comes within the connect timeout.
        let (mut s, _server) = server_with(r#"{"tls_required":true}"#, Some(config), true);
        s.tls = Some(("127.0.0.1".into(), trusting(&ca)));
        let e = connect(&s).err().expect("refused");
        assert!(
            e.contains("no INFO from the server")
                && e.contains(
                    "if it has handshake_first (it waits for TLS first), set tls_first = true"
                ),
            "{e}"
        );
    }

    #[test]
    fn an_untrusted_certificate_is_refused_with_the_reason() {
        let (_, config) = pki("CA");
        let (other_ca, _) = pki("another CA");
        let (mut s, _server) = server(r#"{"tls_required":true}"#, Some(config));
        s.tls = Some(("127.0.0.1".into(), trusting(&other_ca)));
        let e = connect(&s).err().expect("refused");
        assert!(
            e.contains("certificate refused: server 127.0.0.1: certificate not signed by a trusted CA (unknown issuer; set broker.tls_ca"),
            "{e}"
        );
        assert!(e.starts_with(&s.url), "{e}");
    }

    #[test]
    fn tls_mismatches_name_the_fix() {
        // The server requires TLS, the address is nats://.
        let (s, _server) = server(r#"{"tls_required":true}"#, None);
        let e = connect(&s).err().expect("refused");
        assert!(
            e.contains(&format!("requires TLS: write tls://{}", s.address)),
            "{e}"
        );
        // A tls:// address, a server without TLS.
        let (ca, _) = pki("CA");
        let (mut s, _server) = server(r#"{"max_payload":1024}"#, None);
        s.tls = Some(("127.0.0.1".into(), trusting(&ca)));
        let e = connect(&s).err().expect("refused");
        assert!(e.contains("does not offer TLS"), "{e}");
    }
}
