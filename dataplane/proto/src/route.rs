//! Routing: which route a request's TLS server name (SNI), Host and path select.
//!
//! Each worker builds a [`RouteTable`] from its copy of the config and asks it once per
//! handshake. Order of preference: a route whose `sni` is the exact name, then one whose
//! `*.` wildcard covers it, then routes without `sni`; among those, an exact host, then the
//! longest `*.suffix`, then routes with no host; among those, the longest path prefix; ties
//! keep configuration order. A route with `sni` matches only a TLS connection whose client
//! sent that name: never a plain connection, never a TLS client without SNI.

/// Which `Host` values a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// Lower-case host name without port.
    Exact(String),
    /// Lower-case suffix with its leading dot (`*.example.com` is `.example.com`).
    Suffix(String),
}

/// Which TLS server names (SNI) a route accepts: the syntax and meaning of certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    /// No `sni` condition: plain connections, TLS without SNI and any name.
    Any,
    /// Lower-case DNS name, without a trailing dot.
    Exact(String),
    /// `*.example.com`, held as the lower-case parent `example.com`: one more label
    /// (`a.example.com`), neither `example.com` nor `a.b.example.com` (RFC 6125 §6.4.3, as
    /// a certificate's wildcard).
    Wildcard(String),
}

impl SniPattern {
    /// Whether a connection whose client sent `sni` (`None`: plain TCP, or TLS without SNI)
    /// is accepted. Compared case-insensitively, a trailing dot ignored.
    pub fn matches(&self, sni: Option<&str>) -> bool {
        let name = match (self, sni) {
            (SniPattern::Any, _) => return true,
            (_, None) => return false,
            (_, Some(name)) => name.strip_suffix('.').unwrap_or(name),
        };
        match self {
            SniPattern::Any => true,
            SniPattern::Exact(exact) => name.eq_ignore_ascii_case(exact),
            SniPattern::Wildcard(parent) => name.split_once('.').is_some_and(|(label, rest)| {
                !label.is_empty() && rest.eq_ignore_ascii_case(parent)
            }),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    sni: SniPattern,
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
    /// Builds the table from `(host, path_prefix)` pairs in configuration order (no route
    /// has an `sni` condition).
    pub fn new(routes: impl IntoIterator<Item = (HostPattern, String)>) -> Self {
        Self::with_sni(
            routes
                .into_iter()
                .map(|(host, prefix)| (SniPattern::Any, host, prefix)),
        )
    }

    /// Builds the table from `(sni, host, path_prefix)` in configuration order.
    pub fn with_sni(routes: impl IntoIterator<Item = (SniPattern, HostPattern, String)>) -> Self {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .enumerate()
            .map(|(index, (sni, host, prefix))| Entry {
                sni,
                host,
                prefix,
                index,
            })
            .collect();
        // Stable sort keeps configuration order among equals.
        entries.sort_by_key(|e| {
            let sni_rank = match &e.sni {
                SniPattern::Exact(_) => (0, 0),
                SniPattern::Wildcard(p) => (1, usize::MAX - p.len()),
                SniPattern::Any => (2, 0),
            };
            let host_rank = match &e.host {
                HostPattern::Exact(_) => (0, 0),
                HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
                HostPattern::Any => (2, 0),
            };
            (sni_rank, host_rank, usize::MAX - e.prefix.len())
        });
        RouteTable { entries }
    }

    /// The index of the route for a connection whose TLS client sent `sni` (`None` on a
    /// plain connection or without SNI), this `Host` header value (port allowed) and
    /// request path.
    pub fn find(&self, sni: Option<&str>, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(host_without_port);
        self.entries
            .iter()
            .find(|e| {
                path.starts_with(e.prefix.as_str())
                    && host_matches(&e.host, host)
                    && e.sni.matches(sni)
            })
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
        assert_eq!(t.find(None, Some("chat.example.com"), "/ws/room"), Some(5));
        assert_eq!(t.find(None, Some("chat.example.com"), "/other"), Some(2));
        assert_eq!(t.find(None, Some("news.example.com"), "/ws"), Some(3));
        assert_eq!(t.find(None, Some("a.eu.example.com"), "/"), Some(4));
        assert_eq!(t.find(None, Some("elsewhere.org"), "/ws/x"), Some(1));
        assert_eq!(t.find(None, Some("elsewhere.org"), "/x"), Some(0));
        assert_eq!(t.find(None, None, "/ws"), Some(1));
    }

    #[test]
    fn host_compare_ignores_case_port_and_trailing_dot() {
        let t = table();
        assert_eq!(t.find(None, Some("CHAT.example.COM:8080"), "/"), Some(2));
        assert_eq!(t.find(None, Some("chat.example.com.:80"), "/"), Some(2));
        // The bare suffix is not a subdomain of itself.
        assert_eq!(t.find(None, Some("example.com"), "/x"), Some(0));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::new([(HostPattern::Exact("a.test".into()), "/ws".into())]);
        assert_eq!(t.find(None, Some("a.test"), "/"), None);
        assert_eq!(t.find(None, Some("b.test"), "/ws"), None);
        assert_eq!(t.find(None, None, "/ws"), None);
        assert_eq!(t.find(None, Some("a.test"), "/ws"), Some(0));
    }

    /// Routes with `sni`: 0 exact, 1 wildcard, 2 exact with a path, 3 no sni, 4 host only.
    fn sni_table() -> RouteTable {
        let exact = || SniPattern::Exact("api.example.com".into());
        RouteTable::with_sni([
            (exact(), HostPattern::Any, "/".to_owned()), // 0
            (
                SniPattern::Wildcard("example.com".into()),
                HostPattern::Any,
                "/".into(),
            ), // 1
            (exact(), HostPattern::Any, "/admin".into()), // 2
            (SniPattern::Any, HostPattern::Any, "/".into()), // 3
            (
                SniPattern::Any,
                HostPattern::Exact("api.example.com".into()),
                "/ws".into(),
            ), // 4
        ])
    }

    #[test]
    fn sni_exact_beats_wildcard_beats_none() {
        let t = sni_table();
        let host = Some("api.example.com");
        assert_eq!(t.find(Some("api.example.com"), host, "/x"), Some(0));
        assert_eq!(t.find(Some("api.example.com"), host, "/admin/a"), Some(2));
        // sni before host: the exact-sni route wins over the exact-host one with a longer prefix.
        assert_eq!(t.find(Some("api.example.com"), host, "/ws"), Some(0));
        assert_eq!(
            t.find(Some("www.example.com"), Some("www.example.com"), "/"),
            Some(1)
        );
        assert_eq!(t.find(Some("other.org"), Some("other.org"), "/"), Some(3));
    }

    #[test]
    fn sni_routes_never_match_plain_connections_or_tls_without_sni() {
        let t = sni_table();
        // No SNI (plain TCP, or a TLS client that sent none): only the routes without sni.
        assert_eq!(t.find(None, Some("api.example.com"), "/ws"), Some(4));
        assert_eq!(t.find(None, Some("api.example.com"), "/admin"), Some(3));
        let only = RouteTable::with_sni([(
            SniPattern::Exact("a.test".into()),
            HostPattern::Any,
            "/".to_owned(),
        )]);
        assert_eq!(only.find(None, Some("a.test"), "/"), None);
        assert_eq!(only.find(Some("b.test"), Some("a.test"), "/"), None);
        assert_eq!(only.find(Some("a.test"), Some("a.test"), "/"), Some(0));
    }

    #[test]
    fn sni_wildcard_covers_one_label_ignoring_case_and_a_trailing_dot() {
        let w = SniPattern::Wildcard("example.com".into());
        assert!(w.matches(Some("a.example.com")));
        assert!(w.matches(Some("A.Example.COM.")));
        assert!(!w.matches(Some("example.com")));
        assert!(!w.matches(Some("a.b.example.com")));
        assert!(!w.matches(Some(".example.com")));
        assert!(!w.matches(Some("aexample.com")));
        assert!(!w.matches(None));
        let e = SniPattern::Exact("api.example.com".into());
        assert!(e.matches(Some("API.example.com.")));
        assert!(!e.matches(Some("x.api.example.com")));
        assert!(!e.matches(None));
        assert!(SniPattern::Any.matches(None));
        assert!(SniPattern::Any.matches(Some("anything")));
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
