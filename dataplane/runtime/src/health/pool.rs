//! One route's pool as every worker shares it: per origin the proto health machine behind
//! a lock, and atomics mirroring what the hot path reads (live, consecutive passive
//! failures, probation, the end of an ejection), so that choosing an origin and reporting a
//! good connection take no lock.
//!
//! Implements `wsedge_proto::balance::PoolView`. Events come from the workers' connections
//! (`report`), from the `wsedge-health` thread's checks (`check_result`) and from time
//! (`tick`, also run lazily by `is_live` once an ejection is over).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use wsedge_command::ActiveCheck;
use wsedge_command::wire::{OriginHealth as OriginRow, PoolHealth};
use wsedge_proto::balance::{FULL_RAMP, PoolView};
use wsedge_proto::health::{Event, Failure, OriginHealth, Outcome, Thresholds, Transition};

use super::now_ms;

/// What a pool is configured with (replaced in place when a new configuration keeps the
/// pool's origins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolSettings {
    /// The policy as `wsedgectl origins` shows it.
    pub(crate) balance: String,
    pub(crate) thresholds: Thresholds,
    pub(crate) check: Option<ActiveCheck>,
    pub(crate) retry_after_secs: u32,
    /// A re-admitted origin ramps up over this long (0 = at once).
    pub(crate) slow_start_ms: u64,
}

/// One origin's shared state.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) addr: SocketAddr,
    health: Mutex<OriginHealth>,
    up: AtomicBool,
    /// Mirrors `OriginHealth::passive_fails`.
    fails: AtomicU32,
    probation: AtomicBool,
    /// When a passive ejection without active checks ends (`now_ms` scale); 0 = none.
    readmit_at: AtomicU64,
    /// The `wsedge-health` thread's schedule: the next check is due at (`now_ms`).
    pub(crate) next_check: AtomicU64,
    /// A check of this origin is running.
    pub(crate) checking: AtomicBool,
    /// When the last check ended (`now_ms`); 0 = never.
    last_check_at: AtomicU64,
    /// Slow start after a re-admission: from when, until when (`now_ms`); 0 = not ramping.
    ramp_from: AtomicU64,
    ramp_until: AtomicU64,
}

/// A route's pool: its name, origins and settings.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) route: String,
    pub(crate) origins: Vec<Slot>,
    settings: Mutex<PoolSettings>,
    retry_after: AtomicU32,
    /// The route's TLS to its origins (active `websocket` checks speak it too).
    tls: Mutex<Option<wsedge_tls::OriginTls>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state whole: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(route: &str, origins: &[SocketAddr], settings: PoolSettings) -> Pool {
        let now = now_ms();
        Pool {
            route: route.to_owned(),
            origins: origins
                .iter()
                .map(|&addr| Slot {
                    addr,
                    health: Mutex::new(OriginHealth::new(now)),
                    up: AtomicBool::new(true),
                    fails: AtomicU32::new(0),
                    probation: AtomicBool::new(false),
                    readmit_at: AtomicU64::new(0),
                    next_check: AtomicU64::new(now),
                    checking: AtomicBool::new(false),
                    last_check_at: AtomicU64::new(0),
                    ramp_from: AtomicU64::new(0),
                    ramp_until: AtomicU64::new(0),
                })
                .collect(),
            retry_after: AtomicU32::new(settings.retry_after_secs),
            settings: Mutex::new(settings),
            tls: Mutex::new(None),
        }
    }

    /// The route's origin TLS, for the active checks.
    pub(crate) fn tls(&self) -> Option<wsedge_tls::OriginTls> {
        lock(&self.tls).clone()
    }

    pub(crate) fn set_tls(&self, tls: Option<wsedge_tls::OriginTls>) {
        *lock(&self.tls) = tls;
    }

    pub(crate) fn settings(&self) -> PoolSettings {
        lock(&self.settings).clone()
    }

    /// Takes new settings (a configuration that kept this pool's origins).
    pub(crate) fn update(&self, settings: PoolSettings) {
        self.retry_after
            .store(settings.retry_after_secs, Ordering::Relaxed);
        *lock(&self.settings) = settings;
    }

    /// Whether this pool serves `origins` (its state may then be kept).
    pub(crate) fn same_origins(&self, origins: &[SocketAddr]) -> bool {
        self.origins.len() == origins.len()
            && self.origins.iter().zip(origins).all(|(s, a)| s.addr == *a)
    }

    /// Feeds `event` to origin `index`'s machine and mirrors the result.
    fn feed(&self, index: usize, event: Event) -> Option<Transition> {
        let slot = self.origins.get(index)?;
        let (thresholds, slow_start_ms) = {
            let settings = lock(&self.settings);
            (settings.thresholds, settings.slow_start_ms)
        };
        let now = now_ms();
        let mut health = lock(&slot.health);
        let transition = health.on(now, event, &thresholds);
        if let Some(t) = transition {
            // Slow start: a re-admitted origin (not one that was up from the start) ramps
            // up. Set before `up`, so no worker sees it up at full weight first.
            let until = if t.up && slow_start_ms > 0 {
                now.saturating_add(slow_start_ms)
            } else {
                0
            };
            slot.ramp_from.store(now, Ordering::Relaxed);
            slot.ramp_until.store(until, Ordering::Relaxed);
        }
        slot.up.store(health.is_up(), Ordering::Release);
        slot.fails.store(health.passive_fails(), Ordering::Relaxed);
        slot.probation
            .store(health.on_probation(), Ordering::Relaxed);
        slot.readmit_at.store(
            health.next_deadline().map_or(0, |d| d.max(1)),
            Ordering::Relaxed,
        );
        drop(health);
        if let Some(t) = transition {
            if t.up {
                tracing::info!(route = %self.route, origin = %slot.addr, why = %t.why, "origin up");
            } else {
                tracing::warn!(route = %self.route, origin = %slot.addr, why = %t.why, "origin down");
            }
        }
        transition
    }

    /// An active check of origin `index` ended with `result`.
    pub(crate) fn check_result(&self, index: usize, result: Result<(), Failure>) {
        if let Some(slot) = self.origins.get(index) {
            slot.last_check_at.store(now_ms().max(1), Ordering::Relaxed);
        }
        self.feed(index, Event::Check(result));
    }

    /// Ends the ejections whose time is over.
    pub(crate) fn tick(&self) {
        let now = now_ms();
        for (index, slot) in self.origins.iter().enumerate() {
            let at = slot.readmit_at.load(Ordering::Relaxed);
            if at != 0 && now >= at {
                self.feed(index, Event::Tick);
            }
        }
    }

    /// The pool as `wsedgectl origins` shows it.
    pub(crate) fn view(&self) -> PoolHealth {
        let settings = self.settings();
        let now = now_ms();
        PoolHealth {
            route: self.route.clone(),
            balance: settings.balance.clone(),
            check: settings.check.as_ref().map(describe_check),
            watched: true,
            origins: self
                .origins
                .iter()
                .map(|slot| {
                    let h = lock(&slot.health).clone();
                    let state = match (h.is_up(), h.on_probation()) {
                        (false, _) => "down",
                        (true, true) => "probation",
                        (true, false) => "up",
                    };
                    let last_at = slot.last_check_at.load(Ordering::Relaxed);
                    OriginRow {
                        addr: slot.addr.to_string(),
                        state: state.to_owned(),
                        why: h.why().to_string(),
                        since_ms: now.saturating_sub(h.since()),
                        last_check: h.last_check.map(|r| match r {
                            Ok(()) => "ok".to_owned(),
                            Err(f) => f.label(),
                        }),
                        last_check_ago_ms: (last_at != 0).then(|| now.saturating_sub(last_at)),
                        checks: h.checks,
                        checks_failed: h.checks_failed,
                        ejections: h.ejections,
                        transitions: h.transitions,
                        slow_start_pct: ramp_permille(slot, now)
                            .filter(|&p| p < FULL_RAMP)
                            .map(|p| p / 10),
                    }
                })
                .collect(),
        }
    }
}

/// `tcp every 1s`, `websocket /healthz every 5s`.
pub(crate) fn describe_check(check: &ActiveCheck) -> String {
    let what = match &check.kind {
        wsedge_command::CheckKind::Tcp => "tcp".to_owned(),
        wsedge_command::CheckKind::WebSocket { path } => format!("websocket {path}"),
    };
    format!(
        "{what} every {}",
        wsedge_command::duration::format_duration(check.interval)
    )
}

/// Slow start: origin `slot`'s share of its weight at `now` (per mille, 100 to 1000);
/// `None` when it is not ramping.
fn ramp_permille(slot: &Slot, now: u64) -> Option<u32> {
    let until = slot.ramp_until.load(Ordering::Relaxed);
    if until == 0 || now >= until || !slot.up.load(Ordering::Relaxed) {
        return None;
    }
    let from = slot.ramp_from.load(Ordering::Relaxed);
    let span = until.saturating_sub(from).max(1);
    let done = now.saturating_sub(from).min(span);
    Some(100 + u32::try_from(900 * done / span).unwrap_or(900))
}

impl PoolView for Pool {
    fn ramp_permille(&self, index: usize) -> u32 {
        match self.origins.get(index) {
            Some(slot) if slot.ramp_until.load(Ordering::Relaxed) != 0 => {
                ramp_permille(slot, now_ms()).unwrap_or(FULL_RAMP)
            }
            _ => FULL_RAMP,
        }
    }

    fn is_live(&self, index: usize) -> bool {
        let Some(slot) = self.origins.get(index) else {
            return false;
        };
        if slot.up.load(Ordering::Acquire) {
            return true;
        }
        let at = slot.readmit_at.load(Ordering::Relaxed);
        if at != 0 && now_ms() >= at {
            self.feed(index, Event::Tick);
            return slot.up.load(Ordering::Acquire);
        }
        false
    }

    fn retry_after_secs(&self) -> u32 {
        self.retry_after.load(Ordering::Relaxed).max(1)
    }

    fn report(&self, index: usize, outcome: Outcome) {
        let Some(slot) = self.origins.get(index) else {
            return;
        };
        // The common case, a good connection to a healthy origin, changes nothing.
        if outcome == Outcome::Ok
            && slot.fails.load(Ordering::Relaxed) == 0
            && !slot.probation.load(Ordering::Relaxed)
        {
            return;
        }
        self.feed(index, Event::Passive(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(active: bool) -> PoolSettings {
        PoolSettings {
            balance: "round_robin".to_owned(),
            thresholds: Thresholds {
                rise: 2,
                fall: 2,
                max_fails: 2,
                eject_ms: 100,
                active,
            },
            check: None,
            retry_after_secs: 3,
            slow_start_ms: 0,
        }
    }

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        ]
    }

    #[test]
    fn passive_failures_eject_and_time_readmits_on_probation() {
        let pool = Pool::new("r", &addrs(), settings(false));
        let refused = Outcome::Failed(Failure::ConnectFailed);
        pool.report(0, refused);
        assert!(pool.is_live(0));
        pool.report(0, refused);
        assert!(!pool.is_live(0), "two failures in a row eject");
        assert!(pool.is_live(1));
        assert_eq!(pool.view().origins[0].state, "down");
        assert_eq!(pool.view().origins[0].ejections, 1);
        std::thread::sleep(Duration::from_millis(120));
        assert!(pool.is_live(0), "the ejection is over");
        assert_eq!(pool.view().origins[0].state, "probation");
        pool.report(0, refused);
        assert!(!pool.is_live(0), "one failure on probation ejects again");
    }

    #[test]
    fn a_good_connection_resets_the_count() {
        let pool = Pool::new("r", &addrs(), settings(false));
        let bad = Outcome::Failed(Failure::Status(502));
        pool.report(1, bad);
        pool.report(1, Outcome::Ok);
        pool.report(1, bad);
        assert!(pool.is_live(1));
        assert_eq!(pool.retry_after_secs(), 3);
    }

    #[test]
    fn checks_take_down_and_bring_back() {
        let pool = Pool::new("r", &addrs(), settings(true));
        pool.check_result(0, Err(Failure::ConnectFailed));
        assert!(pool.is_live(0));
        pool.check_result(0, Err(Failure::ConnectTimeout));
        assert!(!pool.is_live(0));
        let row = &pool.view().origins[0];
        assert_eq!(row.why, "checks_failed: connect_timeout");
        assert_eq!(row.last_check.as_deref(), Some("connect_timeout"));
        assert!(row.last_check_ago_ms.is_some());
        pool.check_result(0, Ok(()));
        assert!(!pool.is_live(0));
        pool.check_result(0, Ok(()));
        assert!(pool.is_live(0));
        assert_eq!(pool.view().origins[0].transitions, 2);
    }

    #[test]
    fn a_readmitted_origin_ramps_up_over_slow_start() {
        let mut s = settings(true);
        s.slow_start_ms = 400;
        let pool = Pool::new("r", &addrs(), s);
        assert_eq!(
            pool.ramp_permille(0),
            FULL_RAMP,
            "up from the start: full weight"
        );
        pool.check_result(0, Err(Failure::ConnectFailed));
        pool.check_result(0, Err(Failure::ConnectFailed));
        pool.check_result(0, Ok(()));
        pool.check_result(0, Ok(()));
        assert!(pool.is_live(0));
        let first = pool.ramp_permille(0);
        assert!((100..400).contains(&first), "{first}");
        assert!(pool.view().origins[0].slow_start_pct.is_some());
        std::thread::sleep(Duration::from_millis(200));
        let later = pool.ramp_permille(0);
        assert!(later > first && later < FULL_RAMP, "{first} -> {later}");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(pool.ramp_permille(0), FULL_RAMP);
        assert_eq!(pool.view().origins[0].slow_start_pct, None);
    }

    #[test]
    fn same_origins_and_update() {
        let pool = Pool::new("r", &addrs(), settings(false));
        assert!(pool.same_origins(&addrs()));
        assert!(!pool.same_origins(&addrs()[..1]));
        let mut s = settings(false);
        s.retry_after_secs = 9;
        pool.update(s);
        assert_eq!(pool.retry_after_secs(), 9);
    }
}
