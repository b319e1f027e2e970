//! The answer to [`Request::OriginsHealth`](super::Request::OriginsHealth): every pool's
//! origins as the dataplane's health registry sees them (state, why, last check, counters).
//! `wsedgectl origins` prints it, the metrics endpoint exports it, the status page shows it.

use serde::{Deserialize, Serialize};

/// One route's origin pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHealth {
    pub route: String,
    /// The balancing policy (`round_robin`, `least_connections`...).
    pub balance: String,
    /// The active check (`tcp`, `websocket /healthz`) and its interval, e.g. `tcp every 1s`;
    /// `None` without active checks (passive ejection only, or no health at all).
    #[serde(default)]
    pub check: Option<String>,
    /// False when the route has no `[route.health]`: its origins are always live.
    pub watched: bool,
    pub origins: Vec<OriginHealth>,
}

/// One origin of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginHealth {
    pub addr: String,
    /// `up`, `down`, or `probation` (up again by time alone, not yet confirmed).
    pub state: String,
    /// Why it is in that state: `initial`, `checks_failed: connect_failed`,
    /// `ejected: status_503`, `checks_passed`, `ejection_over`.
    pub why: String,
    /// How long it has been in that state.
    pub since_ms: u64,
    /// The last active check: `ok` or the failure (`connect_failed`, `timeout`,
    /// `status_404`...); `None` before the first.
    #[serde(default)]
    pub last_check: Option<String>,
    /// How long ago the last active check ended.
    #[serde(default)]
    pub last_check_ago_ms: Option<u64>,
    pub checks: u64,
    pub checks_failed: u64,
    /// Passive ejections (consecutive failed connections).
    pub ejections: u64,
    /// Changes of state (up to down and back).
    pub transitions: u64,
    /// While re-admitted in slow start: the share of its weight it gets now (10 to 99 %).
    #[serde(default)]
    pub slow_start_pct: Option<u32>,
}
