//! Choosing an origin of a route's pool: the balancing policy, over the origins that are live.
//!
//! A route's origins are a pool of up to [`MAX_POOL`] addresses with a [`Policy`]. Each
//! worker holds one [`Balancer`] per route (in its `Route`, never shared between threads):
//! the round-robin cursor and the worker's own count of connections per origin. Liveness
//! comes from a [`PoolView`], the process-wide health state of the pool (the dataplane's
//! health registry implements it; without one, every origin is live). The choice itself is
//! the pure [`choose`]; consistent hashing is the pure [`rendezvous`] over a request's
//! [`key_hash`], computed the same way on every worker and in every process.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
    /// The live origin that a request's key hashes to (rendezvous hashing over the origins'
    /// addresses): the same key reaches the same origin from every worker, across
    /// configuration changes that keep the pool, and moves only if that origin goes down.
    /// A request without the key goes round robin.
    ConsistentHash,
}

impl Policy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConnections => "least_connections",
            Policy::ConsistentHash => "consistent_hash",
        }
    }
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum HashKey {
    /// The client's IP address (the TCP peer's).
    #[default]
    ClientAddr,
    /// The normalized request path (without the query).
    Path,
    /// The first value of this request header (name matched without case).
    Header(String),
    /// The value of this cookie (case-sensitive name).
    Cookie(String),
    /// The raw (not percent-decoded) value of this query parameter.
    Query(String),
}

impl HashKey {
    /// Parses the configuration spelling: `client_addr`, `path`, `header:NAME`,
    /// `cookie:NAME`, `query:NAME`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
            {
                Err(format!(
                    "{kind}: needs a name of visible ASCII characters (no ';' or '=')"
                ))
            } else {
                Ok(name.to_owned())
            }
        };
        match text.split_once(':') {
            None if text == "client_addr" => Ok(HashKey::ClientAddr),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => named("header", name).map(HashKey::Header),
            Some(("cookie", name)) => named("cookie", name).map(HashKey::Cookie),
            Some(("query", name)) => named("query", name).map(HashKey::Query),
            _ => Err(
                "must be \"client_addr\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
                    .to_owned(),
            ),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientAddr => f.write_str("client_addr"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Query(n) => write!(f, "query:{n}"),
        }
    }
}

/// 64-bit FNV-1a of `bytes`, finished with splitmix64's mixer: fixed, with no per-process
/// seed, so every worker and every process agrees.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An origin's identity for hashing: its address as text (`10.0.0.1:9000`), so that its
/// keys do not move when other origins are added, removed or reordered.
pub fn origin_id(addr: &SocketAddr) -> u64 {
    hash64(addr.to_string().as_bytes())
}

/// The hash of a request's `key`, or `None` when the request does not carry it (no such
/// header, cookie or query parameter). `header(name)` is the request's first value of a
/// header.
pub fn key_hash<'h>(
    key: &HashKey,
    peer: IpAddr,
    path: &str,
    query: Option<&str>,
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Option<u64> {
    match key {
        HashKey::ClientAddr => Some(match peer {
            IpAddr::V4(a) => hash64(&a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => hash64(&v4.octets()),
                None => hash64(&a.octets()),
            },
        }),
        HashKey::Path => Some(hash64(path.as_bytes())),
        HashKey::Header(name) => header(name).map(|v| hash64(v.trim_ascii())),
        HashKey::Cookie(name) => {
            let cookies = header("cookie")?;
            cookies
                .split(|&b| b == b';')
                .filter_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
                })
                .next()
                .map(|v| hash64(v.trim_ascii()))
        }
        HashKey::Query(name) => query?
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((n, v)) if n == name => Some(v),
                None if pair == name => Some(""),
                _ => None,
            })
            .map(|v| hash64(v.as_bytes())),
    }
}

/// Smooth weighted round robin (nginx's): every candidate's current weight grows by its
/// weight, the highest is chosen and pays the total back. Over any run of picks each origin
/// gets its share, spread out (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
/// `weights`: (origin, effective weight) of the candidates; weight 0 is never chosen.
pub fn smooth_weighted(current: &mut [i64], weights: &[(usize, u32)]) -> Option<usize> {
    let total: i64 = weights.iter().map(|&(_, w)| i64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut best: Option<usize> = None;
    for &(i, w) in weights {
        if w == 0 {
            continue;
        }
        current[i] += i64::from(w);
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let chosen = best?;
    current[chosen] -= total;
    Some(chosen)
}

/// Weighted least connections: the candidate with the fewest connections per unit of
/// weight (first of equals); weight 0 is never chosen.
pub fn least_loaded(weights: &[(usize, u32)], active: impl Fn(usize) -> u32) -> Option<usize> {
    weights
        .iter()
        .filter(|&&(_, w)| w > 0)
        // a/w < b/v  <=>  a·v < b·w (exact, no division).
        .min_by(|&&(i, w), &&(j, v)| {
            (u64::from(active(i)) * u64::from(v)).cmp(&(u64::from(active(j)) * u64::from(w)))
        })
        .map(|&(i, _)| i)
}

/// Rendezvous (highest random weight) hashing: among `candidates`, the origin whose
/// `(key, id)` scores highest, with `weight` (≥ 1 to count; 0 = never) scaling its share
/// (`-weight / ln(u)`, the weighted form). Removing an origin moves only its own keys.
pub fn rendezvous(
    key: u64,
    candidates: impl Iterator<Item = usize>,
    id: impl Fn(usize) -> u64,
    weight: impl Fn(usize) -> u32,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for i in candidates {
        let w = weight(i);
        if w == 0 {
            continue;
        }
        let h = mix(key ^ id(i).rotate_left(29));
        // u in (0, 1): 53 bits, never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
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
    /// Slow start: the share (per mille, 1..=1000) of its weight origin `index` gets now; an
    /// origin just re-admitted ramps up from a tenth. 1000 = its full weight.
    fn ramp_permille(&self, _index: usize) -> u32 {
        1000
    }
}

/// Full weight of an origin, per mille of its configured weight.
pub const FULL_RAMP: u32 = 1000;

/// One route's balancing state on one worker.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    next: Cell<usize>,
    /// Connections this worker has open per origin (least connections).
    active: RefCell<Vec<u32>>,
    view: Option<Arc<dyn PoolView>>,
    /// Consistent hashing: what to hash, and each origin's identity ([`origin_id`]).
    hash_key: Option<HashKey>,
    ids: Vec<u64>,
    /// Configured weights (empty: all 1).
    weights: Vec<u32>,
    /// Smooth weighted round robin: each origin's current weight on this worker.
    current: RefCell<Vec<i64>>,
}

impl Clone for Balancer {
    /// A fresh balancer with the same policy and view: counts are per set of connections.
    fn clone(&self) -> Self {
        Balancer {
            policy: self.policy,
            next: Cell::new(0),
            active: RefCell::new(vec![0; self.active.borrow().len()]),
            view: self.view.clone(),
            hash_key: self.hash_key.clone(),
            ids: self.ids.clone(),
            weights: self.weights.clone(),
            current: RefCell::new(vec![0; self.current.borrow().len()]),
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
            hash_key: None,
            ids: (0..count as u64).map(mix).collect(),
            weights: Vec::new(),
            current: RefCell::new(vec![0; count]),
        }
    }

    /// The same balancer with these origin weights (0 = no new connections; a pool of all
    /// 1s is unweighted).
    pub fn with_weights(mut self, weights: Vec<u32>) -> Balancer {
        self.weights = if weights.iter().all(|&w| w == 1) {
            Vec::new()
        } else {
            weights
        };
        self
    }

    /// Origin `index`'s effective weight now: its weight (1 unless configured) times its
    /// slow-start ramp, in thousandths; at least 1 unless its weight is 0.
    pub fn effective_weight(&self, index: usize) -> u32 {
        let weight = self.weights.get(index).copied().unwrap_or(1);
        if weight == 0 {
            return 0;
        }
        let ramp = self
            .view
            .as_ref()
            .map_or(FULL_RAMP, |v| v.ramp_permille(index).clamp(1, FULL_RAMP));
        weight.saturating_mul(ramp).max(1)
    }

    /// The same balancer identifying origins by their addresses (consistent hashing keeps a
    /// key's origin when other origins are added or reordered).
    pub fn with_origins(mut self, origins: &[SocketAddr]) -> Balancer {
        self.ids = origins.iter().map(origin_id).collect();
        self
    }

    /// The same balancer hashing `key` (used by [`Policy::ConsistentHash`]).
    pub fn with_hash_key(mut self, key: HashKey) -> Balancer {
        self.hash_key = Some(key);
        self
    }

    /// What a consistent-hash pool hashes (`None` for the other policies).
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self.policy {
            Policy::ConsistentHash => Some(self.hash_key.as_ref().unwrap_or(&HashKey::ClientAddr)),
            _ => None,
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
        self.choose_keyed(count, tried, None)
    }

    /// As [`Balancer::choose`], for a request whose hash key is `key` (consistent hashing;
    /// without a key, or with another policy, the policy's own choice).
    pub fn choose_keyed(&self, count: usize, tried: u64, key: Option<u64>) -> Option<usize> {
        let count = count.min(MAX_POOL);
        let candidates = || (0..count).filter(move |&i| tried & (1 << i) == 0 && self.is_live(i));
        if let (Policy::ConsistentHash, Some(key)) = (self.policy, key) {
            let id = |i: usize| self.ids.get(i).copied().unwrap_or_else(|| mix(i as u64));
            return rendezvous(key, candidates(), id, |i| self.effective_weight(i));
        }
        // Weighted (configured weights, or an origin in slow start): weights decide.
        // On the stack: this runs for every new connection.
        let mut buf = [(0usize, 0u32); MAX_POOL];
        let mut n = 0;
        for i in candidates() {
            buf[n] = (i, self.effective_weight(i));
            n += 1;
        }
        let weights = &buf[..n];
        if weights.iter().any(|&(_, w)| w != FULL_RAMP) {
            return match self.policy {
                Policy::LeastConnections => {
                    let active = self.active.borrow();
                    least_loaded(weights, |i| active.get(i).copied().unwrap_or(0))
                }
                Policy::RoundRobin | Policy::ConsistentHash => {
                    let mut current = self.current.borrow_mut();
                    if current.len() < count {
                        current.resize(count, 0);
                    }
                    smooth_weighted(&mut current, weights)
                }
            };
        }
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
        // Requests without the key (and callers without one) go round robin.
        Policy::ConsistentHash => candidates.next()?,
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

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 9000)))
            .collect()
    }

    #[test]
    fn a_key_reaches_the_same_origin_from_every_balancer() {
        let origins = addrs(4);
        let a = Balancer::new(Policy::ConsistentHash, 4, None).with_origins(&origins);
        let b = a.clone();
        for k in 0..200u64 {
            let key = hash64(&k.to_le_bytes());
            assert_eq!(
                a.choose_keyed(4, 0, Some(key)),
                b.choose_keyed(4, 0, Some(key))
            );
            // Asking again (the rotation moved) changes nothing.
            assert_eq!(
                a.choose_keyed(4, 0, Some(key)),
                a.choose_keyed(4, 0, Some(key))
            );
        }
    }

    #[test]
    fn hashing_spreads_keys_and_moves_only_a_dead_origins_keys() {
        let origins = addrs(4);
        let view = Arc::new(View::default());
        let b = Balancer::new(Policy::ConsistentHash, 4, Some(view.clone())).with_origins(&origins);
        let keys: Vec<u64> = (0..4000u64).map(|k| hash64(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| b.choose_keyed(4, 0, Some(k)).expect("some"))
            .collect();
        for i in 0..4 {
            let n = before.iter().filter(|&&o| o == i).count();
            assert!((800..1200).contains(&n), "origin {i} got {n} of 4000");
        }
        view.dead.lock().expect("lock").push(2);
        for (&k, &was) in keys.iter().zip(&before) {
            let now = b.choose_keyed(4, 0, Some(k)).expect("some");
            if was == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, was, "a key of a live origin moved");
            }
        }
        // A retry after a refused connect goes to the key's next origin, the same each time.
        let k = keys[0];
        let first = before[0];
        let second = b.choose_keyed(4, 1 << first, Some(k));
        assert_eq!(second, b.choose_keyed(4, 1 << first, Some(k)));
        assert_ne!(second, Some(first));
    }

    #[test]
    fn adding_an_origin_moves_only_the_keys_it_takes() {
        let four = addrs(4);
        let mut five = four.clone();
        five.insert(1, SocketAddr::from(([10, 0, 1, 1], 9000)));
        let b4 = Balancer::new(Policy::ConsistentHash, 4, None).with_origins(&four);
        let b5 = Balancer::new(Policy::ConsistentHash, 5, None).with_origins(&five);
        let mut moved = 0;
        for k in 0..2000u64 {
            let key = hash64(&k.to_le_bytes());
            let o4 = four[b4.choose_keyed(4, 0, Some(key)).expect("some")];
            let o5 = five[b5.choose_keyed(5, 0, Some(key)).expect("some")];
            if o4 != o5 {
                assert_eq!(o5, five[1], "a key moved between two old origins");
                moved += 1;
            }
        }
        assert!(
            (250..550).contains(&moved),
            "{moved} of 2000 moved to the new origin"
        );
    }

    #[test]
    fn without_a_key_hashing_goes_round_robin() {
        let b = Balancer::new(Policy::ConsistentHash, 2, None).with_origins(&addrs(2));
        assert_eq!(b.choose(2, 0), Some(0));
        assert_eq!(b.choose(2, 0), Some(1));
        assert_eq!(b.hash_key(), Some(&HashKey::ClientAddr));
        assert_eq!(Balancer::default().hash_key(), None);
    }

    #[test]
    fn weighted_rendezvous_follows_the_weights() {
        let ids = [1u64, 2, 3];
        let w = [1u32, 3, 0];
        let mut got = [0usize; 3];
        for k in 0..8000u64 {
            let i = rendezvous(hash64(&k.to_le_bytes()), 0..3, |i| ids[i], |i| w[i]).expect("some");
            got[i] += 1;
        }
        assert_eq!(got[2], 0, "weight 0 is never chosen");
        assert!((1700..2300).contains(&got[0]), "{got:?}");
        assert!((5700..6300).contains(&got[1]), "{got:?}");
    }

    #[test]
    fn hash_keys() {
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        let none = |_: &str| None;
        let k = |key: &HashKey, path: &str, query: Option<&str>| {
            let headers: [(&str, &[u8]); 2] =
                [("x-room", b" lobby "), ("cookie", b"a=1; room=blue; b=2")];
            key_hash(key, peer, path, query, |n| {
                headers
                    .iter()
                    .find(|(h, _)| h.eq_ignore_ascii_case(n))
                    .map(|(_, v)| *v)
            })
        };
        assert_eq!(
            key_hash(&HashKey::ClientAddr, peer, "/", None, none),
            key_hash(&HashKey::ClientAddr, mapped, "/x", None, none)
        );
        assert_eq!(k(&HashKey::Path, "/a", None), Some(hash64(b"/a")));
        assert_eq!(
            k(&HashKey::Header("X-Room".into()), "/", None),
            Some(hash64(b"lobby"))
        );
        assert_eq!(k(&HashKey::Header("X-Other".into()), "/", None), None);
        assert_eq!(
            k(&HashKey::Cookie("room".into()), "/", None),
            Some(hash64(b"blue"))
        );
        assert_eq!(k(&HashKey::Cookie("roo".into()), "/", None), None);
        let q = HashKey::Query("room".into());
        assert_eq!(k(&q, "/", Some("x=1&room=red&y")), Some(hash64(b"red")));
        assert_eq!(k(&q, "/", Some("rooms=red")), None);
        assert_eq!(k(&q, "/", None), None);
        for (text, key) in [
            ("client_addr", HashKey::ClientAddr),
            ("path", HashKey::Path),
            ("header:X-Room", HashKey::Header("X-Room".into())),
            ("cookie:sid", HashKey::Cookie("sid".into())),
            ("query:room", HashKey::Query("room".into())),
        ] {
            assert_eq!(HashKey::parse(text), Ok(key.clone()));
            assert_eq!(key.to_string(), text);
        }
        for bad in ["ip", "header:", "cookie:a;b", "query", "header:a b"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        // Every worker and every build must agree: a changed function moves every room.
        assert_eq!(hash64(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"room-1"), hash64(b"room-1"));
        let origins = addrs(3);
        let b = Balancer::new(Policy::ConsistentHash, 3, None).with_origins(&origins);
        let picks: Vec<usize> = (0..8u64)
            .map(|k| {
                b.choose_keyed(3, 0, Some(hash64(&k.to_le_bytes())))
                    .expect("some")
            })
            .collect();
        assert_eq!(picks, PINNED_PICKS, "the hash or the rendezvous changed");
    }

    const PINNED_PICKS: [usize; 8] = [2, 2, 0, 2, 1, 0, 1, 0];

    #[test]
    fn smooth_weighted_round_robin_spreads_by_weight() {
        let mut current = vec![0i64; 3];
        let weights = [(0, 5), (1, 1), (2, 1)];
        let picks: Vec<usize> = (0..7)
            .map(|_| smooth_weighted(&mut current, &weights).expect("some"))
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        // Weight 0 is never chosen; nothing with weight is None.
        let mut current = vec![0i64; 2];
        for _ in 0..5 {
            assert_eq!(smooth_weighted(&mut current, &[(0, 0), (1, 2)]), Some(1));
        }
        assert_eq!(smooth_weighted(&mut current, &[(0, 0)]), None);
    }

    #[test]
    fn weighted_least_connections_divides_by_weight() {
        let load = [3u32, 1, 0];
        // 3/3 = 1 beats 1/0.5... with weights 3 and 1: 3·1 vs 1·3 tie -> first.
        assert_eq!(least_loaded(&[(0, 3), (1, 1)], |i| load[i]), Some(0));
        assert_eq!(least_loaded(&[(0, 2), (1, 1)], |i| load[i]), Some(1));
        assert_eq!(least_loaded(&[(0, 2), (2, 0)], |i| load[i]), Some(0));
    }

    #[derive(Debug)]
    struct Ramping(u32);

    impl PoolView for Ramping {
        fn is_live(&self, _: usize) -> bool {
            true
        }
        fn retry_after_secs(&self) -> u32 {
            1
        }
        fn report(&self, _: usize, _: Outcome) {}
        fn ramp_permille(&self, index: usize) -> u32 {
            if index == 1 { self.0 } else { FULL_RAMP }
        }
    }

    #[test]
    fn weights_and_slow_start_shape_each_policy() {
        let b = Balancer::new(Policy::RoundRobin, 2, None).with_weights(vec![3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| b.choose(2, 0).expect("some")).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6, "{picks:?}");
        // All 1s is plain round robin.
        let b = Balancer::new(Policy::RoundRobin, 2, None).with_weights(vec![1, 1]);
        assert_eq!((b.choose(2, 0), b.choose(2, 0)), (Some(0), Some(1)));
        // Weight 0 takes nothing new.
        let b = Balancer::new(Policy::RoundRobin, 2, None).with_weights(vec![0, 1]);
        assert!((0..4).all(|_| b.choose(2, 0) == Some(1)));
        // Origin 1 at a tenth of its weight in slow start: about 1 pick in 11.
        let b = Balancer::new(Policy::RoundRobin, 2, Some(Arc::new(Ramping(100))));
        let to_1 = (0..110).filter(|_| b.choose(2, 0) == Some(1)).count();
        assert_eq!(to_1, 10);
        assert_eq!(b.effective_weight(1), 100);
        assert_eq!(b.effective_weight(0), FULL_RAMP);
        // Least connections in slow start: the ramping origin counts as more loaded.
        let b = Balancer::new(Policy::LeastConnections, 2, Some(Arc::new(Ramping(500))));
        b.acquire(0);
        b.acquire(0);
        b.acquire(1);
        assert_eq!(b.choose(2, 0), Some(0), "2/1000 < 1/500");
    }

    #[test]
    fn policy_spellings() {
        assert_eq!(Policy::default(), Policy::RoundRobin);
        assert_eq!(Policy::RoundRobin.as_str(), "round_robin");
        assert_eq!(Policy::LeastConnections.as_str(), "least_connections");
        assert_eq!(Policy::ConsistentHash.as_str(), "consistent_hash");
    }
}
