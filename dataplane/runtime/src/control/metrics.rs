//! Prometheus `/metrics` in the text exposition format (0.0.4), on `[control]
//! metrics_listen`.
//!
//! A scrape asks every worker for its report through its mailbox (the same path as
//! `wsedgectl stats`): workers keep plain per-worker counters with no locks or atomics on the
//! hot path, and the sum is made here. One std thread serves scrapes one at a time, with
//! short timeouts, so a slow scraper delays only the next scrape.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use wsedge_command::wire::{FunctionRow, Response, WorkerStats};

use super::Shared;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Binds `addr` and starts the scrape thread; returns the bound address.
pub(super) fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<SocketAddr> {
    let listener = shared.upgrade.service_listener(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("wsedge-metrics".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &shared) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    // Shut down: a newer generation serves this address.
                    Err(_) if shared.upgrade.retired() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "only GET\n");
    }
    if path != b"/metrics" {
        return respond(&mut stream, "404 Not Found", "try /metrics\n");
    }
    match shared.handle(wsedge_command::wire::Request::Stats) {
        Response::Stats(stats) => {
            let uptime = shared.started.elapsed().as_secs_f64();
            let (version, hash) = shared.config_identity();
            let mut body = render(&stats.workers, uptime, (version, &hash));
            let now = i64::try_from(wsedge_command::wire::unix_now()).unwrap_or(i64::MAX);
            render_certs(&mut body, &shared.cert_expiry(now));
            render_functions(&mut body, &stats.functions);
            super::origins::render(&mut body, &shared.origin_views());
            if let Some(broker) = &shared.broker {
                super::broker_metrics::render(&mut body, &broker.status());
            }
            respond(&mut stream, "200 OK", &body)
        }
        Response::Error { message, .. } => respond(
            &mut stream,
            "503 Service Unavailable",
            &format!("{message}\n"),
        ),
        _ => respond(&mut stream, "500 Internal Server Error", ""),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// One counter or gauge of a worker's stats.
type Field = fn(&WorkerStats) -> u64;

/// Writes a metric family's HELP and TYPE lines.
pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line, `name{label="value",...} value`. Every sample goes through here,
/// so every label value is escaped.
pub(super) fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, text);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Appends `text` as a label value of the text exposition format: backslash, double quote
/// and line feed are the three characters it escapes (`\\`, `\"`, `\n`). Route names may
/// hold the first two (any printable ASCII is a valid name).
fn escape_label_value(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The exposition text for these per-worker counters; `config` is the version and
/// [`wsedge_command::wire::config_hash`] of the configuration in force.
pub(super) fn render(workers: &[WorkerStats], uptime_secs: f64, config: (u64, &str)) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "wsedge_uptime_seconds",
        "gauge",
        "Seconds since the dataplane started.",
    );
    sample(
        &mut out,
        "wsedge_uptime_seconds",
        &[],
        format_args!("{uptime_secs:.3}"),
    );
    family(&mut out, "wsedge_workers", "gauge", "Worker threads.");
    sample(&mut out, "wsedge_workers", &[], workers.len());
    family(
        &mut out,
        "wsedge_config_info",
        "gauge",
        "The configuration in force: its version (numbered by this dataplane) and content hash.",
    );
    let (version, hash) = config;
    sample(
        &mut out,
        "wsedge_config_info",
        &[("version", &version.to_string()), ("hash", hash)],
        1,
    );

    let simple: [(&str, &str, &str, Field); 18] = [
        (
            "wsedge_config_version",
            "gauge",
            "Configuration version each worker runs.",
            |w| w.config_version,
        ),
        (
            "wsedge_connections_live",
            "gauge",
            "Connections held by each worker.",
            |w| w.live,
        ),
        (
            "wsedge_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |w| w.accepted,
        ),
        (
            "wsedge_connections_upgraded_total",
            "counter",
            "Connections upgraded to WebSocket (origin answered 101).",
            |w| w.upgraded,
        ),
        (
            "wsedge_requests_plain_http_total",
            "counter",
            "Requests relayed as plain HTTP.",
            |w| w.plain_http,
        ),
        (
            "wsedge_accept_errors_total",
            "counter",
            "Accept failures.",
            |w| w.accept_errors,
        ),
        (
            "wsedge_splice_fallbacks_total",
            "counter",
            "Splice directions relayed buffered: no pipe could be created, or TLS stayed in user space.",
            |w| w.splice_fallbacks,
        ),
        (
            "wsedge_ring_buffers",
            "gauge",
            "Provided buffers in each worker's read ring.",
            |w| w.ring_buffers,
        ),
        (
            "wsedge_ring_buffers_held",
            "gauge",
            "Ring buffers held now (relayed bytes waiting for a send); near wsedge_ring_buffers means reads are being copied out or stalled.",
            |w| w.ring_buffers_held,
        ),
        (
            "wsedge_handshakes_in_progress",
            "gauge",
            "Clients accepted and not yet answered (TLS, head, origin handshake in progress).",
            |w| w.handshakes_in_progress,
        ),
        (
            "wsedge_reads_spilled_total",
            "counter",
            "Stream reads copied out of the ring because it ran low (its buffer given back at once).",
            |w| w.reads_spilled,
        ),
        (
            "wsedge_reads_starved_total",
            "counter",
            "Stream reads that found the ring empty (served in turn once buffers came back).",
            |w| w.reads_starved,
        ),
        (
            "wsedge_reads_rationed_total",
            "counter",
            "One-buffer reads that served the reads waiting for buffers, oldest first.",
            |w| w.reads_rationed,
        ),
        (
            "wsedge_tls_handshakes_total",
            "counter",
            "TLS handshakes finished on TLS listeners.",
            |w| w.tls_handshakes,
        ),
        (
            "wsedge_tls_resumed_total",
            "counter",
            "TLS handshakes that resumed a session (ticket or session id).",
            |w| w.tls_resumed,
        ),
        (
            "wsedge_ktls_handoffs_total",
            "counter",
            "TLS client connections handed to the kernel (kTLS) so their splice relay works.",
            |w| w.ktls_handoffs,
        ),
        (
            "wsedge_ktls_failures_total",
            "counter",
            "kTLS hand-offs the kernel refused.",
            |w| w.ktls_failures,
        ),
        (
            "wsedge_ktls_control_records_total",
            "counter",
            "kTLS reads ended by a record that was not application data (alert, close_notify, post-handshake message).",
            |w| w.ktls_control_records,
        ),
    ];
    for (name, kind, help, field) in simple {
        family(&mut out, name, kind, help);
        for w in workers {
            sample(&mut out, name, &[("worker", &index(w))], field(w));
        }
    }
    by_direction(
        &mut out,
        workers,
        "wsedge_bytes_total",
        "Bytes relayed, by direction.",
        [
            ("from_clients", |w| w.bytes_from_clients),
            ("to_clients", |w| w.bytes_to_clients),
        ],
    );
    family(
        &mut out,
        "wsedge_connections_closed_total",
        "counter",
        "Connections ended, by reason (rejections included).",
    );
    for w in workers {
        let i = index(w);
        for (reason, n) in &w.closed {
            sample(
                &mut out,
                "wsedge_connections_closed_total",
                &[("worker", &i), ("reason", reason)],
                n,
            );
        }
    }
    family(
        &mut out,
        "wsedge_tls_errors_total",
        "counter",
        "TLS failures on TLS listeners, by kind (each also closes with reason tls_error).",
    );
    for w in workers {
        let i = index(w);
        for (kind, n) in &w.tls_errors {
            sample(
                &mut out,
                "wsedge_tls_errors_total",
                &[("worker", &i), ("kind", kind)],
                n,
            );
        }
    }
    render_frames(&mut out, workers);
    out
}

/// A function's counter, read off its row.
type FunctionField = fn(&FunctionRow) -> f64;

/// Each JavaScript function's counters (summed over the workers), labelled `function`.
fn render_functions(out: &mut String, functions: &[FunctionRow]) {
    if functions.is_empty() {
        return;
    }
    let families: [(&str, &str, &str, FunctionField); 8] = [
        (
            "wsedge_function_version",
            "gauge",
            "The version of the function serving new connections.",
            |f| f.version as f64,
        ),
        (
            "wsedge_function_sockets",
            "gauge",
            "Live sockets of the function (server sockets and client-less outbound ones).",
            |f| f.sockets as f64,
        ),
        (
            "wsedge_function_invocations_total",
            "counter",
            "Calls into the function's JavaScript: requests, socket events, timers.",
            |f| f.invocations as f64,
        ),
        (
            "wsedge_function_errors_total",
            "counter",
            "Exceptions, interrupts and memory faults of the function.",
            |f| f.errors as f64,
        ),
        (
            "wsedge_function_interrupts_total",
            "counter",
            "Events of the function interrupted at their CPU budget.",
            |f| f.interrupts as f64,
        ),
        (
            "wsedge_function_cpu_seconds_total",
            "counter",
            "Time spent in the function's JavaScript.",
            |f| f.cpu_us as f64 / 1e6,
        ),
        (
            "wsedge_function_memory_bytes",
            "gauge",
            "Bytes the function's runtimes hold (all workers).",
            |f| f.memory_bytes as f64,
        ),
        (
            "wsedge_function_restarts_total",
            "counter",
            "Runtimes of the function torn down at their memory cap and recreated.",
            |f| f.restarts as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for f in functions {
            sample(out, name, &[("function", &f.name)], value(f));
        }
    }
}

/// The `frames` relay's message and close-code counters.
/// The certificates in force: seconds until each one expires (negative once expired), by
/// `[[certificate]]` id (the family is listed without certificates too, with no sample).
fn render_certs(out: &mut String, expiry: &[(String, i64)]) {
    family(
        out,
        "wsedge_tls_certificate_expiry_seconds",
        "gauge",
        "Seconds until the certificate's notAfter (negative once expired), by [[certificate]] id; follows certs reload.",
    );
    for (id, left) in expiry {
        sample(
            out,
            "wsedge_tls_certificate_expiry_seconds",
            &[("certificate", id)],
            left,
        );
    }
}

fn render_frames(out: &mut String, workers: &[WorkerStats]) {
    by_direction(
        out,
        workers,
        "wsedge_messages_total",
        "WebSocket messages seen by frames relays, by direction.",
        [
            ("from_clients", |w| w.messages_from_clients),
            ("from_origins", |w| w.messages_from_origins),
        ],
    );
    family(
        out,
        "wsedge_close_codes_total",
        "counter",
        "Close codes in Close frames seen from peers and sent by the proxy, by route.",
    );
    for w in workers {
        let i = index(w);
        for (kind, map) in [("seen", &w.close_codes_seen), ("sent", &w.close_codes_sent)] {
            for (key, n) in map {
                // `route/code`: the code is digits, so the last slash ends the route name.
                let (route, code) = key.rsplit_once('/').unwrap_or((key.as_str(), ""));
                sample(
                    out,
                    "wsedge_close_codes_total",
                    &[
                        ("worker", &i),
                        ("route", route),
                        ("code", code),
                        ("kind", kind),
                    ],
                    n,
                );
            }
        }
    }
}

/// A counter family with one line per worker and direction.
fn by_direction(
    out: &mut String,
    workers: &[WorkerStats],
    name: &str,
    help: &str,
    directions: [(&str, Field); 2],
) {
    family(out, name, "counter", help);
    for w in workers {
        let i = index(w);
        for (direction, value) in directions {
            sample(
                out,
                name,
                &[("worker", &i), ("direction", direction)],
                value(w),
            );
        }
    }
}

fn index(w: &WorkerStats) -> String {
    w.worker.map_or_else(|| "all".to_owned(), |i| i.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exposition_format() {
        let w = WorkerStats {
            worker: Some(1),
            config_version: 3,
            live: 2,
            accepted: 10,
            bytes_from_clients: 99,
            closed: [("no_route".to_owned(), 4)].into_iter().collect(),
            messages_from_clients: 7,
            close_codes_sent: [("chat/1001".to_owned(), 2)].into_iter().collect(),
            ..WorkerStats::default()
        };
        let text = render(&[w], 1.5, (3, "0123456789ab"));
        assert!(text.contains("# TYPE wsedge_connections_accepted_total counter\n"));
        assert!(text.contains("wsedge_connections_accepted_total{worker=\"1\"} 10\n"));
        assert!(text.contains("wsedge_config_version{worker=\"1\"} 3\n"));
        assert!(text.contains("wsedge_bytes_total{worker=\"1\",direction=\"from_clients\"} 99\n"));
        assert!(
            text.contains("wsedge_connections_closed_total{worker=\"1\",reason=\"no_route\"} 4\n")
        );
        assert!(text.contains("wsedge_uptime_seconds 1.500\n"));
        assert!(text.contains("wsedge_config_info{version=\"3\",hash=\"0123456789ab\"} 1\n"));
        assert!(
            text.contains("wsedge_messages_total{worker=\"1\",direction=\"from_clients\"} 7\n")
        );
        assert!(text.contains(
            "wsedge_close_codes_total{worker=\"1\",route=\"chat\",code=\"1001\",kind=\"sent\"} 2\n"
        ));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn certificate_expiry_is_a_gauge_per_certificate() {
        let mut text = String::new();
        render_certs(&mut text, &[]);
        assert!(
            !text.contains("wsedge_tls_certificate_expiry_seconds{"),
            "{text}"
        );
        text.clear();
        render_certs(&mut text, &[("site".into(), 86_400), ("old".into(), -5)]);
        assert!(text.contains("# TYPE wsedge_tls_certificate_expiry_seconds gauge\n"));
        assert!(
            text.contains("wsedge_tls_certificate_expiry_seconds{certificate=\"site\"} 86400\n")
        );
        assert!(text.contains("wsedge_tls_certificate_expiry_seconds{certificate=\"old\"} -5\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value(&mut out, "eu\"west\\1\nx");
        assert_eq!(out, r#"eu\"west\\1\nx"#);
        let w = WorkerStats {
            worker: Some(0),
            closed: [("no_route".to_owned(), 1)].into_iter().collect(),
            close_codes_seen: [("eu\"west\\1/1000".to_owned(), 2)].into_iter().collect(),
            close_codes_sent: [("a/b\\/1001".to_owned(), 1)].into_iter().collect(),
            ..WorkerStats::default()
        };
        let text = render(&[w], 0.0, (0, "abc"));
        assert!(
            text.contains(
                "wsedge_close_codes_total{worker=\"0\",route=\"eu\\\"west\\\\1\",code=\"1000\",kind=\"seen\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "wsedge_close_codes_total{worker=\"0\",route=\"a/b\\\\\",code=\"1001\",kind=\"sent\"} 1\n"
            ),
            "{text}"
        );
    }
}
