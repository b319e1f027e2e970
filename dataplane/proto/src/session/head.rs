//! The client's request head: parse, route, firewall, rewrite for the origin (or hand to a
//! function). A pure decision over the bytes received so far; the session acts on it.

use std::net::IpAddr;
use std::rc::Rc;

use super::policy::Route;
use super::reason::{CloseReason, Refusal};
use crate::accept::accept_key;
use crate::body::{BodyEnd, Fed};
use crate::firewall::{Firewall, FirewallState, TlsFacts, TraceEntry, TraceOutcome, Verdict};
use crate::function::{Bus, ConnKey, FunctionHost, FunctionRequest, FunctionSession, Refused};
use crate::handshake::{self, BadRequestReason, HeadLimits, Reject, Request, RequestKind};
use crate::route::{RouteTable, host_without_port};
use crate::wheel::Tick;

/// The firewall as the head decision sees it: evaluated after routing, before any origin
/// connection.
#[derive(Debug)]
pub struct FirewallGate<'a> {
    pub firewall: &'a Firewall,
    /// The worker's per-address and global counters.
    pub state: &'a mut FirewallState,
    /// Wall clock, unix seconds (network-list entries expire by it).
    pub unix_now: u64,
    /// Scratch for the evaluated rules when a route has debug rules on.
    pub trace: &'a mut Vec<TraceEntry>,
    /// The client's TLS handshake (SNI, version, client certificate) on a TLS listener.
    pub tls: Option<TlsFacts<'a>>,
}

/// Everything the head decision needs besides the bytes: the worker's tables.
pub struct HeadContext<'a> {
    pub routes: &'a RouteTable,
    /// The routes, by the table's index.
    pub route_list: &'a [Rc<Route>],
    pub gate: Option<FirewallGate<'a>>,
    pub functions: &'a mut dyn FunctionHost,
    /// This connection's public id.
    pub conn: ConnKey,
    /// `X-Forwarded-Proto`: `http` on a plain listener.
    pub proto: &'a str,
    /// The server name the client's TLS handshake was made for (SNI), on a TLS listener: a
    /// request for another Host is answered 421, so routing by Host is routing by SNI (and
    /// the firewall's `sni` criterion cannot be bypassed with another Host). Routes with an
    /// `sni` condition match only when this is set (never on a plain listener).
    pub sni: Option<&'a str>,
}

impl std::fmt::Debug for HeadContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadContext")
            .field("routes", &self.route_list.len())
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// What the client's head decided.
#[derive(Debug)]
pub(super) enum HeadDecision {
    /// Incomplete: read more.
    NeedMore,
    /// Answer `status` (a canned error) and close.
    Reject { status: u16, reason: CloseReason },
    /// The firewall refused: answer `verdict`'s response (none for a drop) and close.
    Firewall { route: Rc<Route>, verdict: Verdict },
    /// A function refused the request before any upgrade.
    Refused { route: Rc<Route>, refused: Refused },
    /// Relay to an origin of `route`: send `origin_head` (the rewritten head, and the part of
    /// a plain request's body that came with it); `held` = a WebSocket client's early bytes.
    Forward(Box<Forward>),
    /// A function serves it.
    Function {
        route: Rc<Route>,
        function: Box<dyn FunctionSession>,
        held: Vec<u8>,
    },
}

#[derive(Debug)]
pub(super) struct Forward {
    pub(super) route: Rc<Route>,
    pub(super) origin_head: Vec<u8>,
    pub(super) held: Vec<u8>,
    pub(super) websocket: bool,
    pub(super) head_request: bool,
    /// The `Sec-WebSocket-Accept` the origin's 101 must carry (WebSocket requests).
    pub(super) accept: Option<[u8; 28]>,
    /// The rest of a plain request's body still to come from the client.
    pub(super) body: Option<BodyEnd>,
    /// The request's consistent-hash key, when the route's pool hashes one and the request
    /// carries it.
    pub(super) key: Option<u64>,
}

/// What the decision learnt besides its verdict (kept by the session for its whole life).
#[derive(Debug, Default)]
pub(super) struct HeadFacts {
    /// The request carried `Pragma: wsedge-debug`.
    pub(super) debug_pragma: bool,
    /// Debug rules on: the route and the rules that matched (access log, debug headers).
    pub(super) traceback: Option<Vec<String>>,
    /// The firewall counted this connection open.
    pub(super) firewall_admitted: bool,
    /// Bytes of the head itself (what followed it is counted when relayed).
    pub(super) head_len: usize,
    /// The client's accept value (a WebSocket upgrade with a valid key).
    pub(super) client_accept: Option<[u8; 28]>,
}

/// Decides on the client's head buffer `buf` (all bytes received so far).
pub(super) fn decide(
    buf: &[u8],
    limits: &HeadLimits,
    peer: IpAddr,
    now: Tick,
    cx: &mut HeadContext<'_>,
    bus: &mut dyn Bus,
    facts: &mut HeadFacts,
) -> HeadDecision {
    let request = match handshake::parse_request(buf, limits) {
        Ok(None) => return HeadDecision::NeedMore,
        Ok(Some(request)) => request,
        Err(reject) => {
            return HeadDecision::Reject {
                status: reject.status(),
                reason: CloseReason::Rejected(reject),
            };
        }
    };
    facts.head_len = request.head_len;
    if let Some(sni) = cx.sni
        && !request
            .host
            .map(host_without_port)
            .is_some_and(|h| h.eq_ignore_ascii_case(sni.trim_end_matches('.')))
    {
        return HeadDecision::Reject {
            status: 421,
            reason: CloseReason::Misdirected,
        };
    }
    let Some(index) = cx.routes.find(cx.sni, request.host, request.path()) else {
        return HeadDecision::Reject {
            status: 404,
            reason: CloseReason::NoRoute,
        };
    };
    let Some(route) = cx.route_list.get(index).cloned() else {
        return HeadDecision::Reject {
            status: 404,
            reason: CloseReason::NoRoute,
        };
    };
    facts.debug_pragma = request.header("pragma").is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"wsedge-debug"))
    });
    if let Some(verdict) = firewall(&request, &route, peer, now, cx, facts) {
        return HeadDecision::Firewall { route, verdict };
    }
    let tail = &buf[request.head_len..];
    if let RequestKind::WebSocket { key } = request.kind {
        facts.client_accept = Some(accept_key(key));
    }
    if let Some(spec) = route.function.as_ref() {
        let function_request = FunctionRequest {
            route: &route.name,
            path_prefix: &route.path_prefix,
            spec,
            request: &request,
            client_accept: facts.client_accept,
            peer,
            conn: cx.conn,
            max_message: route.frames.client_max_message,
        };
        return match cx.functions.open(&function_request, bus) {
            Ok(function) => HeadDecision::Function {
                route,
                function,
                held: tail.to_vec(),
            },
            Err(refused) => HeadDecision::Refused { route, refused },
        };
    }
    let mut origin_head = Vec::with_capacity(buf.len() + 128);
    handshake::rewrite_for_origin(
        &request,
        peer,
        cx.proto,
        &route.forwarding,
        &mut origin_head,
    );
    let key = route.balance.hash_key().and_then(|k| {
        crate::balance::key_hash(k, peer, request.path(), request.query(), |n| {
            request.header(n)
        })
    });
    let mut forward = Forward {
        key,
        route,
        origin_head,
        held: Vec::new(),
        websocket: false,
        head_request: request.method == "HEAD",
        accept: None,
        body: None,
    };
    match request.kind {
        RequestKind::WebSocket { .. } => {
            forward.websocket = true;
            forward.accept = facts.client_accept;
            forward.held.extend_from_slice(tail);
        }
        RequestKind::Plain { body } => {
            // Forward at most the declared body: bytes past it would be a pipelined request,
            // which never reaches the origin unvalidated.
            let mut framing = BodyEnd::of_request(body);
            let forwarded = match framing.as_mut().map(|f| f.feed(tail)) {
                None => 0,
                Some(Ok(Fed::More)) => tail.len(),
                Some(Ok(Fed::Done(n))) => {
                    framing = None;
                    n
                }
                Some(Err(_)) => {
                    let reject = Reject::from(BadRequestReason::MalformedChunkedBody);
                    return HeadDecision::Reject {
                        status: reject.status(),
                        reason: CloseReason::Rejected(reject),
                    };
                }
            };
            forward.origin_head.extend_from_slice(&tail[..forwarded]);
            forward.body = framing;
        }
    }
    HeadDecision::Forward(Box::new(forward))
}

/// Runs the firewall on an accepted, routed head; `Some(verdict)` when it refuses.
fn firewall(
    request: &Request<'_>,
    route: &Route,
    peer: IpAddr,
    now: Tick,
    cx: &mut HeadContext<'_>,
    facts: &mut HeadFacts,
) -> Option<Verdict> {
    let traceback =
        |trace: &[TraceEntry], firewall: Option<&Firewall>| {
            let mut lines = vec![format!("route:{}", route.name)];
            if let Some(firewall) = firewall {
                lines.extend(trace.iter().map(|e| {
                    format!("rule:{}={}", firewall.rule_name(e.rule), e.outcome.as_str())
                }));
            }
            lines
        };
    let Some(gate) = cx.gate.as_mut().filter(|g| !g.firewall.is_empty()) else {
        if route.debug {
            facts.traceback = Some(traceback(&[], None));
        }
        return None;
    };
    gate.trace.clear();
    let trace = if route.debug {
        Some(&mut *gate.trace)
    } else {
        None
    };
    let verdict = gate.firewall.evaluate_tls(
        gate.state,
        request,
        peer,
        gate.tls,
        Some(&route.name),
        now,
        gate.unix_now,
        trace,
    );
    if route.debug {
        facts.traceback = Some(traceback(gate.trace, Some(gate.firewall)));
    }
    if verdict != Verdict::Allow {
        return Some(verdict);
    }
    gate.state.on_connection_open(peer);
    facts.firewall_admitted = true;
    None
}

/// With debug rules on the route and `Pragma: wsedge-debug` on the request, adds headers
/// naming the route, origin, matched rules and worker to the response head at the start of
/// `response`. Otherwise returns it unchanged: nothing leaks when debug is off.
pub(super) fn with_debug_headers(
    mut response: Vec<u8>,
    traceback: &[String],
    route: &str,
    origin: Option<std::net::SocketAddr>,
    worker: usize,
) -> Vec<u8> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return response;
    };
    let origin = origin.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let not_matched = format!("={}", TraceOutcome::NotMatched.as_str());
    let rules: Vec<&str> = traceback
        .iter()
        .filter_map(|t| t.strip_prefix("rule:"))
        .filter(|t| !t.ends_with(not_matched.as_str()))
        .collect();
    let headers = format!(
        "X-Wsedge-Route: {route}\r\nX-Wsedge-Origin: {origin}\r\nX-Wsedge-Rules: {}\r\nX-Wsedge-Worker: {worker}\r\n",
        if rules.is_empty() {
            "-".to_owned()
        } else {
            rules.join(", ")
        },
    );
    response.splice(end + 2..end + 2, headers.into_bytes());
    response
}

/// The label a firewall refusal is logged with.
pub(super) fn refusal(verdict: &Verdict) -> CloseReason {
    CloseReason::Firewall(Refusal::of(verdict).unwrap_or(Refusal::Deny))
}
