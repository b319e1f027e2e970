//! The session and its route's origin pool: the balancer's choice among live origins, the
//! 503 with `Retry-After` when none is live, the outcomes it reports for the pool's shared
//! health, and the per-worker connection counts of least connections.

use std::sync::{Arc, Mutex};

use super::sim::Sim;
use super::*;
use crate::balance::{Balancer, Policy, PoolView};
use crate::handshake::HeadLimits;
use crate::health::{Failure, Outcome};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const A: &str = "10.0.0.1:9000";
const B: &str = "10.0.0.2:9000";

fn cfg() -> SessionConfig {
    SessionConfig {
        head_limits: HeadLimits::default(),
        handshake_ms: 10_000,
        max_in_flight: 1000,
        buffer_size: 64,
        linger_ms: LINGER_MS,
    }
}

/// The pool's health as a test sets it, and what the worker would have reported to it.
#[derive(Debug, Default)]
struct View {
    dead: Mutex<Vec<usize>>,
}

impl PoolView for View {
    fn is_live(&self, index: usize) -> bool {
        !self.dead.lock().expect("lock").contains(&index)
    }
    fn retry_after_secs(&self) -> u32 {
        9
    }
    fn report(&self, _: usize, _: Outcome) {}
}

fn route(policy: Policy, view: Option<Arc<View>>) -> Route {
    let origins: Vec<SocketAddr> = [A, B].iter().map(|o| o.parse().expect("addr")).collect();
    let count = origins.len();
    Route::new(
        "pool".to_owned(),
        "/".to_owned(),
        origins,
        RelayMode::Buffered,
        RouteTimers {
            connect_ms: 5_000,
            origin_handshake_ms: 10_000,
            idle_ms: 60_000,
            max_connection_ms: 900_000,
            jitter_pct: 0,
        },
        FrameLimits {
            client_max_message: u64::MAX,
            origin_max_message: u64::MAX,
            client_message_rate: None,
            keepalive_ms: None,
            keepalive_timeout_ms: 5_000,
            close_code: 1001,
            close_reason: "going away".to_owned(),
            close_grace_ms: 3_000,
        },
        None,
        false,
        crate::forwarding::DEFAULT_FORWARDING.clone(),
    )
    .with_balance(Balancer::new(
        policy,
        count,
        view.map(|v| v as Arc<dyn PoolView>),
    ))
}

fn upgrade_head() -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn ok_101() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    )
    .into_bytes()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A session on the shared `route` (as the worker's connections share its `Rc<Route>`).
fn sim_on(route: &Rc<Route>) -> Sim {
    let mut sim = Sim::new(cfg(), Vec::new());
    sim.routes = crate::route::RouteTable::new([(crate::route::HostPattern::Any, "/".into())]);
    sim.route_list = vec![Rc::clone(route)];
    sim
}

fn outcomes(sim: &Sim) -> Vec<(usize, Outcome)> {
    sim.log
        .iter()
        .filter_map(|o| match o {
            Output::OriginOutcome { origin, outcome } => Some((*origin, *outcome)),
            _ => None,
        })
        .collect()
}

#[test]
fn new_connections_go_round_the_live_origins_only() {
    let view = Arc::new(View::default());
    let route = Rc::new(route(Policy::RoundRobin, Some(view.clone())));
    let first: Vec<SocketAddr> = (0..4)
        .map(|_| {
            let mut sim = sim_on(&route);
            sim.client_head(&upgrade_head());
            sim.connects[0]
        })
        .collect();
    assert_eq!(first, [addr(A), addr(B), addr(A), addr(B)]);
    view.dead.lock().expect("lock").push(0);
    for _ in 0..3 {
        let mut sim = sim_on(&route);
        sim.client_head(&upgrade_head());
        assert_eq!(sim.connects, [addr(B)], "a down origin is never tried");
    }
}

#[test]
fn no_live_origin_is_a_503_with_retry_after_and_no_connect() {
    let view = Arc::new(View::default());
    view.dead.lock().expect("lock").extend([0, 1]);
    let route = Rc::new(route(Policy::RoundRobin, Some(view)));
    let mut sim = sim_on(&route);
    sim.client_head(&upgrade_head());
    assert!(sim.connects.is_empty(), "no origin socket at all");
    assert!(!sim.watching);
    sim.flush(Side::Client);
    let answer = sim.text(Side::Client);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 9\r\n"), "{answer}");
    sim.advance(LINGER_MS);
    assert_eq!(sim.closed, Some(CloseReason::NoLiveOrigin));
    assert_eq!(sim.session.status(), Some(503));
    assert_eq!(sim.session.origin(), None);
}

#[test]
fn a_retry_after_a_refusal_takes_another_live_origin_or_answers_502() {
    let view = Arc::new(View::default());
    let route = Rc::new(route(Policy::RoundRobin, Some(view.clone())));
    let mut sim = sim_on(&route);
    sim.client_head(&upgrade_head());
    sim.connected(Err(ConnectFailure::Refused));
    assert_eq!(sim.connects, [addr(A), addr(B)]);
    assert_eq!(
        outcomes(&sim),
        [(0, Outcome::Failed(Failure::ConnectFailed))]
    );
    // A is down; B is tried and goes down before its connect fails: nothing is left.
    view.dead.lock().expect("lock").push(0);
    let mut sim = sim_on(&route);
    sim.client_head(&upgrade_head());
    assert_eq!(sim.connects, [addr(B)]);
    view.dead.lock().expect("lock").push(1);
    sim.connected(Err(ConnectFailure::Refused));
    assert_eq!(sim.connects, [addr(B)], "no retry into a down origin");
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 502 "));
    assert_eq!(
        outcomes(&sim),
        [(1, Outcome::Failed(Failure::ConnectFailed))]
    );
}

#[test]
fn answers_are_reported_5xx_as_failures_others_as_ok() {
    let view = Arc::new(View::default());
    let route = Rc::new(route(Policy::RoundRobin, Some(view)));
    let mut ok = sim_on(&route);
    ok.client_head(&upgrade_head());
    ok.connected(Ok(()));
    ok.origin_answers(&ok_101());
    assert_eq!(outcomes(&ok), [(0, Outcome::Ok)]);

    let mut failing = sim_on(&route);
    failing.client_head(&upgrade_head());
    failing.connected(Ok(()));
    failing.origin_answers(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        outcomes(&failing),
        [(1, Outcome::Failed(Failure::Status(503)))]
    );

    let mut refused = sim_on(&route);
    refused.client_head(&upgrade_head());
    refused.connected(Ok(()));
    refused.origin_answers(b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(outcomes(&refused), [(0, Outcome::Ok)], "a 4xx is an answer");
}

#[test]
fn a_connect_timeout_is_reported() {
    let view = Arc::new(View::default());
    let route = Rc::new(route(Policy::RoundRobin, Some(view)));
    let mut sim = sim_on(&route);
    sim.client_head(&upgrade_head());
    sim.advance(5_000);
    assert_eq!(
        outcomes(&sim),
        [(0, Outcome::Failed(Failure::ConnectTimeout))]
    );
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 502 "));
}

#[test]
fn without_shared_health_nothing_is_reported() {
    let route = Rc::new(route(Policy::RoundRobin, None));
    let mut sim = sim_on(&route);
    sim.client_head(&upgrade_head());
    sim.connected(Err(ConnectFailure::Refused));
    sim.connected(Err(ConnectFailure::Refused));
    assert!(outcomes(&sim).is_empty());
}

#[test]
fn least_connections_counts_connections_until_they_close() {
    let route = Rc::new(route(Policy::LeastConnections, None));
    let mut first = sim_on(&route);
    first.client_head(&upgrade_head());
    first.connected(Ok(()));
    first.origin_answers(&ok_101());
    assert_eq!(first.connects, [addr(A)]);
    assert_eq!(route.balance.active(0), 1);
    // A is busy: the next two go to B then (tie) A.
    let mut second = sim_on(&route);
    second.client_head(&upgrade_head());
    assert_eq!(second.connects, [addr(B)]);
    assert_eq!(route.balance.active(1), 1);
    // The first closes: its count is released, once.
    first.eof(Side::Client);
    first.eof(Side::Origin);
    first.flush_all();
    assert!(first.closed.is_some());
    assert_eq!(route.balance.active(0), 0);
    let mut third = sim_on(&route);
    third.client_head(&upgrade_head());
    assert_eq!(third.connects, [addr(A)], "A has fewer connections now");
    // A refused connect moves the count to the retried origin.
    third.connected(Err(ConnectFailure::Refused));
    assert_eq!(third.connects, [addr(A), addr(B)]);
    assert_eq!((route.balance.active(0), route.balance.active(1)), (0, 2));
}
