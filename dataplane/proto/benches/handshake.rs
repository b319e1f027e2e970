//! Micro-benchmarks of the handshake path the ring driver runs once per connection:
//! parse + classify the client's head, rewrite it for the origin, compute the expected
//! accept key, and check the origin's 101.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsedge_proto::accept::accept_key;
use wsedge_proto::forwarding::Forwarding;
use wsedge_proto::handshake::{HeadLimits, parse_request, rewrite_for_origin};
use wsedge_proto::response::parse_response;

mod heads;
use heads::BROWSER_UPGRADE;

const ORIGIN_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=15\r\n\
    \r\n";

fn bench(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 45));
    let forwarding = Forwarding::default();

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
                rewrite_for_origin(&req, peer, "http", &forwarding, &mut out);
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
