//! Per-worker firewall state: token buckets for rate limits, live connection counts for caps.
//!
//! Part of the pure firewall engine ([`crate::firewall`]); each dataplane worker owns one
//! [`FirewallState`] and passes it `&mut` to every evaluation, so nothing here locks. The
//! dataplane steers each client address to one worker (a reuseport BPF program), so
//! per-address counters held here are exact for the host; global counters are per worker,
//! and the engine divides global limits by the worker count (see [`FirewallState::new`]).
//!
//! Memory stays bounded: connection counts are removed when they reach zero; a per-address
//! bucket that has refilled completely carries no information and is evicted by a sweep that
//! runs when the map reaches its size cap (at most once a second). While the map is still
//! full, addresses without a bucket are not tracked (each handshake sees a full bucket) until
//! a sweep frees room: a flood of more distinct addresses than the cap cannot grow memory,
//! and global limits and caps still apply to it.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::wheel::Tick;

/// Per-address buckets tracked per worker before sweeping, by default.
pub const DEFAULT_MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Least interval between two sweeps of a full bucket map, in ms.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// A token bucket in fixed point: one token is `cost` units, refill is `rate` units per ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    units: u64,
    at: Tick,
}

/// The integer parameters of a bucket, derived from a rule's rate limit and the worker share.
///
/// With `w` the share divisor (the worker count for a global limit, 1 for per-address) a
/// token costs `period_ms * w` units and the bucket gains `rate` units per ms: `rate / w`
/// tokens per period per worker, exactly, with no rounding drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BucketParams {
    /// Units gained per ms (the rule's rate).
    pub(super) rate: u64,
    /// Units one handshake costs.
    pub(super) cost: u64,
    /// Most units held: the burst, and never less than one token.
    pub(super) capacity: u64,
}

impl BucketParams {
    pub(super) fn new(rate: u32, period_ms: u64, burst: u32, share: u64) -> BucketParams {
        let cost = period_ms.max(1).saturating_mul(share.max(1));
        BucketParams {
            rate: u64::from(rate).max(1),
            cost,
            capacity: u64::from(burst).saturating_mul(period_ms.max(1)).max(cost),
        }
    }

    fn full(&self, now: Tick) -> Bucket {
        Bucket {
            units: self.capacity,
            at: now,
        }
    }

    fn refill(&self, b: &mut Bucket, now: Tick) {
        let elapsed = now.saturating_sub(b.at);
        b.units = b
            .units
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        b.at = b.at.max(now);
    }

    /// Takes one token; on refusal, the seconds until one is available (at least 1).
    fn take(&self, b: &mut Bucket, now: Tick) -> Result<(), u32> {
        self.refill(b, now);
        if b.units >= self.cost {
            b.units -= self.cost;
            Ok(())
        } else {
            let wait_ms = (self.cost - b.units).div_ceil(self.rate);
            Err(u32::try_from(wait_ms.div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1))
        }
    }

    /// True if the bucket would be full at `now` (dropping it loses nothing).
    fn is_full_at(&self, b: &Bucket, now: Tick) -> bool {
        let missing = self.capacity.saturating_sub(b.units);
        now.saturating_sub(b.at).saturating_mul(self.rate) >= missing
    }
}

/// One worker's counters. Create one per worker; pass it to every
/// [`crate::firewall::Firewall::evaluate`], [`FirewallState::on_connection_open`] and
/// [`FirewallState::on_connection_close`] of that worker.
#[derive(Debug)]
pub struct FirewallState {
    pub(super) workers: u64,
    max_tracked: usize,
    /// The [`crate::firewall::Firewall`] the buckets belong to; a new one resets them.
    pub(super) firewall_id: u64,
    /// Per-address buckets, keyed by (rule index, canonical address).
    buckets: HashMap<(u32, IpAddr), Bucket>,
    /// Global buckets by rule index.
    global: Vec<Option<Bucket>>,
    last_sweep: Option<Tick>,
    /// Live connections per canonical address (no zero entries).
    live: HashMap<IpAddr, u32>,
    live_total: u64,
    pub(super) header_at: Vec<(usize, bool)>,
    pub(super) list_hit: Vec<u8>,
    pub(super) query_pairs: Vec<(usize, usize, usize)>,
}

impl FirewallState {
    /// State for one of `workers` workers (global limits are shared out between them:
    /// a global rate of 100/s is 100/`workers` per worker, a global cap of 1000 connections
    /// is ceil(1000/`workers`) per worker).
    pub fn new(workers: usize) -> FirewallState {
        FirewallState {
            workers: (workers.max(1)) as u64,
            max_tracked: DEFAULT_MAX_TRACKED_ADDRESSES,
            firewall_id: 0,
            buckets: HashMap::new(),
            global: Vec::new(),
            last_sweep: None,
            live: HashMap::new(),
            live_total: 0,
            header_at: Vec::new(),
            list_hit: Vec::new(),
            query_pairs: Vec::new(),
        }
    }

    /// Sets the number of per-address buckets kept before sweeping (at least 1).
    pub fn with_max_tracked_addresses(mut self, max: usize) -> FirewallState {
        self.max_tracked = max.max(1);
        self
    }

    /// A connection from `peer` was admitted (the verdict was [`super::Verdict::Allow`]) and
    /// now counts against the caps until [`FirewallState::on_connection_close`].
    pub fn on_connection_open(&mut self, peer: IpAddr) {
        *self.live.entry(peer.to_canonical()).or_insert(0) += 1;
        self.live_total += 1;
    }

    /// A connection counted by [`FirewallState::on_connection_open`] ended; call exactly once
    /// per opened connection. An unmatched close is ignored.
    pub fn on_connection_close(&mut self, peer: IpAddr) {
        let key = peer.to_canonical();
        if let Some(n) = self.live.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&key);
            }
            self.live_total = self.live_total.saturating_sub(1);
        }
    }

    /// Live connections of `peer` on this worker.
    pub fn live_connections(&self, peer: IpAddr) -> u32 {
        self.live.get(&peer.to_canonical()).copied().unwrap_or(0)
    }

    /// Live connections on this worker.
    pub fn live_total(&self) -> u64 {
        self.live_total
    }

    /// Per-address buckets currently held.
    pub fn tracked_addresses(&self) -> usize {
        self.buckets.len()
    }

    /// Drops every per-address bucket that has refilled completely at `now`; `params` are
    /// the per-address bucket parameters by rule index.
    pub(super) fn sweep(&mut self, now: Tick, params: &[Option<BucketParams>]) {
        self.buckets
            .retain(|&(rule, _), b| match params.get(rule as usize) {
                Some(Some(p)) => !p.is_full_at(b, now),
                _ => false,
            });
        self.last_sweep = Some(now);
    }

    /// Forgets all buckets (called when the rules change: their indices no longer hold).
    pub(super) fn reset_buckets(&mut self, firewall_id: u64, rules: usize) {
        self.firewall_id = firewall_id;
        self.buckets.clear();
        self.global.clear();
        self.global.resize(rules, None);
    }

    /// Takes a token from `peer`'s bucket of rule `rule`.
    pub(super) fn take_address(
        &mut self,
        rule: u32,
        peer: IpAddr,
        params: &BucketParams,
        now: Tick,
        all_params: &[Option<BucketParams>],
    ) -> Result<(), u32> {
        let key = (rule, peer.to_canonical());
        if let Some(b) = self.buckets.get_mut(&key) {
            return params.take(b, now);
        }
        if self.buckets.len() >= self.max_tracked {
            let due = self
                .last_sweep
                .is_none_or(|t| now >= t.saturating_add(SWEEP_INTERVAL_MS));
            if due {
                self.sweep(now, all_params);
            }
            if self.buckets.len() >= self.max_tracked {
                // Untracked: a fresh bucket always holds at least one token.
                return params.take(&mut params.full(now), now);
            }
        }
        let mut b = params.full(now);
        let result = params.take(&mut b, now);
        self.buckets.insert(key, b);
        result
    }

    /// Takes a token from the worker's bucket of global rule `rule`.
    pub(super) fn take_global(
        &mut self,
        rule: usize,
        params: &BucketParams,
        now: Tick,
    ) -> Result<(), u32> {
        match self.global.get_mut(rule) {
            Some(slot) => params.take(slot.get_or_insert_with(|| params.full(now)), now),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_math_is_exact() {
        // 10 per second, burst 20, one worker.
        let p = BucketParams::new(10, 1000, 20, 1);
        let mut b = p.full(0);
        for _ in 0..20 {
            assert_eq!(p.take(&mut b, 0), Ok(()));
        }
        assert_eq!(p.take(&mut b, 0), Err(1));
        // One token every 100 ms.
        assert_eq!(p.take(&mut b, 99), Err(1));
        assert_eq!(p.take(&mut b, 100), Ok(()));
        assert_eq!(p.take(&mut b, 150), Err(1));
        // Full again after 2 s, never above the burst.
        assert!(p.is_full_at(&b, 2_150));
        assert!(!p.is_full_at(&b, 2_000));
        let mut fresh = b;
        p.refill(&mut fresh, 1_000_000);
        assert_eq!(fresh.units, p.capacity);
    }

    #[test]
    fn per_minute_retry_after() {
        // 6 per minute, burst 1: one token every 10 s.
        let p = BucketParams::new(6, 60_000, 1, 1);
        let mut b = p.full(0);
        assert_eq!(p.take(&mut b, 0), Ok(()));
        assert_eq!(p.take(&mut b, 0), Err(10));
        assert_eq!(p.take(&mut b, 7_500), Err(3));
        assert_eq!(p.take(&mut b, 9_999), Err(1));
        assert_eq!(p.take(&mut b, 10_000), Ok(()));
    }

    #[test]
    fn global_share_divides_rate_and_burst() {
        // 10/s, burst 10, shared by 4 workers: 2.5 tokens per second and per worker.
        let p = BucketParams::new(10, 1000, 10, 4);
        let mut b = p.full(0);
        assert_eq!(p.take(&mut b, 0), Ok(()));
        assert_eq!(p.take(&mut b, 0), Ok(()));
        assert!(p.take(&mut b, 0).is_err(), "2.5 tokens: the third fails");
        assert_eq!(p.take(&mut b, 200), Ok(()), "0.5 + 0.5 refilled");
        assert!(p.take(&mut b, 200).is_err());
        // Burst smaller than the share still lets one handshake through.
        let p = BucketParams::new(1, 1000, 1, 8);
        let mut b = p.full(0);
        assert_eq!(p.take(&mut b, 0), Ok(()));
        assert_eq!(p.take(&mut b, 0), Err(8));
    }

    #[test]
    fn connection_counts() {
        let mut s = FirewallState::new(1);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        s.on_connection_open(a);
        s.on_connection_open(mapped);
        assert_eq!(s.live_connections(a), 2);
        assert_eq!(s.live_total(), 2);
        s.on_connection_close(a);
        s.on_connection_close(mapped);
        assert_eq!(s.live_connections(a), 0);
        assert!(s.live.is_empty());
        s.on_connection_close(a);
        assert_eq!(s.live_total(), 0, "unmatched close ignored");
    }
}
