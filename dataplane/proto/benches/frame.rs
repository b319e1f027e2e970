//! Criterion benches of the frame codec (`wsedge_proto::frame`): the per-frame and per-byte
//! costs the `frames` relay pays on every recv chunk (header parsing, message tracking), and
//! what it pays only when it must look at payload (unmasking, UTF-8 validation).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsedge_proto::frame::{
    FrameTracker, OpCode, Role, TrackerConfig, Utf8Validator, apply_mask, apply_mask_simple,
    encode_frame, parse_header,
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn bench_parse_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_header");
    group.throughput(Throughput::Elements(1));
    for (name, len) in [("7bit", 64usize), ("16bit", 16 * 1024), ("64bit", 1 << 20)] {
        let mut frame = Vec::new();
        encode_frame(OpCode::Binary, true, &vec![0; len], Some(KEY), &mut frame);
        frame.truncate(14);
        group.bench_function(name, |b| b.iter(|| parse_header(black_box(&frame))));
    }
    group.finish();
}

fn bench_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_mask");
    for (name, len) in [("64B", 64usize), ("16KiB", 16 * 1024), ("1MiB", 1 << 20)] {
        let mut buf = vec![0x5au8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("fast/{name}"), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
        });
        group.bench_function(format!("simple/{name}"), |b| {
            b.iter(|| apply_mask_simple(black_box(&mut buf), KEY, 1))
        });
    }
    group.finish();
}

/// Drives a fresh tracker over `buf`; returns the number of events.
fn track(buf: &[u8]) -> usize {
    let mut tracker = FrameTracker::new(Role::Server, TrackerConfig::default());
    let mut pos = 0;
    let mut events = 0;
    while let Ok(Some(event)) = tracker.poll_event(buf, &mut pos) {
        black_box(&event);
        events += 1;
    }
    events
}

fn bench_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker");
    let mut small = Vec::new();
    while small.len() + 64 + 6 <= 16 * 1024 {
        encode_frame(OpCode::Binary, true, &[7; 64], Some(KEY), &mut small);
    }
    let mut single = Vec::new();
    encode_frame(
        OpCode::Binary,
        true,
        &vec![7; 16 * 1024],
        Some(KEY),
        &mut single,
    );
    for (name, buf) in [
        ("16KiB_of_64B_frames", &small),
        ("one_16KiB_frame", &single),
    ] {
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(name, |b| b.iter(|| track(black_box(buf))));
    }
    group.finish();
}

fn bench_utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let ascii = "wsedge relays websockets. ".repeat(700).into_bytes()[..16 * 1024].to_vec();
    let mixed_text = "κόσμε 😀 añ€ text ".repeat(800);
    let mut end = 16 * 1024;
    while !mixed_text.is_char_boundary(end) {
        end -= 1;
    }
    let mixed = mixed_text.as_bytes()[..end].to_vec();
    for (name, buf) in [("ascii_16KiB", &ascii), ("mixed_16KiB", &mixed)] {
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(buf)).and_then(|()| v.finish())
            })
        });
        group.bench_function(format!("{name}_in_1500B_pieces"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in black_box(buf).chunks(1500) {
                    v.feed(piece)?;
                }
                v.finish()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_parse_header,
    bench_mask,
    bench_tracker,
    bench_utf8
);
criterion_main!(benches);
