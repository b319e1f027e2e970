//! Micro-benchmarks of the handshake path the ring driver runs once per connection:
//! parse + classify the client's head, rewrite it for the origin, compute the expected
//! accept key, and check the origin's 101.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsedge_proto::accept::accept_key;
use wsedge_proto::handshake::{HeadLimits, parse_request, rewrite_for_origin};
use wsedge_proto::response::parse_response;

/// What a current Chromium sends to open a WebSocket (13 header lines).
const BROWSER_UPGRADE: &[u8] = b"GET /ws/chat?room=lobby&v=3 HTTP/1.1\r\n\
    Host: chat.example.com\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://chat.example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
    Cookie: session=3f9a1c5e7b2d4f6a8c0e; theme=dark; _ga=GA1.1.123456789.1700000000\r\n\
    Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    \r\n";

const ORIGIN_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=15\r\n\
    \r\n";

fn bench(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 45));

    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Bytes(BROWSER_UPGRADE.len() as u64));
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(BROWSER_UPGRADE), &limits))
    });
    let mut out = Vec::with_capacity(1024);
    g.bench_function("parse_request+rewrite_for_origin", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Some(req)) = parse_request(black_box(BROWSER_UPGRADE), &limits) {
                rewrite_for_origin(&req, peer, "http", &mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();

    c.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"x3JJHMbDL1EzLkh9GBhXDw==")))
    });

    let expected = accept_key(b"x3JJHMbDL1EzLkh9GBhXDw==");
    assert_eq!(&expected, b"HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    assert!(matches!(
        parse_response(ORIGIN_101, &limits, Some(&expected)),
        Ok(Some(r)) if r.upgraded
    ));
    c.bench_function("parse_response_101", |b| {
        b.iter(|| parse_response(black_box(ORIGIN_101), &limits, Some(&expected)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
