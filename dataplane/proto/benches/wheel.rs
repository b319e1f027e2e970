//! Criterion benches of the per-worker timer wheel (`wsedge_proto::wheel`): the costs the ring
//! loop pays for 100k connections' timers, and the insert+cancel pair of an idle-timer re-arm.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wsedge_proto::wheel::{Tick, TimerId, TimerWheel};

const N: usize = 100_000;
/// Deadlines spread over the max connection time (15 min), as in a busy worker.
const SPREAD: Tick = 15 * 60 * 1000;

/// Deterministic deadlines in `1..=SPREAD` (xorshift64*).
fn deadlines(n: usize) -> Vec<Tick> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            1 + state.wrapping_mul(0x2545_f491_4f6c_dd1d) % SPREAD
        })
        .collect()
}

fn filled(deadlines: &[Tick]) -> (TimerWheel<u32>, Vec<TimerId>) {
    let mut wheel = TimerWheel::with_capacity(0, deadlines.len());
    let ids = deadlines
        .iter()
        .zip(0u32..)
        .map(|(&d, token)| wheel.insert(d, token))
        .collect();
    (wheel, ids)
}

fn bench_wheel(c: &mut Criterion) {
    let deadlines = deadlines(N);
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(N as u64));

    group.bench_function("insert_100k", |b| {
        b.iter_batched_ref(
            || TimerWheel::with_capacity(0, N),
            |wheel| {
                for (&d, token) in deadlines.iter().zip(0u32..) {
                    black_box(wheel.insert(d, token));
                }
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("cancel_100k", |b| {
        b.iter_batched_ref(
            || filled(&deadlines),
            |(wheel, ids)| {
                for &id in ids.iter() {
                    black_box(wheel.cancel(id));
                }
            },
            BatchSize::LargeInput,
        )
    });

    // The ring loop's pattern: wake at next_expiration, advance, until every timer fired.
    group.bench_function("advance_expire_100k_by_next_expiration", |b| {
        b.iter_batched_ref(
            || (filled(&deadlines).0, Vec::with_capacity(N)),
            |(wheel, expired)| {
                while let Some(next) = wheel.next_expiration() {
                    wheel.advance(next, expired);
                }
                assert_eq!(expired.len(), N);
            },
            BatchSize::LargeInput,
        )
    });

    // A loop woken every millisecond (a busy worker), over the whole spread.
    group.bench_function("advance_expire_100k_1ms_steps", |b| {
        b.iter_batched_ref(
            || (filled(&deadlines).0, Vec::with_capacity(N)),
            |(wheel, expired)| {
                for now in 1..=SPREAD {
                    wheel.advance(now, expired);
                }
                assert_eq!(expired.len(), N);
            },
            BatchSize::LargeInput,
        )
    });

    // A long idle gap: one advance past every deadline.
    group.bench_function("advance_expire_100k_one_jump", |b| {
        b.iter_batched_ref(
            || (filled(&deadlines).0, Vec::with_capacity(N)),
            |(wheel, expired)| {
                wheel.advance(SPREAD, expired);
                assert_eq!(expired.len(), N);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // Steady state: 100k armed timers, re-arm one connection's idle timer (cancel + insert).
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rearm_insert_cancel_pair", |b| {
        let (mut wheel, mut ids) = filled(&deadlines);
        let mut i = 0;
        b.iter(|| {
            let slot = i % N;
            black_box(wheel.cancel(ids[slot]));
            ids[slot] = wheel.insert(deadlines[slot] + 60_000, slot as u32);
            i += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, bench_wheel);
criterion_main!(benches);
