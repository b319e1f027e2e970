//! Named network lists: IPv4/IPv6 CIDRs with optional per-entry expiry, looked up by address.
//!
//! Part of the pure firewall engine ([`crate::firewall`]) that the dataplane's connection
//! state machine consults before any origin connection is opened. A [`NetList`] keeps its
//! entries in a sorted map (for live edits and listing) and a lookup table of sorted,
//! non-overlapping address ranges (one per address family) searched by binary search: a
//! lookup in a list of 100,000 CIDRs is about 17 comparisons. Each range carries the latest
//! expiry of the entries covering it, so an expired entry stops matching at once without a
//! rebuild; edits rebuild the table and purge expired entries.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4: a peer with such an address is
//! looked up as IPv4, and an IPv6 CIDR inside `::ffff:0:0/96` is stored as the IPv4 CIDR it
//! maps. Other IPv6 CIDRs (even `::/0`) match IPv6 peers only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Expiry value meaning "never" inside the lookup table.
const NEVER: u64 = u64::MAX;

/// An IPv4 or IPv6 network: address with the host bits clear, and a prefix length.
///
/// INVARIANT: `len <= 32` (V4) or `len <= 128` (V6), and the bits after `len` are zero.
/// Ordered by family, then network address, then prefix length (shortest first), which is
/// the order the range table is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cidr {
    V4 { addr: u32, len: u8 },
    V6 { addr: u128, len: u8 },
}

/// Why a CIDR text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR (e.g. \"203.0.113.0/24\", \"2001:db8::/32\")")]
    Syntax(String),
    #[error("{0:?}: prefix length out of range")]
    PrefixLength(String),
    #[error("{0:?}: address has bits set after the prefix length (did you mean {1}?)")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// A network from an address and prefix length; fails if `len` is too long or host bits
    /// are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let cidr = match addr {
            IpAddr::V4(a) if len <= 32 => Cidr::V4 {
                addr: u32::from(a),
                len,
            },
            IpAddr::V6(a) if len <= 128 => match (a.to_ipv4_mapped(), len >= 96) {
                (Some(v4), true) => Cidr::V4 {
                    addr: u32::from(v4),
                    len: len - 96,
                },
                _ => Cidr::V6 {
                    addr: u128::from(a),
                    len,
                },
            },
            _ => return None,
        };
        (cidr.truncated() == cidr).then_some(cidr)
    }

    /// The same prefix with its host bits cleared.
    pub fn truncated(self) -> Cidr {
        match self {
            Cidr::V4 { addr, len } => Cidr::V4 {
                addr: addr & mask32(len),
                len,
            },
            Cidr::V6 { addr, len } => Cidr::V6 {
                addr: addr & mask128(len),
                len,
            },
        }
    }

    /// True if `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self, Key::of(ip)) {
            (Cidr::V4 { addr, len }, Key::V4(a)) => a & mask32(len) == addr,
            (Cidr::V6 { addr, len }, Key::V6(a)) => a & mask128(len) == addr,
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `"addr/len"` or a bare address (a /32 or /128).
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if len > max {
            return Err(CidrError::PrefixLength(text.to_owned()));
        }
        match Cidr::new(addr, len) {
            Some(c) => Ok(c),
            None => {
                let truncated = match addr {
                    IpAddr::V4(a) => Cidr::V4 {
                        addr: u32::from(a),
                        len,
                    },
                    IpAddr::V6(a) => Cidr::V6 {
                        addr: u128::from(a),
                        len,
                    },
                }
                .truncated();
                Err(CidrError::HostBits(text.to_owned(), truncated))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(addr)),
            Cidr::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(addr)),
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// An address as the lookup tables index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    V4(u32),
    V6(u128),
}

impl Key {
    fn of(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(u32::from(v4)),
                None => Key::V6(u128::from(a)),
            },
        }
    }
}

/// Unsigned address integers the range table is generic over.
trait Bits: Copy + Ord + fmt::Debug {
    fn inc(self) -> Option<Self>;
    fn dec(self) -> Option<Self>;
}

impl Bits for u32 {
    fn inc(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn dec(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

impl Bits for u128 {
    fn inc(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn dec(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

/// Sorted, non-overlapping inclusive ranges, each with the latest expiry covering it.
///
/// INVARIANT: `starts` is strictly increasing, `starts.len() == rest.len()`, and
/// `starts[i] <= rest[i].0 < starts[i + 1]`.
#[derive(Debug, Clone)]
struct RangeTable<T> {
    starts: Vec<T>,
    /// `(end, expires)` of each range; `expires == NEVER` for entries without expiry.
    rest: Vec<(T, u64)>,
}

impl<T: Bits> Default for RangeTable<T> {
    fn default() -> Self {
        RangeTable {
            starts: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T: Bits> RangeTable<T> {
    /// Builds from `(start, end, expires)` intervals sorted by start ascending, end
    /// descending, where any two are either disjoint or nested (true of CIDRs).
    fn build(intervals: impl Iterator<Item = (T, T, u64)>) -> Self {
        let mut table = RangeTable::default();
        // Open intervals, outermost first: (end, effective expiry = max with ancestors).
        let mut stack: Vec<(T, u64)> = Vec::new();
        // Next address not yet emitted; None once the whole space up to MAX is emitted.
        let mut pos: Option<T> = None;
        for (start, end, expires) in intervals {
            // Close the open intervals that end before this one starts.
            while let Some(&(top_end, top_exp)) = stack.last() {
                if top_end >= start {
                    break;
                }
                if let Some(p) = pos {
                    table.push(p, top_end, top_exp);
                }
                pos = top_end.inc();
                stack.pop();
            }
            let inherited = match stack.last() {
                Some(&(_, top_exp)) => {
                    // The part of the enclosing interval before this one.
                    if let (Some(p), Some(before)) = (pos, start.dec())
                        && p <= before
                    {
                        table.push(p, before, top_exp);
                    }
                    top_exp
                }
                None => 0,
            };
            pos = Some(start);
            stack.push((end, expires.max(inherited)));
        }
        while let Some((top_end, top_exp)) = stack.pop() {
            if let Some(p) = pos
                && p <= top_end
            {
                table.push(p, top_end, top_exp);
            }
            pos = top_end.inc();
        }
        table
    }

    /// Appends a range after the last, merging with it when adjacent with equal expiry.
    fn push(&mut self, start: T, end: T, expires: u64) {
        if let Some(last) = self.rest.last_mut()
            && last.1 == expires
            && last.0.inc() == Some(start)
        {
            last.0 = end;
            return;
        }
        self.starts.push(start);
        self.rest.push((end, expires));
    }

    /// The expiry of the range holding `key`, if any.
    fn find(&self, key: T) -> Option<u64> {
        // Index of the first start > key; the candidate is the one before it.
        let i = self.starts.partition_point(|&s| s <= key).checked_sub(1)?;
        let &(end, expires) = self.rest.get(i)?;
        (key <= end).then_some(expires)
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// A named list of networks, each with an optional expiry (unix seconds).
///
/// Edits ([`NetList::add`], [`NetList::remove`]) rebuild the lookup table (O(n), a few
/// milliseconds at 100,000 entries) and purge expired entries; lookups
/// ([`NetList::contains`]) are a binary search and allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct NetList {
    name: String,
    /// Entry -> expiry (unix seconds; `None` = never).
    entries: BTreeMap<Cidr, Option<u64>>,
    v4: RangeTable<u32>,
    v6: RangeTable<u128>,
}

impl NetList {
    /// A list from entries; a CIDR given twice keeps the last expiry. Entries already expired
    /// are kept until the next edit (they never match).
    pub fn new(
        name: impl Into<String>,
        entries: impl IntoIterator<Item = (Cidr, Option<u64>)>,
    ) -> NetList {
        let mut list = NetList {
            name: name.into(),
            entries: entries.into_iter().collect(),
            v4: RangeTable::default(),
            v6: RangeTable::default(),
        };
        list.rebuild();
        list
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `ip` is inside an entry that has not expired at `unix_now` (an entry expires
    /// when `unix_now >= expires`).
    pub fn contains(&self, ip: IpAddr, unix_now: u64) -> bool {
        let expires = match Key::of(ip) {
            Key::V4(a) => self.v4.find(a),
            Key::V6(a) => self.v6.find(a),
        };
        expires.is_some_and(|e| unix_now < e)
    }

    /// Adds an entry, or changes the expiry of an existing one; purges expired entries.
    /// Returns false if `expires` is already past (nothing added).
    pub fn add(&mut self, cidr: Cidr, expires: Option<u64>, unix_now: u64) -> bool {
        let live = expires.is_none_or(|e| unix_now < e);
        if live {
            self.entries.insert(cidr, expires);
        }
        self.purge_and_rebuild(unix_now);
        live
    }

    /// Removes an entry (exactly this CIDR); purges expired entries. Returns true if it was
    /// present and not expired.
    pub fn remove(&mut self, cidr: Cidr, unix_now: u64) -> bool {
        let removed = self
            .entries
            .remove(&cidr)
            .is_some_and(|e| e.is_none_or(|e| unix_now < e));
        self.purge_and_rebuild(unix_now);
        removed
    }

    /// Drops the entries expired at `unix_now`; returns how many.
    pub fn purge_expired(&mut self, unix_now: u64) -> usize {
        let before = self.entries.len();
        self.purge_and_rebuild(unix_now);
        before - self.entries.len()
    }

    /// The entries still live at `unix_now`, sorted (IPv4 first), with their expiry.
    pub fn entries(&self, unix_now: u64) -> impl Iterator<Item = (Cidr, Option<u64>)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| e.is_none_or(|e| unix_now < e))
            .map(|(c, e)| (*c, *e))
    }

    /// Number of stored entries (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of ranges in the lookup tables (adjacent networks merge).
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn purge_and_rebuild(&mut self, unix_now: u64) {
        self.entries.retain(|_, e| e.is_none_or(|e| unix_now < e));
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let expiry = |e: &Option<u64>| e.unwrap_or(NEVER);
        // BTreeMap order = family, start ascending, prefix length ascending (end descending).
        self.v4 = RangeTable::build(self.entries.iter().filter_map(|(c, e)| match *c {
            Cidr::V4 { addr, len } => Some((addr, addr | !mask32(len), expiry(e))),
            Cidr::V6 { .. } => None,
        }));
        self.v6 = RangeTable::build(self.entries.iter().filter_map(|(c, e)| match *c {
            Cidr::V6 { addr, len } => Some((addr, addr | !mask128(len), expiry(e))),
            Cidr::V4 { .. } => None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(
            cidr("203.0.113.0/24"),
            Cidr::V4 {
                addr: 0xcb00_7100,
                len: 24
            }
        );
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        // An IPv4-mapped IPv6 network is stored as IPv4.
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert!(matches!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits(_, c)) if c == cidr("10.0.0.0/8")
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixLength(_))
        ));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "x/8",
            "::/1290",
            "10/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn v4_v6_and_mapped_lookup() {
        let list = NetList::new(
            "t",
            [
                (cidr("203.0.113.0/24"), None),
                (cidr("2001:db8::/32"), None),
                (cidr("198.51.100.7"), None),
            ],
        );
        assert!(list.contains(ip("203.0.113.0"), 0));
        assert!(list.contains(ip("203.0.113.255"), 0));
        assert!(!list.contains(ip("203.0.114.0"), 0));
        assert!(!list.contains(ip("203.0.112.255"), 0));
        assert!(list.contains(ip("198.51.100.7"), 0));
        assert!(!list.contains(ip("198.51.100.8"), 0));
        assert!(list.contains(ip("::ffff:203.0.113.9"), 0));
        assert!(list.contains(ip("2001:db8:ffff::1"), 0));
        assert!(!list.contains(ip("2001:db9::1"), 0));
        // IPv4-compatible (not mapped) addresses are IPv6.
        assert!(!list.contains(ip("::203.0.113.9"), 0));
        assert!(cidr("203.0.113.0/24").contains(ip("::ffff:203.0.113.1")));
    }

    #[test]
    fn whole_space_and_edges() {
        let list = NetList::new("t", [(cidr("0.0.0.0/0"), None), (cidr("::/0"), None)]);
        assert!(list.contains(ip("0.0.0.0"), 0));
        assert!(list.contains(ip("255.255.255.255"), 0));
        assert!(list.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 0));
        let list = NetList::new("t", [(cidr("255.255.255.255/32"), None)]);
        assert!(list.contains(ip("255.255.255.255"), 0));
        assert!(!list.contains(ip("255.255.255.254"), 0));
        assert!(!NetList::new("t", []).contains(ip("1.2.3.4"), 0));
    }

    #[test]
    fn nested_entries_keep_the_latest_expiry() {
        let list = NetList::new(
            "t",
            [
                (cidr("10.0.0.0/8"), Some(100)),
                (cidr("10.1.0.0/16"), Some(200)),
                (cidr("10.1.2.0/24"), None),
                (cidr("10.200.0.0/16"), Some(50)),
            ],
        );
        assert!(list.contains(ip("10.0.0.1"), 99));
        assert!(!list.contains(ip("10.0.0.1"), 100));
        assert!(list.contains(ip("10.1.0.1"), 150));
        assert!(!list.contains(ip("10.1.0.1"), 200));
        assert!(list.contains(ip("10.1.2.3"), u64::MAX - 1));
        assert!(list.contains(ip("10.1.3.0"), 199));
        assert!(list.contains(ip("10.200.0.1"), 99), "outer /8 still live");
        assert!(!list.contains(ip("10.200.0.1"), 100));
        assert!(list.contains(ip("10.255.255.255"), 0));
        assert!(!list.contains(ip("11.0.0.0"), 0));
    }

    #[test]
    fn adjacent_ranges_merge() {
        let list = NetList::new(
            "t",
            [
                (cidr("10.0.0.0/25"), None),
                (cidr("10.0.0.128/25"), None),
                (cidr("10.0.1.0/24"), Some(5)),
            ],
        );
        assert_eq!(list.range_count(), 2);
        assert!(list.contains(ip("10.0.0.200"), 0));
    }

    #[test]
    fn live_edits_and_expiry() {
        let mut list = NetList::new("blocked", [(cidr("192.0.2.0/24"), Some(1_000))]);
        assert!(list.contains(ip("192.0.2.1"), 999));
        assert!(!list.contains(ip("192.0.2.1"), 1_000));
        assert_eq!(list.entries(999).count(), 1);
        assert_eq!(list.entries(1_000).count(), 0);
        assert!(list.add(cidr("2001:db8::/48"), None, 1_000));
        assert_eq!(list.len(), 1, "expired entry purged on edit");
        assert!(list.contains(ip("2001:db8::5"), 1_000));
        assert!(!list.add(cidr("198.51.100.0/24"), Some(999), 1_000));
        assert!(!list.contains(ip("198.51.100.1"), 0));
        // Changing an expiry replaces it.
        assert!(list.add(cidr("2001:db8::/48"), Some(2_000), 1_000));
        assert_eq!(
            list.entries(1_000).collect::<Vec<_>>(),
            vec![(cidr("2001:db8::/48"), Some(2_000))]
        );
        assert!(
            !list.remove(cidr("2001:db8::/32"), 1_000),
            "exact CIDR only"
        );
        assert!(list.remove(cidr("2001:db8::/48"), 1_000));
        assert!(!list.contains(ip("2001:db8::5"), 1_000));
        assert!(list.is_empty());
        let mut list = NetList::new(
            "t",
            [(cidr("1.0.0.0/8"), Some(10)), (cidr("2.0.0.0/8"), None)],
        );
        assert_eq!(list.purge_expired(10), 1);
    }

    /// The range table against a linear scan over random nested/disjoint networks.
    #[test]
    fn differential_against_linear_scan() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut entries = Vec::new();
        for _ in 0..400 {
            let r = next();
            // Cluster addresses in 10.0.0.0/16 so networks nest and touch.
            let addr = 0x0a00_0000 | (r as u32 & 0xffff);
            let len = 16 + (r >> 32) as u8 % 17;
            let c = Cidr::V4 { addr, len }.truncated();
            let exp = match (r >> 40) % 3 {
                0 => None,
                _ => Some((r >> 48) % 100),
            };
            entries.push((c, exp));
        }
        let list = NetList::new("t", entries.iter().copied());
        let map: BTreeMap<Cidr, Option<u64>> = entries.into_iter().collect();
        for _ in 0..20_000 {
            let r = next();
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (r as u32 & 0x1_ffff)));
            let now = (r >> 32) % 110;
            let want = map
                .iter()
                .any(|(c, e)| c.contains(a) && e.is_none_or(|e| now < e));
            assert_eq!(list.contains(a, now), want, "{a} at {now}");
        }
    }
}
