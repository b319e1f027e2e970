//! Choosing an origin of a route's pool: the balancing policy, over the origins that are live.
//!
//! A route's origins are a pool of up to [`MAX_POOL`] addresses with a [`Policy`]. Each
//! worker holds one [`Balancer`] per route (in its `Route`, never shared between threads):
//! the round-robin cursor and the worker's own count of connections per origin. Liveness
//! comes from a [`PoolView`], the process-wide health state of the pool (the dataplane's
//! health registry implements it; without one, every origin is live). The choice itself is
//! the pure [`choose`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;

use crate::health::Outcome;

/// The most origins one pool may have (a connection's tried origins are a 64-bit mask).
pub const MAX_POOL: usize = 64;

/// How a pool spreads new connections over its live origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Each live origin in turn (the default).
    #[default]
    RoundRobin,
    /// The live origin with the fewest connections this worker has open to it (ties in
    /// turn). Per worker: with W workers each balances its own share, which evens out
    /// because the listeners spread clients over the workers.
    LeastConnections,
}

impl Policy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConnections => "least_connections",
        }
    }
}

/// The process-wide health of one pool, as a worker sees it.
pub trait PoolView: fmt::Debug + Send + Sync {
    /// Whether origin `index` may be chosen for a new connection.
    fn is_live(&self, index: usize) -> bool;
    /// When no origin is live: seconds a client should wait before trying again
    /// (`Retry-After`), at least 1.
    fn retry_after_secs(&self) -> u32;
    /// What a connection saw of origin `index` (applied by the driver from the session's
    /// `OriginOutcome` output; the session itself never calls it).
    fn report(&self, index: usize, outcome: Outcome);
}

/// One route's balancing state on one worker.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    next: Cell<usize>,
    /// Connections this worker has open per origin (least connections).
    active: RefCell<Vec<u32>>,
    view: Option<Arc<dyn PoolView>>,
}

impl Clone for Balancer {
    /// A fresh balancer with the same policy and view: counts are per set of connections.
    fn clone(&self) -> Self {
        Balancer {
            policy: self.policy,
            next: Cell::new(0),
            active: RefCell::new(vec![0; self.active.borrow().len()]),
            view: self.view.clone(),
        }
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer::new(Policy::RoundRobin, 0, None)
    }
}

impl Balancer {
    /// A balancer over `count` origins; `view` = the pool's shared health (none: all live).
    pub fn new(policy: Policy, count: usize, view: Option<Arc<dyn PoolView>>) -> Balancer {
        Balancer {
            policy,
            next: Cell::new(0),
            active: RefCell::new(vec![0; count]),
            view,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The shared health of the pool, if it has one.
    pub fn view(&self) -> Option<&Arc<dyn PoolView>> {
        self.view.as_ref()
    }

    /// Whether origin `index` is live (always, without a view).
    pub fn is_live(&self, index: usize) -> bool {
        self.view.as_ref().is_none_or(|v| v.is_live(index))
    }

    /// The origin for a new connection among `count`, not one of `tried` (bit i = origin i);
    /// `None` when no untried origin is live. Advances the rotation.
    pub fn choose(&self, count: usize, tried: u64) -> Option<usize> {
        let active = self.active.borrow();
        let (chosen, next) = choose(
            self.policy,
            count,
            self.next.get(),
            tried,
            |i| self.is_live(i),
            |i| active.get(i).copied().unwrap_or(0),
        )?;
        self.next.set(next);
        Some(chosen)
    }

    /// A connection of this worker now uses origin `index`.
    pub fn acquire(&self, index: usize) {
        let mut active = self.active.borrow_mut();
        if index >= active.len() {
            active.resize(index + 1, 0);
        }
        active[index] += 1;
    }

    /// A connection counted by [`Balancer::acquire`] no longer uses origin `index`.
    pub fn release(&self, index: usize) {
        if let Some(n) = self.active.borrow_mut().get_mut(index) {
            *n = n.saturating_sub(1);
        }
    }

    /// Connections this worker has open to origin `index`.
    pub fn active(&self, index: usize) -> u32 {
        self.active.borrow().get(index).copied().unwrap_or(0)
    }

    /// `Retry-After` seconds when no origin is live.
    pub fn retry_after_secs(&self) -> u32 {
        self.view
            .as_ref()
            .map_or(1, |v| v.retry_after_secs().max(1))
    }
}

/// The pure choice: among origins `0..count` that are `live` and not in `tried`, the one
/// `policy` picks, starting the rotation at `cursor`. Returns it and the next cursor.
pub fn choose(
    policy: Policy,
    count: usize,
    cursor: usize,
    tried: u64,
    live: impl Fn(usize) -> bool,
    active: impl Fn(usize) -> u32,
) -> Option<(usize, usize)> {
    let count = count.min(MAX_POOL);
    if count == 0 {
        return None;
    }
    let start = cursor % count;
    let mut candidates = (0..count)
        .map(|k| (start + k) % count)
        .filter(|&i| tried & (1 << i) == 0 && live(i));
    let chosen = match policy {
        Policy::RoundRobin => candidates.next()?,
        // `min_by_key` keeps the first of equals: ties go in turn from the cursor.
        Policy::LeastConnections => candidates.min_by_key(|&i| active(i))?,
    };
    Some((chosen, chosen + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn all(_: usize) -> bool {
        true
    }

    fn idle(_: usize) -> u32 {
        0
    }

    fn picks(policy: Policy, n: usize, live: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let mut cursor = 0;
        (0..n)
            .map(|_| {
                let (i, next) = choose(policy, 3, cursor, 0, live, idle).expect("a choice");
                cursor = next;
                i
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        assert_eq!(picks(Policy::RoundRobin, 6, all), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_dead_origins() {
        assert_eq!(picks(Policy::RoundRobin, 4, |i| i != 1), [0, 2, 0, 2]);
        assert_eq!(picks(Policy::RoundRobin, 3, |i| i == 2), [2, 2, 2]);
    }

    #[test]
    fn nothing_live_is_none() {
        assert_eq!(choose(Policy::RoundRobin, 3, 0, 0, |_| false, idle), None);
        assert_eq!(
            choose(Policy::LeastConnections, 3, 0, 0, |_| false, idle),
            None
        );
        assert_eq!(choose(Policy::RoundRobin, 0, 0, 0, all, idle), None);
    }

    #[test]
    fn tried_origins_are_skipped() {
        assert_eq!(
            choose(Policy::RoundRobin, 3, 0, 0b001, all, idle),
            Some((1, 2))
        );
        assert_eq!(
            choose(Policy::RoundRobin, 3, 0, 0b011, all, idle),
            Some((2, 3))
        );
        assert_eq!(choose(Policy::RoundRobin, 3, 0, 0b111, all, idle), None);
        // Tried and dead together leave nothing.
        assert_eq!(
            choose(Policy::RoundRobin, 2, 0, 0b01, |i| i == 0, idle),
            None
        );
    }

    #[test]
    fn least_connections_takes_the_least_loaded_live_one() {
        let load = [5u32, 2, 2, 0];
        let active = |i: usize| load[i];
        assert_eq!(
            choose(Policy::LeastConnections, 4, 0, 0, all, active),
            Some((3, 4))
        );
        // Origin 3 dead: a tie between 1 and 2 goes in turn from the cursor.
        let live = |i: usize| i != 3;
        assert_eq!(
            choose(Policy::LeastConnections, 4, 0, 0, live, active),
            Some((1, 2))
        );
        assert_eq!(
            choose(Policy::LeastConnections, 4, 2, 0, live, active),
            Some((2, 3))
        );
    }

    #[derive(Debug, Default)]
    struct View {
        dead: Mutex<Vec<usize>>,
        reports: Mutex<Vec<(usize, Outcome)>>,
    }

    impl PoolView for View {
        fn is_live(&self, index: usize) -> bool {
            !self.dead.lock().expect("lock").contains(&index)
        }
        fn retry_after_secs(&self) -> u32 {
            7
        }
        fn report(&self, index: usize, outcome: Outcome) {
            self.reports.lock().expect("lock").push((index, outcome));
        }
    }

    #[test]
    fn a_balancer_follows_its_view() {
        let view = Arc::new(View::default());
        let b = Balancer::new(Policy::RoundRobin, 2, Some(view.clone()));
        assert_eq!(b.choose(2, 0), Some(0));
        assert_eq!(b.choose(2, 0), Some(1));
        view.dead.lock().expect("lock").push(0);
        assert!(!b.is_live(0));
        assert_eq!(b.choose(2, 0), Some(1));
        assert_eq!(b.choose(2, 0), Some(1));
        view.dead.lock().expect("lock").push(1);
        assert_eq!(b.choose(2, 0), None);
        assert_eq!(b.retry_after_secs(), 7);
    }

    #[test]
    fn without_a_view_all_are_live_and_retry_after_is_one() {
        let b = Balancer::new(Policy::RoundRobin, 2, None);
        assert!(b.is_live(0) && b.is_live(1));
        assert_eq!(b.retry_after_secs(), 1);
    }

    #[test]
    fn least_connections_counts_this_workers_connections() {
        let b = Balancer::new(Policy::LeastConnections, 2, None);
        let first = b.choose(2, 0).expect("choice");
        b.acquire(first);
        let second = b.choose(2, 0).expect("choice");
        assert_ne!(first, second);
        b.acquire(second);
        b.acquire(second);
        assert_eq!(b.choose(2, 0), Some(first));
        b.release(second);
        b.release(second);
        b.release(second);
        assert_eq!(b.active(second), 0, "never below zero");
        assert_eq!(b.active(first), 1);
        // A clone starts with its own counts.
        assert_eq!(b.clone().active(first), 0);
    }

    #[test]
    fn policy_spellings() {
        assert_eq!(Policy::default(), Policy::RoundRobin);
        assert_eq!(Policy::RoundRobin.as_str(), "round_robin");
        assert_eq!(Policy::LeastConnections.as_str(), "least_connections");
    }
}
