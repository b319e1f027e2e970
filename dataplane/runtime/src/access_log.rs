//! The access log: one JSON line per connection when it ends.
//!
//! Each worker formats into its own buffer and writes whole lines with one `write` per loop
//! iteration (in chunks of at most 4 KiB cut at line ends, so lines from different workers
//! never interleave on a pipe). Nothing is formatted when the log is off.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;

use wsedge_command::{AccessLogTarget, ConnectionId};

/// What one line says about a finished connection.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The id `wsedgectl connections` showed for it (`1-42-7`).
    pub(crate) id: ConnectionId,
    pub(crate) worker: usize,
    pub(crate) client: SocketAddr,
    pub(crate) route: Option<&'a str>,
    pub(crate) origin: Option<SocketAddr>,
    pub(crate) status: Option<u16>,
    pub(crate) bytes_from_client: u64,
    pub(crate) bytes_to_client: u64,
    pub(crate) duration_ms: u64,
    pub(crate) reason: &'static str,
    /// Debug rules: the route and firewall rules that matched.
    pub(crate) traceback: Option<&'a [String]>,
    /// A TLS client's handshake, once it finished: `sni`, `tls_version`, `cipher`,
    /// `resumed`, `client_cert` (and `client_cert_error` when it did not verify).
    pub(crate) tls: Option<&'a wsedge_tls::HandshakeFacts>,
}

#[derive(Debug)]
pub(crate) struct AccessLog {
    out: Option<File>,
    buf: String,
}

/// Largest write that a pipe performs atomically (PIPE_BUF).
const ATOMIC_WRITE: usize = 4096;

impl AccessLog {
    /// Opens the target for one worker (stdout is duplicated so no lock is shared).
    pub(crate) fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => {
                use std::os::fd::AsFd;
                Some(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
            }
            AccessLogTarget::File(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        Ok(AccessLog {
            out,
            buf: String::new(),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.out.is_some()
    }

    pub(crate) fn record(&mut self, e: &Entry<'_>) {
        if self.out.is_none() {
            return;
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let b = &mut self.buf;
        let _ = write!(
            b,
            "{{\"ts\":{}.{:03},\"id\":\"{}\",\"worker\":{},\"client\":\"{}\",\"route\":",
            ts.as_secs(),
            ts.subsec_millis(),
            e.id,
            e.worker,
            e.client
        );
        match e.route {
            Some(r) => push_json_str(b, r),
            None => b.push_str("null"),
        }
        b.push_str(",\"origin\":");
        match e.origin {
            Some(o) => {
                let _ = write!(b, "\"{o}\"");
            }
            None => b.push_str("null"),
        }
        b.push_str(",\"status\":");
        match e.status {
            Some(s) => {
                let _ = write!(b, "{s}");
            }
            None => b.push_str("null"),
        }
        let _ = write!(
            b,
            ",\"bytes_from_client\":{},\"bytes_to_client\":{},\"duration_ms\":{},\"reason\":\"{}\"",
            e.bytes_from_client, e.bytes_to_client, e.duration_ms, e.reason
        );
        if let Some(t) = e.tls {
            b.push_str(",\"sni\":");
            match &t.sni {
                Some(name) => push_json_str(b, name),
                None => b.push_str("null"),
            }
            let _ = write!(
                b,
                ",\"tls_version\":\"{}\",\"cipher\":\"{}\",\"resumed\":{},\"client_cert\":\"{}\"",
                t.version.as_str(),
                t.cipher_name(),
                t.resumed,
                t.client_cert.as_str()
            );
            if let wsedge_tls::ClientCertStatus::Invalid { reason } = &t.client_cert {
                b.push_str(",\"client_cert_error\":");
                push_json_str(b, reason);
            }
        }
        if let Some(traceback) = e.traceback {
            b.push_str(",\"traceback\":[");
            for (i, step) in traceback.iter().enumerate() {
                if i > 0 {
                    b.push(',');
                }
                push_json_str(b, step);
            }
            b.push(']');
        }
        b.push_str("}\n");
    }

    /// Writes what was recorded since the last flush.
    pub(crate) fn flush(&mut self) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let mut rest = self.buf.as_str();
        while !rest.is_empty() {
            let cut = if rest.len() <= ATOMIC_WRITE {
                rest.len()
            } else {
                rest[..ATOMIC_WRITE]
                    .rfind('\n')
                    .map_or(rest.len(), |i| i + 1)
            };
            if let Err(e) = out.write_all(&rest.as_bytes()[..cut]) {
                tracing::warn!(error = %e, "access log write failed; lines dropped");
                break;
            }
            rest = &rest[cut..];
        }
        self.buf.clear();
    }
}

fn push_json_str(b: &mut String, s: &str) {
    b.push('"');
    for ch in s.chars() {
        match ch {
            '"' => b.push_str("\\\""),
            '\\' => b.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(b, "\\u{:04x}", c as u32);
            }
            c => b.push(c),
        }
    }
    b.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_valid_json() {
        let mut log = AccessLog {
            out: None,
            buf: String::new(),
        };
        // Format directly (record() is a no-op without an output).
        log.out = Some(File::open("/dev/null").expect("dev null"));
        log.record(&Entry {
            id: ConnectionId::new(1, 42, 7),
            worker: 1,
            client: "127.0.0.1:5000".parse().expect("addr"),
            route: Some("a\"b"),
            origin: None,
            status: Some(101),
            bytes_from_client: 10,
            bytes_to_client: 20,
            duration_ms: 30,
            reason: "client_closed",
            traceback: Some(&["route:a\"b".to_owned()]),
            tls: None,
        });
        let v: serde_json::Value = serde_json::from_str(log.buf.trim()).expect("json");
        assert_eq!(v["id"], "1-42-7");
        assert_eq!(v["route"], "a\"b");
        assert_eq!(v["origin"], serde_json::Value::Null);
        assert_eq!(v["status"], 101);
        assert_eq!(v["reason"], "client_closed");
        assert_eq!(v["traceback"][0], "route:a\"b");
        assert!(
            v.get("sni").is_none() && v.get("tls_version").is_none(),
            "{v}"
        );
    }

    #[test]
    fn a_tls_connection_logs_its_handshake() {
        let mut log = AccessLog {
            out: Some(File::open("/dev/null").expect("dev null")),
            buf: String::new(),
        };
        let facts = wsedge_tls::HandshakeFacts {
            sni: Some("a.example.com".into()),
            alpn: Some("http/1.1".into()),
            version: wsedge_tls::TlsVersion::Tls13,
            cipher_suite: wsedge_tls::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            resumed: true,
            client_cert: wsedge_tls::ClientCertStatus::Invalid {
                reason: "certificate \"expired\"".into(),
            },
        };
        log.record(&Entry {
            id: ConnectionId::new(0, 1, 1),
            worker: 0,
            client: "127.0.0.1:5000".parse().expect("addr"),
            route: None,
            origin: None,
            status: Some(101),
            bytes_from_client: 1,
            bytes_to_client: 2,
            duration_ms: 3,
            reason: "client_closed",
            traceback: None,
            tls: Some(&facts),
        });
        let v: serde_json::Value = serde_json::from_str(log.buf.trim()).expect("json");
        assert_eq!(v["sni"], "a.example.com");
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["cipher"], "TLS13_AES_128_GCM_SHA256");
        assert_eq!(v["resumed"], true);
        assert_eq!(v["client_cert"], "invalid");
        assert_eq!(v["client_cert_error"], "certificate \"expired\"");
    }
}
