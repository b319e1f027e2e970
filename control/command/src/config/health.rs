//! A route's origin pool beyond its addresses: the balancing policy (`balance`) and the
//! `[route.health]` table (active checks, rise/fall, passive ejection). The counts validate
//! straight into `wsedge_proto::health::Thresholds` and the policy into
//! `wsedge_proto::balance::Policy`: the model the dataplane runs is this one.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
pub use wsedge_proto::balance::{HashKey, Policy};
use wsedge_proto::health::Thresholds;

use super::Validator;
use crate::error::ConfigError;

/// A route's origin health settings (`[route.health]`). Without the table the route's
/// origins are always live, as before pools had health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks; `None` = passive ejection only.
    pub check: Option<ActiveCheck>,
    /// `rise`, `fall`, `max_fails`, `eject_time` (`active` set when `check` is).
    pub thresholds: Thresholds,
    /// A re-admitted origin's share ramps from a tenth to its full weight over this long
    /// (`slow_start`); zero = at once.
    pub slow_start: Duration,
}

impl HealthConfig {
    /// `Retry-After` seconds to answer when no origin is live: the soonest an origin can be
    /// back (`rise` × `interval` with checks, `eject_time` without), at least 1.
    pub fn retry_after_secs(&self) -> u32 {
        let wait = match &self.check {
            Some(c) => c.interval.saturating_mul(self.thresholds.rise.max(1)),
            None => Duration::from_millis(self.thresholds.eject_ms),
        };
        u32::try_from(wait.as_millis().div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// One pool's active check: run against every origin every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// The whole check (connect, and the answer for a WebSocket check) must end within this.
    pub timeout: Duration,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// A WebSocket handshake to `path` is answered 101 with the right accept value.
    WebSocket { path: String },
}

impl CheckKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::WebSocket { .. } => "websocket",
        }
    }
}

/// `balance` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawPolicy {
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

impl From<RawPolicy> for Policy {
    fn from(raw: RawPolicy) -> Self {
        match raw {
            RawPolicy::RoundRobin => Policy::RoundRobin,
            RawPolicy::LeastConnections => Policy::LeastConnections,
            RawPolicy::ConsistentHash => Policy::ConsistentHash,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawCheck {
    None,
    Tcp,
    Websocket,
}

/// `[route.health]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    check: Option<Spanned<RawCheck>>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u64>>,
    fall: Option<Spanned<u64>>,
    max_fails: Option<Spanned<u64>>,
    eject_time: Option<Spanned<String>>,
    slow_start: Option<Spanned<String>>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Validator<'_> {
    /// Validates route `index`'s `[route.health]` table (`span` locates the route for errors
    /// about the route as a whole).
    pub(super) fn health(
        &self,
        index: usize,
        raw: Spanned<RawHealth>,
        function: bool,
    ) -> Result<HealthConfig, ConfigError> {
        let field = |name: &str| format!("route[{index}].health.{name}");
        let span = raw.span();
        if function {
            return Err(self.invalid(
                span,
                &field("check"),
                "a function route has no origins to check",
            ));
        }
        let raw = raw.into_inner();
        let count = |value: &Option<Spanned<u64>>, name: &str, min: u64, default: u32| match value {
            None => Ok(default),
            Some(v) if (min..=1000).contains(v.get_ref()) => Ok(*v.get_ref() as u32),
            Some(v) => Err(self.invalid(v.span(), &field(name), format!("must be {min} to 1000"))),
        };
        let defaults = Thresholds::default();
        let rise = count(&raw.rise, "rise", 1, defaults.rise)?;
        let fall = count(&raw.fall, "fall", 1, defaults.fall)?;
        let max_fails = count(&raw.max_fails, "max_fails", 0, defaults.max_fails)?;
        let eject = self
            .duration(raw.eject_time.clone(), &field("eject_time"))?
            .unwrap_or(Duration::from_millis(defaults.eject_ms));
        if eject < Duration::from_millis(100) {
            let at = raw.eject_time.as_ref().map_or(span.clone(), Spanned::span);
            return Err(self.invalid(at, &field("eject_time"), "must be at least 100ms"));
        }
        let slow_start = self
            .duration(raw.slow_start.clone(), &field("slow_start"))?
            .unwrap_or(Duration::ZERO);
        if slow_start > Duration::from_secs(3600) {
            let at = raw.slow_start.as_ref().map_or(span.clone(), Spanned::span);
            return Err(self.invalid(at, &field("slow_start"), "must be at most 1h"));
        }
        let kind = raw.check.as_ref().map_or(RawCheck::None, |c| *c.get_ref());
        let check_span = raw.check.as_ref().map_or(span.clone(), Spanned::span);
        let check = match kind {
            RawCheck::None => {
                for (name, present) in [
                    ("path", raw.path.as_ref().map(Spanned::span)),
                    ("interval", raw.interval.as_ref().map(Spanned::span)),
                    ("timeout", raw.timeout.as_ref().map(Spanned::span)),
                    ("rise", raw.rise.as_ref().map(Spanned::span)),
                    ("fall", raw.fall.as_ref().map(Spanned::span)),
                ] {
                    if let Some(at) = present {
                        return Err(self.invalid(
                            at,
                            &field(name),
                            "applies to active checks: set check = \"tcp\" or \"websocket\"",
                        ));
                    }
                }
                None
            }
            RawCheck::Tcp | RawCheck::Websocket => {
                let interval = self
                    .duration(raw.interval.clone(), &field("interval"))?
                    .unwrap_or(DEFAULT_INTERVAL);
                let interval_span = raw
                    .interval
                    .as_ref()
                    .map_or(check_span.clone(), Spanned::span);
                if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
                    return Err(self.invalid(
                        interval_span,
                        &field("interval"),
                        "must be 100ms to 1h",
                    ));
                }
                let timeout = self
                    .duration(raw.timeout.clone(), &field("timeout"))?
                    .unwrap_or(DEFAULT_TIMEOUT.min(interval));
                if timeout.is_zero() || timeout > interval {
                    let at = raw
                        .timeout
                        .as_ref()
                        .map_or(check_span.clone(), Spanned::span);
                    return Err(self.invalid(
                        at,
                        &field("timeout"),
                        "must be more than 0 and at most the interval",
                    ));
                }
                let kind = if kind == RawCheck::Tcp {
                    if let Some(p) = &raw.path {
                        return Err(self.invalid(
                            p.span(),
                            &field("path"),
                            "applies to check = \"websocket\" only",
                        ));
                    }
                    CheckKind::Tcp
                } else {
                    let path = raw
                        .path
                        .clone()
                        .map_or_else(|| "/".to_owned(), Spanned::into_inner);
                    let path_span = raw.path.as_ref().map_or(check_span.clone(), Spanned::span);
                    if !path.starts_with('/')
                        || path
                            .bytes()
                            .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
                    {
                        return Err(self.invalid(
                            path_span,
                            &field("path"),
                            "must start with '/' and hold no spaces, control or non-ASCII characters",
                        ));
                    }
                    CheckKind::WebSocket { path }
                };
                Some(ActiveCheck {
                    kind,
                    interval,
                    timeout,
                })
            }
        };
        Ok(HealthConfig {
            slow_start,
            thresholds: Thresholds {
                rise,
                fall,
                max_fails,
                eject_ms: u64::try_from(eject.as_millis()).unwrap_or(u64::MAX),
                active: check.is_some(),
            },
            check,
        })
    }

    /// Route `index`'s `hash_key`: what `balance = "consistent_hash"` hashes (default the
    /// client address); an error with any other policy.
    pub(super) fn hash_key(
        &self,
        index: usize,
        balance: Policy,
        raw: Option<Spanned<String>>,
    ) -> Result<Option<HashKey>, ConfigError> {
        let field = format!("route[{index}].hash_key");
        match (balance, raw) {
            (Policy::ConsistentHash, None) => Ok(Some(HashKey::ClientAddr)),
            (Policy::ConsistentHash, Some(text)) => HashKey::parse(text.get_ref())
                .map(Some)
                .map_err(|m| self.invalid(text.span(), &field, m)),
            (_, None) => Ok(None),
            (_, Some(text)) => Err(self.invalid(
                text.span(),
                &field,
                "applies to balance = \"consistent_hash\" only",
            )),
        }
    }

    /// Route `index`'s `weights`: one per origin, 0 to 1000, not all 0; empty when absent.
    pub(super) fn weights(
        &self,
        index: usize,
        raw: Option<Spanned<Vec<Spanned<u64>>>>,
        origins: usize,
    ) -> Result<Vec<u32>, ConfigError> {
        let field = format!("route[{index}].weights");
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let span = raw.span();
        let list = raw.into_inner();
        if list.len() != origins {
            return Err(self.invalid(
                span,
                &field,
                format!(
                    "{} weights for {origins} origins: give one per origin",
                    list.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(list.len());
        for w in &list {
            if *w.get_ref() > 1000 {
                return Err(self.invalid(w.span(), &field, "each must be 0 to 1000"));
            }
            out.push(*w.get_ref() as u32);
        }
        if out.iter().all(|&w| w == 0) {
            return Err(self.invalid(span, &field, "all 0: no origin would get a connection"));
        }
        Ok(out)
    }

    /// Range of a route for errors about its pool as a whole.
    pub(super) fn pool_too_big(
        &self,
        span: Range<usize>,
        index: usize,
        count: usize,
    ) -> ConfigError {
        self.invalid(
            span,
            &format!("route[{index}].origins"),
            format!(
                "{count} origins: a pool holds at most {}",
                wsedge_proto::balance::MAX_POOL
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const ROUTE: &str = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";

    fn route(extra: &str) -> Result<crate::Route, String> {
        Config::from_toml(&format!("{ROUTE}{extra}"), "edge.toml")
            .map(|c| c.routes[0].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn without_a_health_table_there_is_no_health() {
        let r = route("").expect("valid");
        assert_eq!(r.health, None);
        assert_eq!(r.balance, Policy::RoundRobin);
    }

    #[test]
    fn balance_policies() {
        let r = route("balance = \"least_connections\"\n").expect("valid");
        assert_eq!(r.balance, Policy::LeastConnections);
        let e = route("balance = \"random\"\n").expect_err("invalid");
        assert!(e.starts_with("edge.toml:4"), "{e}");
        assert_eq!(r.hash_key, None);
    }

    #[test]
    fn weights_and_slow_start() {
        let r = route("weights = [3, 0]\n").expect("valid");
        assert_eq!(r.weights, [3, 0]);
        assert!(route("").expect("valid").weights.is_empty());
        for (extra, expect) in [
            (
                "weights = [1]\n",
                "edge.toml:4: route[0].weights: 1 weights for 2 origins",
            ),
            (
                "weights = [1, 1001]\n",
                "edge.toml:4: route[0].weights: each must be 0 to 1000",
            ),
            ("weights = [0, 0]\n", "edge.toml:4: route[0].weights: all 0"),
        ] {
            let e = route(extra).expect_err(extra);
            assert!(e.starts_with(expect), "{extra:?}: {e}");
        }
        let h = route("[route.health]\nslow_start = \"30s\"\n")
            .expect("valid")
            .health
            .expect("health");
        assert_eq!(h.slow_start, Duration::from_secs(30));
        let h = route("[route.health]\n")
            .expect("valid")
            .health
            .expect("health");
        assert_eq!(h.slow_start, Duration::ZERO);
        let e = route("[route.health]\nslow_start = \"2h\"\n").expect_err("too long");
        assert!(
            e.contains("route[0].health.slow_start: must be at most 1h"),
            "{e}"
        );
    }

    #[test]
    fn consistent_hash_and_its_key() {
        let r = route("balance = \"consistent_hash\"\n").expect("valid");
        assert_eq!(r.balance, Policy::ConsistentHash);
        assert_eq!(r.hash_key, Some(HashKey::ClientAddr));
        let r = route("balance = \"consistent_hash\"\nhash_key = \"query:room\"\n").expect("valid");
        assert_eq!(r.hash_key, Some(HashKey::Query("room".into())));
        let e = route("balance = \"consistent_hash\"\nhash_key = \"room\"\n").expect_err("bad key");
        assert!(
            e.starts_with("edge.toml:5: route[0].hash_key: must be"),
            "{e}"
        );
        let e = route("hash_key = \"path\"\n").expect_err("not hashing");
        assert!(
            e.starts_with(
                "edge.toml:4: route[0].hash_key: applies to balance = \"consistent_hash\" only"
            ),
            "{e}"
        );
    }

    #[test]
    fn passive_only_defaults() {
        let r = route("[route.health]\n").expect("valid");
        let h = r.health.expect("health");
        assert_eq!(h.check, None);
        assert_eq!(h.thresholds, Thresholds::default());
        assert_eq!(h.retry_after_secs(), 10);
        let r = route("[route.health]\nmax_fails = 5\neject_time = \"1500ms\"\n").expect("valid");
        let h = r.health.expect("health");
        assert_eq!((h.thresholds.max_fails, h.thresholds.eject_ms), (5, 1500));
        assert_eq!(h.retry_after_secs(), 2);
    }

    #[test]
    fn active_checks() {
        let r = route(
            "[route.health]\ncheck = \"websocket\"\npath = \"/healthz?deep=1\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 3\nfall = 2\n",
        )
        .expect("valid");
        let h = r.health.expect("health");
        let check = h.check.clone().expect("check");
        assert_eq!(
            check.kind,
            CheckKind::WebSocket {
                path: "/healthz?deep=1".into()
            }
        );
        assert_eq!(check.interval, Duration::from_secs(1));
        assert_eq!(check.timeout, Duration::from_millis(500));
        assert_eq!((h.thresholds.rise, h.thresholds.fall), (3, 2));
        assert!(h.thresholds.active);
        assert_eq!(h.retry_after_secs(), 3);
        let tcp = route("[route.health]\ncheck = \"tcp\"\n").expect("valid");
        let check = tcp.health.expect("health").check.expect("check");
        assert_eq!(check.kind, CheckKind::Tcp);
        assert_eq!(
            (check.interval, check.timeout),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn bad_health_settings_are_named() {
        for (extra, expect) in [
            (
                "[route.health]\nrise = 2\n",
                "edge.toml:5: route[0].health.rise: applies to active checks",
            ),
            (
                "[route.health]\ncheck = \"tcp\"\nrise = 0\n",
                "edge.toml:6: route[0].health.rise: must be 1 to 1000",
            ),
            (
                "[route.health]\ncheck = \"tcp\"\npath = \"/x\"\n",
                "edge.toml:6: route[0].health.path: applies to check = \"websocket\" only",
            ),
            (
                "[route.health]\ncheck = \"websocket\"\npath = \"x\"\n",
                "edge.toml:6: route[0].health.path: must start with '/'",
            ),
            (
                "[route.health]\ncheck = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
                "edge.toml:7: route[0].health.timeout: must be more than 0 and at most the interval",
            ),
            (
                "[route.health]\ncheck = \"tcp\"\ninterval = \"10ms\"\n",
                "edge.toml:6: route[0].health.interval: must be 100ms to 1h",
            ),
            (
                "[route.health]\neject_time = \"0s\"\n",
                "edge.toml:5: route[0].health.eject_time: must be at least 100ms",
            ),
            ("[route.health]\ncheck = \"http\"\n", "edge.toml:5"),
            ("[route.health]\nwhat = 1\n", "edge.toml:5"),
        ] {
            let e = route(extra).expect_err(extra);
            assert!(e.starts_with(expect), "{extra:?}: {e}");
        }
    }

    #[test]
    fn a_function_route_has_no_health() {
        let e = Config::from_toml(
            "[[route]]\nname = \"e\"\nfunction = \"echo\"\n[route.health]\ncheck = \"tcp\"\n",
            "edge.toml",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            e.contains("route[0].health.check: a function route has no origins"),
            "{e}"
        );
    }

    #[test]
    fn a_pool_holds_at_most_64_origins() {
        let origins: Vec<String> = (1..=65).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let text = format!(
            "[[route]]\nname = \"a\"\norigins = [{}]\n",
            origins.join(", ")
        );
        let e = Config::from_toml(&text, "edge.toml")
            .expect_err("too big")
            .to_string();
        assert!(e.contains("65 origins: a pool holds at most 64"), "{e}");
    }
}
