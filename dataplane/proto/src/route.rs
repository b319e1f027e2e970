//! Routing: which route a request's Host and path select.
//!
//! Each worker builds a [`RouteTable`] from its copy of the config and asks it once per
//! handshake. Order of preference: an exact host, then the longest `*.suffix`, then routes
//! with no host; among those, the longest path prefix; ties keep configuration order.

/// Which `Host` values a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// Lower-case host name without port.
    Exact(String),
    /// Lower-case suffix with its leading dot (`*.example.com` is `.example.com`).
    Suffix(String),
}

#[derive(Debug, Clone)]
struct Entry {
    host: HostPattern,
    prefix: String,
    index: usize,
}

/// Routes sorted by specificity; [`RouteTable::find`] returns the configuration index.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl RouteTable {
    /// Builds the table from `(host, path_prefix)` pairs in configuration order.
    pub fn new(routes: impl IntoIterator<Item = (HostPattern, String)>) -> Self {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .enumerate()
            .map(|(index, (host, prefix))| Entry {
                host,
                prefix,
                index,
            })
            .collect();
        // Stable sort keeps configuration order among equals.
        entries.sort_by_key(|e| {
            let host_rank = match &e.host {
                HostPattern::Exact(_) => (0, 0),
                HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
                HostPattern::Any => (2, 0),
            };
            (host_rank, usize::MAX - e.prefix.len())
        });
        RouteTable { entries }
    }

    /// The index of the route for this `Host` header value (port allowed) and request path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(host_without_port);
        self.entries
            .iter()
            .find(|e| path.starts_with(e.prefix.as_str()) && host_matches(&e.host, host))
            .map(|e| e.index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn host_matches(pattern: &HostPattern, host: Option<&str>) -> bool {
    match (pattern, host) {
        (HostPattern::Any, _) => true,
        (HostPattern::Exact(name), Some(h)) => h.eq_ignore_ascii_case(name),
        (HostPattern::Suffix(suffix), Some(h)) => {
            h.len() > suffix.len()
                && h.is_char_boundary(h.len() - suffix.len())
                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        (_, None) => false,
    }
}

/// Strips the port and a trailing dot: `Chat.Example.com.:8080` -> `Chat.Example.com`,
/// `[::1]:80` -> `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Round-robin origin choice for one route, owned by one worker (no sharing).
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// The index of the origin to try first, among `count` origins; advances the rotation.
    pub fn pick(&mut self, count: usize) -> usize {
        if count == 0 {
            return 0;
        }
        let chosen = self.next % count;
        self.next = chosen + 1;
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new([
            (HostPattern::Any, "/".to_owned()),                            // 0
            (HostPattern::Any, "/ws".to_owned()),                          // 1
            (HostPattern::Exact("chat.example.com".into()), "/".into()),   // 2
            (HostPattern::Suffix(".example.com".into()), "/".into()),      // 3
            (HostPattern::Suffix(".eu.example.com".into()), "/".into()),   // 4
            (HostPattern::Exact("chat.example.com".into()), "/ws".into()), // 5
        ])
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table();
        assert_eq!(t.find(Some("chat.example.com"), "/ws/room"), Some(5));
        assert_eq!(t.find(Some("chat.example.com"), "/other"), Some(2));
        assert_eq!(t.find(Some("news.example.com"), "/ws"), Some(3));
        assert_eq!(t.find(Some("a.eu.example.com"), "/"), Some(4));
        assert_eq!(t.find(Some("elsewhere.org"), "/ws/x"), Some(1));
        assert_eq!(t.find(Some("elsewhere.org"), "/x"), Some(0));
        assert_eq!(t.find(None, "/ws"), Some(1));
    }

    #[test]
    fn host_compare_ignores_case_port_and_trailing_dot() {
        let t = table();
        assert_eq!(t.find(Some("CHAT.example.COM:8080"), "/"), Some(2));
        assert_eq!(t.find(Some("chat.example.com.:80"), "/"), Some(2));
        // The bare suffix is not a subdomain of itself.
        assert_eq!(t.find(Some("example.com"), "/x"), Some(0));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::new([(HostPattern::Exact("a.test".into()), "/ws".into())]);
        assert_eq!(t.find(Some("a.test"), "/"), None);
        assert_eq!(t.find(Some("b.test"), "/ws"), None);
        assert_eq!(t.find(None, "/ws"), None);
        assert_eq!(t.find(Some("a.test"), "/ws"), Some(0));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("host:"), "host");
        assert_eq!(host_without_port("host"), "host");
    }

    #[test]
    fn round_robin_rotates() {
        let mut rr = RoundRobin::default();
        let picks: Vec<usize> = (0..5).map(|_| rr.pick(2)).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0]);
        assert_eq!(rr.pick(0), 0);
    }
}
