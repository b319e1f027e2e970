//! The fuzz checks without libFuzzer: for machines without a nightly toolchain, and CI.
//!
//! Each test replays the committed corpus of its target (`corpus/<target>/`), then runs
//! mutations of it from a small deterministic mutator (xorshift, fixed seed) until
//! `WSEDGE_FUZZ_SMOKE_SECS` seconds (default 2) or `WSEDGE_FUZZ_SMOKE_RUNS` inputs have
//! passed. A failing input is written to `artifacts/<target>/smoke-crash-<hash>` and the
//! test fails naming it; replay it with `cargo fuzz run <target> <file>` or this test.
//!
//!   cargo test --no-default-features --test smoke     (scripts/fuzz.sh --smoke; --release: more inputs)
//!   WSEDGE_FUZZ_REPLAY=artifacts/session/crash-x cargo test --no-default-features --test smoke session

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Tokens that matter to HTTP heads and TOML, spliced in by the mutator.
const DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b"\0",
    b": ",
    b" ",
    b"\t",
    b",",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
    b"Host: a.example.com\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"GET / HTTP/1.1\r\n",
    b"[[route]]\n",
    b"origins = [\"127.0.0.1:9\"]\n",
    b"= \"10s\"\n",
    b"= 4294967296\n",
    b"[limits]\n",
    b"\"",
    b"'",
    b"\xff",
    b"/../",
    b"/./",
    b"//",
    b"%2e",
    b"%2F",
    b"%5c",
    b"\\",
    b";",
    b"%",
];

/// The `tls` target's tokens instead (its own list, so the other targets' deterministic
/// mutation sequences stay what they were): TLS record headers (handshake, application
/// data, alert, oversized) and an HTTP request line.
const TLS_DICT: &[&[u8]] = &[
    b"\x16\x03\x01\x02\x00",
    b"\x16\x03\x03\x00\x04\x14\x00\x00\x00",
    b"\x17\x03\x03\x00\x20",
    b"\x15\x03\x03\x00\x02\x02\x28",
    b"\x15\x03\x03\x00\x02\x01\x00",
    b"\x17\x03\x03\xff\xff",
    b"\x14\x03\x03\x00\x01\x01",
    b"GET / HTTP/1.1\r\n",
    b"\x00",
    b"\xff",
];

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four random edits of `input`, sometimes spliced with another corpus entry.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a range (repeated headers, long lines).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, copy);
            }
            5 | 6 => {
                let tok = dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                v.splice(i..i, tok.iter().copied());
            }
            7 if !corpus.is_empty() => {
                // Crossover: our prefix, another entry's suffix.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                v.truncate(rng.below(len + 1));
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(64 * 1024);
    v
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn run_one(target: &str, check: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        let dir = root().join("artifacts").join(target);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("smoke-crash-{:016x}", fnv(input)));
        let _ = std::fs::write(&path, input);
        panic!(
            "{target}: check failed on a {}-byte input, saved to {}",
            input.len(),
            path.display()
        );
    }
}

fn smoke(target: &str, check: fn(&[u8])) {
    smoke_with(target, check, DICT);
}

fn smoke_with(target: &str, check: fn(&[u8]), dict: &[&[u8]]) {
    if let Ok(file) = std::env::var("WSEDGE_FUZZ_REPLAY") {
        let data = std::fs::read(Path::new(&file)).expect("read replay file");
        check(&data);
        return;
    }
    let corpus = load_corpus(target);
    assert!(!corpus.is_empty(), "no seeds in corpus/{target}");
    for input in &corpus {
        run_one(target, check, input);
    }
    let secs = env_u64("WSEDGE_FUZZ_SMOKE_SECS").unwrap_or(2);
    let max_runs = env_u64("WSEDGE_FUZZ_SMOKE_RUNS").unwrap_or(u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fnv(target.as_bytes()));
    // Keep mutants that were accepted into a small pool, so edits stack up.
    let mut pool = corpus.clone();
    let mut runs = 0u64;
    while runs < max_runs && (!runs.is_multiple_of(256) || Instant::now() < deadline) {
        let base = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, base, &corpus, dict);
        run_one(target, check, &input);
        if pool.len() < 4096 && rng.below(8) == 0 {
            pool.push(input);
        }
        runs += 1;
    }
    println!(
        "smoke {target}: {} seeds + {runs} mutations in {secs} s, no failure",
        corpus.len()
    );
}

#[test]
fn handshake() {
    smoke("handshake", wsedge_fuzz::handshake);
}

#[test]
fn response() {
    smoke("response", wsedge_fuzz::response);
}

#[test]
fn config() {
    smoke("config", wsedge_fuzz::config);
}

#[test]
fn session() {
    smoke("session", wsedge_fuzz::session);
}

#[test]
fn frame() {
    smoke("frame", wsedge_fuzz::frame);
}

#[test]
fn path() {
    smoke("path", wsedge_fuzz::path);
}

#[test]
fn endpoint() {
    smoke("endpoint", wsedge_fuzz::endpoint);
}

#[test]
fn channels() {
    smoke("channels", wsedge_fuzz::channels);
}

#[test]
fn since() {
    smoke("since", wsedge_fuzz::since);
}

#[test]
fn wire() {
    smoke("wire", wsedge_fuzz::wire);
}

#[test]
fn firewall() {
    smoke("firewall", wsedge_fuzz::firewall);
}

#[test]
fn tls() {
    smoke_with("tls", wsedge_fuzz::tls, TLS_DICT);
}

#[test]
fn frames_relay() {
    smoke("frames_relay", wsedge_fuzz::frames_relay);
}
