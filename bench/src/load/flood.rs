//! `flood` mode: the unbounded flood of the common independent generators (tcpkali's
//! default shape). N connections each write WebSocket messages as fast as the socket accepts
//! them, with no limit on how many are in flight, and read and count whatever comes back
//! (an echo origin behind the target). Unlike `throughput`, nothing waits for an echo before
//! sending more, so the target's buffering and its fairness between directions and between
//! connections show.
//!
//! - Writes are large: `--write-bytes` of pre-built, pre-masked client frames per `write`
//!   (thousands of 64 B frames in one syscall); reads take up to 256 KiB at a time.
//! - Every message carries a marker in its first 16 payload bytes: the connection number and
//!   a per-connection sequence number, and the time the write that accepted it began
//!   (frames still unwritten after a partial write are re-stamped before the next write).
//!   Only complete messages count as delivered (a message the target sends in fragments is
//!   put together: wsedge's built-in echo function forwards what it has of a frame); each is
//!   checked (binary, `--size` bytes, this connection's number, the next sequence number)
//!   and any mismatch is a PROBLEM (the run exits non-zero). Latency under flood is now − send time, one clock read per read.
//! - Reports messages/s and payload bytes/s each way, per-connection fairness (delivered
//!   msg/s min / median / max, connections that got nothing), the messages still in flight
//!   at the end, CPU per delivered message of the target, the origin and the generator.
//! - A probe thread opens a fresh connection every `--probe-interval` during the measured
//!   window and times TCP connect (+ TLS handshake on `wss://`) + upgrade (p50/p99/max): do new clients starve while the
//!   others flood? Probes use blocking sockets on their own thread so the generator's busy
//!   event loop does not add to what they measure; a probe that gets no 101 within 5 s
//!   counts as a timeout (recorded at 5 s) as well as a failure.
//! - `--connect-rate R` opens the connections at R/s and each starts flooding as soon as it
//!   is open (tcpkali's ramp-up, where the first connections' flood competes with the
//!   opening of the rest); 0 opens them all before any flood starts. `--settle S` waits S
//!   seconds after every socket is closed and counts the connections the target still holds
//!   ESTABLISHED on its port.
//! - Over `wss://` every connection is a TLS session (full handshake) and the reader and the
//!   writer share it (`tokio::io::split`); "sent" is then what the TLS session accepted.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::client::{self, Conn, SourceAddrs, Target};
use super::{Common, Outcome, hist};
use crate::{frame, procstat};

const MASK: [u8; 4] = [0x3b, 0x91, 0xc4, 0x6e];
/// Payload bytes used by the marker: (connection << 40 | sequence), send time in ns.
pub const MARKER: usize = 16;
/// Connection numbers fit in the top 24 bits of the first marker word.
const SEQ_BITS: u32 = 40;
/// A probe that has no 101 after this long is a timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection.
const READ_BUF: usize = 256 * 1024;

/// Counters of one connection, read by the main task at the window's edges.
#[derive(Debug, Default)]
struct ConnStats {
    /// The connection was opened (in ramp mode some may fail).
    open: AtomicBool,
    /// Bytes of frames the socket accepted.
    sent_wire: AtomicU64,
    /// Complete, checked messages received.
    delivered: AtomicU64,
}

/// Counters shared by all connections.
#[derive(Debug, Default)]
struct Shared {
    /// Messages whose marker held another sequence number than the next expected one.
    seq_errors: AtomicU64,
    /// Messages whose marker named another connection.
    conn_errors: AtomicU64,
    /// Data messages that were not binary + `--size` bytes, or broken framing.
    bad_frames: AtomicU64,
    /// Control frames received (pings from a proxy's keepalive, a Close).
    control_frames: AtomicU64,
    /// Connections that ended (EOF, error, Close) before the run stopped them.
    ended_early: AtomicU64,
    /// Connections opened.
    opened: AtomicU64,
    /// Connections that could not be opened (ramp mode).
    open_failed: AtomicU64,
    /// Latency is recorded only while this is set.
    recording: AtomicBool,
}

/// What a reader found wrong in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// As expected.
    Ok,
    /// Not a binary message of the expected size, or broken framing.
    BadFrame,
    /// The marker names another connection.
    WrongConnection,
    /// The sequence number is not the next one (a message lost, repeated or reordered).
    WrongSequence,
}

/// Incremental parser of the server→client frames of one flood connection: puts messages
/// together from their frames, extracts each one's marker without copying payloads, and
/// checks it.
#[derive(Debug)]
pub struct MarkerReader {
    conn: u64,
    size: u64,
    /// Next sequence number expected.
    next_seq: u64,
    /// Bytes of a header split across reads.
    head: Vec<u8>,
    /// The frame being read: its header, payload bytes left.
    cur: Option<(frame::Header, u64)>,
    /// The data message being read (its marker so far), over its fragments.
    msg: frame::Reassembly<MARKER>,
}

/// What one `feed` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Complete data messages that passed every check.
    pub good: u64,
    /// Messages that failed a check (each also counted in its kind below).
    pub bad: u64,
    /// Of those, not binary + size, or broken framing.
    pub bad_frames: u64,
    /// Of those, another connection's marker.
    pub conn_errors: u64,
    /// Of those, out of sequence.
    pub seq_errors: u64,
    /// Control frames.
    pub control: u64,
    /// A Close frame was complete.
    pub close: bool,
}

impl MarkerReader {
    /// A reader for connection `conn` expecting `size`-byte messages from sequence 0.
    pub fn new(conn: u64, size: usize) -> Self {
        Self {
            conn,
            size: size as u64,
            next_seq: 0,
            head: Vec::with_capacity(14),
            cur: None,
            msg: frame::Reassembly::default(),
        }
    }

    /// Consumes `data`; `on_msg(send_ns)` is called for every message that passed its checks.
    pub fn feed(&mut self, mut data: &[u8], mut on_msg: impl FnMut(u64)) -> Fed {
        let mut f = Fed::default();
        loop {
            if let Some((h, left)) = self.cur.as_mut() {
                let n = (*left as usize).min(data.len());
                if h.opcode < 8 {
                    self.msg.payload(&data[..n]);
                }
                *left -= n as u64;
                data = &data[n..];
                if *left > 0 {
                    return f;
                }
                let h = *h;
                self.cur = None;
                self.complete(h, &mut f, &mut on_msg);
                continue;
            }
            if data.is_empty() {
                return f;
            }
            // A header: straight from `data`, or completed from bytes split across reads.
            let h = if self.head.is_empty() {
                match frame::parse_header(data) {
                    Some(h) => {
                        data = &data[h.header_len..];
                        h
                    }
                    None => {
                        self.head.extend_from_slice(data);
                        return f;
                    }
                }
            } else {
                let old = self.head.len();
                self.head.extend_from_slice(&data[..data.len().min(14)]);
                match frame::parse_header(&self.head) {
                    Some(h) => {
                        data = &data[h.header_len - old..];
                        self.head.clear();
                        h
                    }
                    None => {
                        self.head.truncate(old);
                        self.head.extend_from_slice(data);
                        return f;
                    }
                }
            };
            if h.opcode < 8 {
                self.msg.start(&h);
            }
            if h.len == 0 {
                self.complete(h, &mut f, &mut on_msg);
            } else {
                self.cur = Some((h, h.len));
            }
        }
    }

    fn complete(&mut self, h: frame::Header, f: &mut Fed, on_msg: &mut impl FnMut(u64)) {
        if h.opcode >= 8 {
            f.control += 1;
            f.close |= h.opcode == frame::OP_CLOSE;
            return;
        }
        let Some(m) = self.msg.end(h.fin) else {
            return;
        };
        match self.check(&m) {
            (Check::Ok, ts) => {
                f.good += 1;
                on_msg(ts);
            }
            (bad, _) => {
                f.bad += 1;
                match bad {
                    Check::BadFrame => f.bad_frames += 1,
                    Check::WrongConnection => f.conn_errors += 1,
                    _ => f.seq_errors += 1,
                }
            }
        }
    }

    fn check(&mut self, m: &frame::Message<MARKER>) -> (Check, u64) {
        if m.broken || m.opcode != frame::OP_BINARY || m.len != self.size {
            return (Check::BadFrame, 0);
        }
        let w0 = u64::from_le_bytes(m.head[..8].try_into().unwrap_or_default());
        let ts = u64::from_le_bytes(m.head[8..].try_into().unwrap_or_default());
        let (conn, seq) = (w0 >> SEQ_BITS, w0 & ((1 << SEQ_BITS) - 1));
        if conn != self.conn {
            return (Check::WrongConnection, ts);
        }
        if seq != self.next_seq {
            // Resynchronise, so one loss counts once rather than for every later message.
            self.next_seq = seq + 1;
            return (Check::WrongSequence, ts);
        }
        self.next_seq += 1;
        (Check::Ok, ts)
    }
}

/// Pre-built client frames for one connection's writes, re-stamped with fresh markers.
#[derive(Debug)]
pub struct FrameBatch {
    buf: Vec<u8>,
    frame_len: usize,
    /// Offset of the payload in each frame.
    at: usize,
    conn: u64,
    next_seq: u64,
    wide_mask: u64,
}

impl FrameBatch {
    /// `frames` masked binary frames of `size` bytes for connection `conn`.
    pub fn new(conn: u64, size: usize, frames: usize) -> Self {
        let mut one = Vec::with_capacity(size + 14);
        frame::write_client_frame(&mut one, frame::OP_BINARY, &vec![b'f'; size], MASK);
        let frame_len = one.len();
        let m = u32::from_ne_bytes(MASK);
        Self {
            buf: one.repeat(frames.max(1)),
            frame_len,
            at: frame_len - size,
            conn,
            next_seq: 0,
            wide_mask: u64::from(m) | (u64::from(m) << 32),
        }
    }

    /// Bytes of one frame on the wire.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The frames, as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Gives every frame the next sequence numbers and send time `ts_ns`.
    pub fn stamp_all(&mut self, ts_ns: u64) {
        let frames = self.buf.len() / self.frame_len;
        for k in 0..frames {
            let w0 = (self.conn << SEQ_BITS) | (self.next_seq + k as u64);
            self.put(k, Some(w0), ts_ns);
        }
        self.next_seq += frames as u64;
    }

    /// Re-stamps the send time of the frames that start at or after byte `from` (not yet
    /// handed to the socket), keeping their sequence numbers.
    pub fn restamp_from(&mut self, from: usize, ts_ns: u64) {
        let frames = self.buf.len() / self.frame_len;
        for k in from.div_ceil(self.frame_len)..frames {
            self.put(k, None, ts_ns);
        }
    }

    fn put(&mut self, k: usize, w0: Option<u64>, ts: u64) {
        // The marker starts at payload offset 0 and is 4-byte aligned in the payload, so
        // both words are masked with the mask repeated twice.
        let p = k * self.frame_len + self.at;
        if let Some(w0) = w0 {
            let v = u64::from_ne_bytes(w0.to_le_bytes()) ^ self.wide_mask;
            self.buf[p..p + 8].copy_from_slice(&v.to_ne_bytes());
        }
        let v = u64::from_ne_bytes(ts.to_le_bytes()) ^ self.wide_mask;
        self.buf[p + 8..p + 16].copy_from_slice(&v.to_ne_bytes());
    }
}

/// Writes frames as fast as the socket (or the TLS session) accepts them, until an error.
async fn writer<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut batch: FrameBatch,
    base: Instant,
    stats: &ConnStats,
) -> std::io::Result<()> {
    loop {
        batch.stamp_all(base.elapsed().as_nanos() as u64);
        let len = batch.bytes().len();
        let mut off = 0;
        while off < len {
            if off > 0 {
                // A partial write: what is still ours to send gets the time of this attempt.
                batch.restamp_from(off, base.elapsed().as_nanos() as u64);
            }
            let n = w.write(&batch.bytes()[off..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            off += n;
            stats.sent_wire.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Reads, counts and checks echoes until EOF, an error or a Close.
async fn reader<R: AsyncRead + Unpin>(
    r: &mut R,
    mut mr: MarkerReader,
    rest: Vec<u8>,
    base: Instant,
    stats: &ConnStats,
    shared: &Shared,
    h: &mut Histogram<u64>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut first = Some(rest);
    loop {
        let n = match first.take() {
            Some(rest) if !rest.is_empty() => {
                buf[..rest.len()].copy_from_slice(&rest);
                rest.len()
            }
            _ => r.read(&mut buf).await?,
        };
        anyhow::ensure!(n > 0, "closed by the target");
        let now = base.elapsed().as_nanos() as u64;
        let rec = shared.recording.load(Ordering::Relaxed);
        let f = mr.feed(&buf[..n], |ts| {
            if rec {
                let _ = h.record(now.saturating_sub(ts).max(1_000));
            }
        });
        if f.good > 0 {
            stats.delivered.fetch_add(f.good, Ordering::Relaxed);
        }
        if f.bad > 0 {
            shared.bad_frames.fetch_add(f.bad_frames, Ordering::Relaxed);
            shared
                .conn_errors
                .fetch_add(f.conn_errors, Ordering::Relaxed);
            shared.seq_errors.fetch_add(f.seq_errors, Ordering::Relaxed);
        }
        if f.control > 0 {
            shared
                .control_frames
                .fetch_add(f.control, Ordering::Relaxed);
        }
        anyhow::ensure!(!f.close, "Close from the target");
    }
}

/// One connection: flood and read until the stop signal; returns its latency histogram and
/// why it ended early, if it did. A plain socket is split into its borrowed halves; a TLS
/// stream, whose one session both directions share, with `tokio::io::split`.
#[allow(clippy::too_many_arguments)]
async fn conn_task(
    s: Conn,
    rest: Vec<u8>,
    id: u64,
    size: usize,
    frames_per_write: usize,
    base: Instant,
    stats: Arc<Vec<ConnStats>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> (Histogram<u64>, Option<String>) {
    let st = &stats[id as usize];
    st.open.store(true, Ordering::Relaxed);
    let batch = FrameBatch::new(id, size, frames_per_write);
    let mr = MarkerReader::new(id, size);
    match s {
        Conn::Tcp(mut s) => {
            let (mut r, mut w) = s.split();
            drive(&mut r, &mut w, batch, mr, rest, base, st, &shared, stop).await
        }
        Conn::Tls(s) => {
            let (mut r, mut w) = tokio::io::split(s);
            drive(&mut r, &mut w, batch, mr, rest, base, st, &shared, stop).await
        }
    }
}

/// The writer and the reader of one connection, until the stop signal or an early end.
#[allow(clippy::too_many_arguments)]
async fn drive<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    batch: FrameBatch,
    mr: MarkerReader,
    rest: Vec<u8>,
    base: Instant,
    st: &ConnStats,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> (Histogram<u64>, Option<String>) {
    let mut h = hist();
    let why = |what: &str, e: Option<String>| Some(format!("{what}: {}", e.unwrap_or_default()));
    let early = tokio::select! {
        e = writer(w, batch, base, st) => why("write", e.err().map(|e| e.to_string())),
        e = reader(r, mr, rest, base, st, shared, &mut h) => why("read", e.err().map(|e| e.to_string())),
        _ = stop.wait_for(|s| *s) => None,
    };
    if early.is_some() && !*stop.borrow() {
        shared.ended_early.fetch_add(1, Ordering::Relaxed);
        (h, early)
    } else {
        (h, None)
    }
}

/// Handshake latencies of fresh connections opened during the flood.
#[derive(Debug)]
struct Probes {
    h: Histogram<u64>,
    ok: u64,
    timeouts: u64,
    errors: u64,
    last_error: Option<String>,
}

/// Opens a fresh connection every `interval` until `stop`, timing connect + upgrade.
fn probe_loop(t: Arc<Target>, interval: Duration, stop: Arc<AtomicBool>) -> Probes {
    let mut p = Probes {
        h: hist(),
        ok: 0,
        timeouts: 0,
        errors: 0,
        last_error: None,
    };
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        next += interval;
        let t0 = Instant::now();
        // Connect, TLS handshake on a wss:// target, upgrade.
        let res = client::open_blocking(&t, PROBE_TIMEOUT);
        let took = t0.elapsed();
        match res {
            Ok(mut c) => {
                let _ = p.h.record((took.as_nanos() as u64).max(1_000));
                p.ok += 1;
                // Leave politely: a Close, then our FIN (the socket is dropped).
                let mut close = Vec::with_capacity(8);
                frame::write_client_frame(
                    &mut close,
                    frame::OP_CLOSE,
                    &1000u16.to_be_bytes(),
                    MASK,
                );
                let _ = c.stream.write_all(&close);
                let _ = c.stream.flush();
                let _ = c.socket.set_read_timeout(Some(Duration::from_millis(1)));
                let _ = c.stream.read(&mut [0u8; 64]);
            }
            Err(e) => {
                let timed_out = took >= PROBE_TIMEOUT
                    || e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        )
                    });
                if timed_out {
                    // A starved handshake is the figure this probe exists for: it stays in
                    // the percentiles, at the time it was given up.
                    let _ = p.h.record((took.as_nanos() as u64).max(1_000));
                    p.timeouts += 1;
                }
                p.errors += 1;
                p.last_error = Some(e.to_string());
            }
        }
    }
    p
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

/// Runs the flood mode.
pub async fn run(c: &Common, target: Target, src: Arc<SourceAddrs>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        c.size >= MARKER,
        "flood mode needs --size >= {MARKER} (the marker)"
    );
    anyhow::ensure!(c.connections > 0, "flood mode needs --connections > 0");
    anyhow::ensure!(
        (c.connections as u64) < (1 << (64 - SEQ_BITS)),
        "too many connections for the marker"
    );
    let size = c.size;
    let frame_len = FrameBatch::new(0, size, 1).frame_len();
    let frames_per_write = (c.write_bytes / frame_len).max(1);
    let target = Arc::new(target);
    let base = Instant::now();
    let stats: Arc<Vec<ConnStats>> =
        Arc::new((0..c.connections).map(|_| ConnStats::default()).collect());
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(c.connections);

    let open_t0 = Instant::now();
    // What the TLS handshakes negotiated (wss://; the connections opened before the flood).
    let mut tls = None;
    if c.connect_rate > 0.0 {
        // tcpkali's ramp-up: each connection floods as soon as it is open.
        let gap = Duration::from_secs_f64(1.0 / c.connect_rate);
        let mut openers = Vec::with_capacity(c.connections);
        for id in 0..c.connections {
            tokio::time::sleep_until((open_t0 + gap * id as u32).into()).await;
            let (t, ip) = (target.clone(), src.pick());
            let (stats, shared, stop) = (stats.clone(), shared.clone(), stop_rx.clone());
            openers.push(tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), client::open_conn(&t, ip)).await
                {
                    Ok(Ok((s, rest))) => {
                        shared.opened.fetch_add(1, Ordering::Relaxed);
                        Some(tokio::spawn(conn_task(
                            s,
                            rest,
                            id as u64,
                            size,
                            frames_per_write,
                            base,
                            stats,
                            shared,
                            stop,
                        )))
                    }
                    _ => {
                        shared.open_failed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }));
        }
        for o in openers {
            if let Some(t) = o.await? {
                tasks.push(t);
            }
        }
    } else {
        let conns = super::open_many(&target, &src, c.connections, c.open_concurrency).await?;
        tls = super::tls_tally(&conns);
        shared.opened.store(conns.len() as u64, Ordering::Relaxed);
        for (id, (s, rest)) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(conn_task(
                s,
                rest,
                id as u64,
                size,
                frames_per_write,
                base,
                stats.clone(),
                shared.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let open_s = open_t0.elapsed().as_secs_f64();
    let opened = shared.opened.load(Ordering::Relaxed);
    anyhow::ensure!(opened > 0, "no connection could be opened");

    tokio::time::sleep(c.warmup).await;
    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = (!c.probe_interval.is_zero()).then(|| {
        let (t, stop, every) = (target.clone(), probe_stop.clone(), c.probe_interval);
        std::thread::spawn(move || probe_loop(t, every, stop))
    });
    let snap = |s: &Vec<ConnStats>| -> Vec<(u64, u64, bool)> {
        s.iter()
            .map(|c| {
                (
                    c.sent_wire.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                    c.open.load(Ordering::Relaxed),
                )
            })
            .collect()
    };
    shared.recording.store(true, Ordering::Relaxed);
    let probe = c.probe();
    let tcp0 = procstat::tcp_counters();
    let t0 = Instant::now();
    let a = snap(&stats);
    tokio::time::sleep(c.duration).await;
    let b = snap(&stats);
    let wall = t0.elapsed().as_secs_f64();
    let usage = probe.finish();
    let kernel = procstat::tcp_counters_since(&tcp0);
    shared.recording.store(false, Ordering::Relaxed);
    probe_stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);

    let mut lat = hist();
    let mut last_error = None;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok((h, e))) => {
                lat.add(h)?;
                last_error = last_error.or(e);
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => last_error = Some("a connection task did not stop".into()),
        }
    }
    // Every client socket is closed now (the tasks owned them).
    let probes = match prober {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || p.join())
                .await?
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))?,
        ),
        None => None,
    };
    let leftover = if c.settle.is_zero() {
        None
    } else {
        tokio::time::sleep(c.settle).await;
        procstat::established_on_port(target.addr.port())
    };

    let sent_msgs: u64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| y.0 / frame_len as u64 - x.0 / frame_len as u64)
        .sum();
    let per_conn: Vec<f64> = a
        .iter()
        .zip(&b)
        .filter(|(_, y)| y.2)
        .map(|(x, y)| (y.1 - x.1) as f64 / wall)
        .collect();
    let starved = per_conn.iter().filter(|x| **x == 0.0).count();
    let delivered: u64 = a.iter().zip(&b).map(|(x, y)| y.1 - x.1).sum();
    let in_flight: u64 = b
        .iter()
        .map(|y| (y.0 / frame_len as u64).saturating_sub(y.1))
        .sum();
    let (fmin, fmed, fmax) = median_min_max(per_conn);
    let sent = sent_msgs as f64 / wall;
    let recv = delivered as f64 / wall;
    let per_msg = |cpu: Option<f64>| {
        cpu.filter(|_| delivered > 0)
            .map(|s| 1e6 * s / delivered as f64)
    };
    let ms = |v: u64| v as f64 / 1e6;
    let q = |h: &Histogram<u64>, p: f64| ms(h.value_at_quantile(p));
    // Percentiles of an empty histogram are no figure (nothing came back in the window).
    let qj = |h: &Histogram<u64>, p: f64| (!h.is_empty()).then(|| q(h, p));
    let seq_errors = shared.seq_errors.load(Ordering::Relaxed);
    let conn_errors = shared.conn_errors.load(Ordering::Relaxed);
    let bad_frames = shared.bad_frames.load(Ordering::Relaxed);
    let ended_early = shared.ended_early.load(Ordering::Relaxed);
    let open_failed = shared.open_failed.load(Ordering::Relaxed);

    let mut human = format!(
        "flood: {} conns ({} opened in {:.2} s), {} B, unbounded, {} frames per write: sent {:.0} msg/s ({:.1} MB/s), delivered {:.0} msg/s ({:.1} MB/s) over {:.1} s; per connection min / median / max {:.0} / {:.0} / {:.0} msg/s ({} got nothing); {} messages in flight at the end\n\
         flood: latency under flood p50 {:.3} ms, p99 {:.3}, max {:.3} ({} recorded)",
        c.connections,
        opened,
        open_s,
        size,
        frames_per_write,
        sent,
        sent * size as f64 / 1e6,
        recv,
        recv * size as f64 / 1e6,
        wall,
        fmin,
        fmed,
        fmax,
        starved,
        in_flight,
        q(&lat, 0.5),
        q(&lat, 0.99),
        ms(lat.max()),
        lat.len(),
    );
    if let Some(p) = &probes {
        human += &format!(
            "\nflood: new connections during the flood: {} ok, {} failed ({} timeouts); connect + upgrade p50 {:.3} ms, p99 {:.3}, max {:.3}",
            p.ok,
            p.errors,
            p.timeouts,
            q(&p.h, 0.5),
            q(&p.h, 0.99),
            ms(p.h.max()),
        );
        if let Some(e) = &p.last_error {
            human += &format!(" (last failure: {e})");
        }
    }
    let cpu =
        |name: &str, v: Option<f64>| v.map(|x| format!(", {name} {x:.3}")).unwrap_or_default();
    human += &format!(
        "\nflood: CPU µs per delivered message: generator {:.3}{}{}",
        per_msg(Some(usage.load_cpu_s)).unwrap_or(0.0),
        cpu("target", per_msg(usage.target_cpu_s)),
        cpu("origin", per_msg(usage.origin_cpu_s)),
    );
    human += &format!("\nflood: {}", super::kernel_line(&kernel));
    if let Some(l) = leftover {
        human += &format!(
            "\nflood: {l} connections still established on port {} {:.1} s after the generator closed its sockets",
            target.addr.port(),
            c.settle.as_secs_f64()
        );
    }
    if ended_early > 0 || open_failed > 0 {
        human += &format!(
            "\nflood: warning: {ended_early} connections ended before the run stopped them, {open_failed} could not be opened{}",
            last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
    let problem = (seq_errors + conn_errors + bad_frames > 0).then(|| {
        format!(
            "{seq_errors} messages out of sequence, {conn_errors} with another connection's marker, {bad_frames} malformed frames"
        )
    });
    if let Some(p) = &problem {
        human += &format!("\nflood: PROBLEM: {p}");
    }
    let probe_json = probes.as_ref().map(|p| {
        json!({
            "ok": p.ok,
            "failed": p.errors,
            "timeouts": p.timeouts,
            "p50_ms": qj(&p.h, 0.5),
            "p90_ms": qj(&p.h, 0.9),
            "p99_ms": qj(&p.h, 0.99),
            "max_ms": qj(&p.h, 1.0),
            "last_error": p.last_error,
        })
    });
    Ok(Outcome {
        human,
        results: json!({
            "tls": tls,
            "sent_msgs_per_s": sent,
            "recv_msgs_per_s": recv,
            "msgs_per_s": recv,
            "sent_bytes_per_s": sent * size as f64,
            "recv_bytes_per_s": recv * size as f64,
            "frames_per_write": frames_per_write,
            "connections_opened": opened,
            "open_failed": open_failed,
            "open_s": open_s,
            "ended_early": ended_early,
            "last_error": last_error,
            "per_conn_min_msgs_per_s": fmin,
            "per_conn_median_msgs_per_s": fmed,
            "per_conn_max_msgs_per_s": fmax,
            "per_conn_starved": starved,
            "in_flight_end": in_flight,
            "p50_ms": qj(&lat, 0.5),
            "p90_ms": qj(&lat, 0.9),
            "p99_ms": qj(&lat, 0.99),
            "max_ms": qj(&lat, 1.0),
            "recorded": lat.len(),
            "probe": probe_json,
            "probe_p50_ms": probes.as_ref().and_then(|p| qj(&p.h, 0.5)),
            "probe_p99_ms": probes.as_ref().and_then(|p| qj(&p.h, 0.99)),
            "target_cpu_us_per_msg": per_msg(usage.target_cpu_s),
            "origin_cpu_us_per_msg": per_msg(usage.origin_cpu_s),
            "load_cpu_us_per_msg": per_msg(Some(usage.load_cpu_s)),
            "leftover_established": leftover,
            "kernel_tcp": kernel,
            "seq_errors": seq_errors,
            "conn_errors": conn_errors,
            "bad_frames": bad_frames,
            "control_frames": shared.control_frames.load(Ordering::Relaxed),
            "problem": problem,
            "wall_s": wall,
        }),
        usage,
        relayed_bytes: (sent_msgs + delivered) as f64 * size as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's echo of a client batch: same payloads, unmasked server frames.
    fn echo_of(client: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut p = 0;
        while let Some(h) = frame::parse_header(&client[p..]) {
            let start = p + h.header_len;
            let mut body = client[start..start + h.len as usize].to_vec();
            frame::apply_mask(&mut body, h.mask.unwrap(), 0);
            frame::write_header(&mut out, h.opcode, body.len(), None);
            out.extend_from_slice(&body);
            p = start + h.len as usize;
        }
        out
    }

    #[test]
    fn markers_round_trip_at_every_split() {
        for size in [16usize, 64, 300, 70_000] {
            let mut b = FrameBatch::new(7, size, 5);
            b.stamp_all(1_000);
            let first = b.bytes().to_vec();
            b.stamp_all(2_000);
            // The second batch: re-stamp the last frames as after a partial write.
            b.restamp_from(2 * b.frame_len() + 1, 3_000);
            let mut wire = echo_of(&first);
            wire.extend(echo_of(b.bytes()));
            for step in [1usize, 2, 7, 15, 16, 17, 100, 4096, wire.len()] {
                let mut r = MarkerReader::new(7, size);
                let mut ts = Vec::new();
                let mut total = Fed::default();
                for chunk in wire.chunks(step) {
                    let f = r.feed(chunk, |t| ts.push(t));
                    total.good += f.good;
                    total.bad += f.bad;
                }
                assert_eq!((total.good, total.bad), (10, 0), "size {size} step {step}");
                assert_eq!(
                    ts,
                    [
                        1_000, 1_000, 1_000, 1_000, 1_000, 2_000, 2_000, 2_000, 3_000, 3_000
                    ],
                    "size {size} step {step}"
                );
            }
        }
    }

    /// The echo as wsedge's echo function may send it: every message in fragments cut at
    /// `cut` bytes (so a marker can straddle two), a ping between the fragments.
    fn fragmented(echo: &[u8], cut: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut p = 0;
        while let Some(h) = frame::parse_header(&echo[p..]) {
            let body = &echo[p + h.header_len..p + h.header_len + h.len as usize];
            let cut = cut.min(body.len() - 1);
            frame::write_header_fin(&mut out, false, h.opcode, cut, None);
            out.extend_from_slice(&body[..cut]);
            frame::write_header(&mut out, frame::OP_PING, 2, None);
            out.extend_from_slice(b"hi");
            frame::write_header_fin(&mut out, true, frame::OP_CONT, body.len() - cut, None);
            out.extend_from_slice(&body[cut..]);
            p += h.header_len + h.len as usize;
        }
        out
    }

    #[test]
    fn fragmented_echoes_count_once_with_their_markers() {
        for (size, cut) in [
            (64usize, 1usize),
            (64, 9),
            (64, 16),
            (300, 200),
            (70_000, 5),
        ] {
            let mut b = FrameBatch::new(2, size, 3);
            b.stamp_all(4_000);
            let wire = fragmented(&echo_of(b.bytes()), cut);
            for step in [1usize, 3, 17, wire.len()] {
                let mut r = MarkerReader::new(2, size);
                let (mut ts, mut good, mut bad, mut control) = (Vec::new(), 0, 0, 0);
                for chunk in wire.chunks(step) {
                    let f = r.feed(chunk, |t| ts.push(t));
                    (good, bad, control) = (good + f.good, bad + f.bad, control + f.control);
                }
                assert_eq!(
                    (good, bad, control),
                    (3, 0, 3),
                    "size {size} cut {cut} step {step}"
                );
                assert_eq!(ts, [4_000; 3], "size {size} cut {cut} step {step}");
            }
        }
        // A message whose fragments add up to the wrong size is still a bad one.
        let mut b = FrameBatch::new(2, 64, 1);
        b.stamp_all(1);
        let mut wire = fragmented(&echo_of(b.bytes()), 20);
        frame::write_header(&mut wire, frame::OP_CONT, 1, None);
        wire.push(0);
        let f = MarkerReader::new(2, 64).feed(&wire, |_| {});
        assert_eq!((f.good, f.bad_frames), (1, 1));
    }

    #[test]
    fn a_lost_message_a_foreign_marker_and_a_wrong_size_are_caught() {
        let mut b = FrameBatch::new(3, 64, 4);
        b.stamp_all(5);
        let echo = echo_of(b.bytes());
        let one = echo.len() / 4;
        // Drop message 1: message 2 is out of sequence, then the stream is in step again.
        let mut lost = echo[..one].to_vec();
        lost.extend_from_slice(&echo[2 * one..]);
        let f = MarkerReader::new(3, 64).feed(&lost, |_| {});
        assert_eq!((f.good, f.seq_errors), (2, 1));
        // Another connection's messages.
        let f = MarkerReader::new(4, 64).feed(&echo, |_| {});
        assert_eq!((f.good, f.conn_errors), (0, 4));
        // A frame of the wrong size, a text frame, then a Close.
        let mut odd = Vec::new();
        frame::write_header(&mut odd, frame::OP_BINARY, 63, None);
        odd.extend_from_slice(&[0; 63]);
        frame::write_header(&mut odd, frame::OP_TEXT, 64, None);
        odd.extend_from_slice(&[b'a'; 64]);
        frame::write_header(&mut odd, frame::OP_CLOSE, 2, None);
        odd.extend_from_slice(&1000u16.to_be_bytes());
        let f = MarkerReader::new(3, 64).feed(&odd, |_| {});
        assert_eq!((f.good, f.bad_frames, f.control, f.close), (0, 2, 1, true));
    }
}
