//! The engine driven through proto's simulated worker (`wsedge_proto::session::sim::Sim`),
//! one sim per connection on one host and one bus, the way a worker drives them: deliveries,
//! wakes and client-less sessions after every event, host timers on a virtual clock. The
//! scripts are the shipped examples (`docs/examples/functions/`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use wsedge_proto::channels::{Hub, HubError, HubLimits};
use wsedge_proto::frame::{OpCode, apply_mask, encode_frame, parse_header};
use wsedge_proto::function::{
    Bus, ConnKey, Delivery, FunctionHost, FunctionSpec, Payload, ScriptSpec,
};
use wsedge_proto::handshake::HeadLimits;
use wsedge_proto::session::sim::{SharedHost, Sim};
use wsedge_proto::session::{
    CloseReason, FrameLimits, Input, LINGER_MS, RelayMode, Route, RouteTimers, SessionConfig, Side,
};
use wsedge_proto::wheel::Tick;

use crate::session::MESSAGES_PER_TURN;
use crate::{JsHost, Limits, Script, ScriptError};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A worker's bus for tests: a hub per route, publishes queued until the loop delivers them.
#[derive(Debug, Default)]
struct TestBus {
    hubs: HashMap<String, Hub<ConnKey>>,
    queue: Vec<(String, String, Payload, Option<ConnKey>)>,
    published: usize,
}

impl Bus for TestBus {
    fn subscribe(
        &mut self,
        route: &str,
        channel: &str,
        conn: ConnKey,
        limits: HubLimits,
    ) -> Result<usize, HubError> {
        self.hubs
            .entry(route.to_owned())
            .or_insert_with(|| Hub::new(limits))
            .subscribe(conn, channel)
    }
    fn unsubscribe(&mut self, route: &str, channel: &str, conn: ConnKey) -> bool {
        self.hubs
            .get_mut(route)
            .is_some_and(|h| h.unsubscribe(conn, channel).is_some())
    }
    fn leave_all(&mut self, route: &str, conn: ConnKey) {
        if let Some(h) = self.hubs.get_mut(route) {
            h.remove_conn(conn);
        }
    }
    fn publish(&mut self, route: &str, channel: &str, payload: Payload, skip: Option<ConnKey>) {
        self.published += 1;
        self.queue
            .push((route.to_owned(), channel.to_owned(), payload, skip));
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        head_limits: HeadLimits::default(),
        handshake_ms: 10_000,
        max_in_flight: 1 << 20,
        buffer_size: 16 << 10,
        linger_ms: LINGER_MS,
    }
}

fn route(name: &str, prefix: &str, script: &str) -> Route {
    Route::new(
        name.to_owned(),
        prefix.to_owned(),
        Vec::new(),
        RelayMode::Frames,
        RouteTimers {
            connect_ms: 5_000,
            origin_handshake_ms: 10_000,
            idle_ms: 600_000,
            max_connection_ms: 3_600_000,
            jitter_pct: 0,
        },
        FrameLimits {
            client_max_message: 1 << 20,
            origin_max_message: 1 << 20,
            client_message_rate: None,
            keepalive_ms: None,
            keepalive_timeout_ms: 5_000,
            close_code: 1001,
            close_reason: "going away".to_owned(),
            close_grace_ms: 3_000,
        },
        Some(FunctionSpec::Script(ScriptSpec {
            path: example(script),
            cpu_budget_ms: 50,
            memory_limit: 64 << 20,
            max_send_queue: 1 << 20,
        })),
        false,
        wsedge_proto::forwarding::DEFAULT_FORWARDING.clone(),
    )
}

/// A shipped example script.
fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples/functions")
        .join(name)
}

fn load(name: &str) -> Script {
    Script::load(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A worker: one host, one bus, a sim per connection.
struct World {
    host: Rc<RefCell<JsHost>>,
    bus: Rc<RefCell<TestBus>>,
    routes: Vec<(String, String, String)>,
    sims: BTreeMap<ConnKey, Sim>,
    now: Tick,
    next: ConnKey,
}

impl World {
    fn new(routes: &[(&str, &str, &str)], limits: Limits) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("WSEDGE_LOG"))
            .with_test_writer()
            .try_init();
        let mut host = JsHost::new(0, 2, 42);
        for (name, _, script) in routes {
            host.deploy(name, load(script), limits).expect("deploys");
        }
        World {
            host: Rc::new(RefCell::new(host)),
            bus: Rc::new(RefCell::new(TestBus::default())),
            routes: routes
                .iter()
                .map(|(n, p, s)| ((*n).to_owned(), (*p).to_owned(), (*s).to_owned()))
                .collect(),
            sims: BTreeMap::new(),
            now: 0,
            next: 100,
        }
    }

    /// A client sends `head` (a request line and headers); returns its connection key.
    fn request(&mut self, head: &str) -> ConnKey {
        let key = self.next;
        self.next += 1;
        let host: Rc<RefCell<dyn FunctionHost>> = self.host.clone();
        let bus: Rc<RefCell<dyn Bus>> = self.bus.clone();
        let mut sim = Sim::with_host(
            cfg(),
            self.route_list(),
            SharedHost(host),
            bus,
            key,
            self.now,
        );
        sim.client_head(head.as_bytes());
        self.sims.insert(key, sim);
        self.settle();
        key
    }

    fn connect(&mut self, target: &str) -> ConnKey {
        self.connect_with(target, "")
    }

    fn connect_with(&mut self, target: &str, headers: &str) -> ConnKey {
        self.request(&format!(
            "GET {target} HTTP/1.1\r\nHost: edge.test:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ))
    }

    fn route_list(&self) -> Vec<Route> {
        self.routes.iter().map(|(n, p, s)| route(n, p, s)).collect()
    }

    fn add_route(&mut self, name: &str, prefix: &str) {
        self.routes
            .push((name.to_owned(), prefix.to_owned(), "echo.js".to_owned()));
    }

    fn sim(&mut self, key: ConnKey) -> &mut Sim {
        self.sims.get_mut(&key).expect("a connection")
    }

    /// Runs the loop until nothing is left to do: writes, deliveries, wakes, new sessions.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut busy = false;
            for sim in self.sims.values_mut() {
                if sim.closed.is_none() && sim.sides.iter().any(|s| !s.queue.is_empty()) {
                    sim.flush(Side::Client);
                    sim.flush(Side::Origin);
                    busy = true;
                }
            }
            let queue = std::mem::take(&mut self.bus.borrow_mut().queue);
            for (route, channel, payload, skip) in queue {
                busy = true;
                for key in self
                    .subscribers(&route, &channel)
                    .into_iter()
                    .filter(|k| Some(*k) != skip)
                {
                    if let Some(sim) = self.sims.get_mut(&key)
                        && sim.closed.is_none()
                    {
                        let mut delivery = Delivery::new(
                            std::sync::Arc::from(channel.as_str()),
                            std::sync::Arc::new(payload.clone()),
                        );
                        sim.handle(Input::Deliver(&mut delivery));
                    }
                }
            }
            loop {
                let wake = self.host.borrow_mut().poll_wake();
                let Some(key) = wake else { break };
                busy = true;
                if let Some(sim) = self.sims.get_mut(&key)
                    && sim.closed.is_none()
                {
                    sim.handle(Input::Wake);
                }
            }
            loop {
                let outbound = self.host.borrow_mut().poll_outbound();
                let Some(outbound) = outbound else { break };
                busy = true;
                let key = self.next;
                self.next += 1;
                let route = self
                    .route_list()
                    .into_iter()
                    .find(|r| r.name == outbound.route)
                    .expect("its route");
                let bus: Rc<RefCell<dyn Bus>> = self.bus.clone();
                let sim = Sim::outbound(cfg(), route, outbound.function, bus, key, self.now);
                self.sims.insert(key, sim);
            }
            if !busy {
                return;
            }
        }
        panic!("the loop never settled");
    }

    /// The bus's subscribers of `channel` on `route`.
    fn subscribers(&self, route: &str, channel: &str) -> Vec<ConnKey> {
        self.bus
            .borrow()
            .hubs
            .get(route)
            .map(|h| h.subscribers(channel).collect())
            .unwrap_or_default()
    }

    /// A `gap` notice on `channel` of `route`, fed to each subscriber as the worker does
    /// (one shared delivery).
    fn gap(&mut self, route: &str, channel: &str) {
        let mut delivery = Delivery::gap(std::sync::Arc::from(channel));
        for key in self.subscribers(route, channel) {
            if let Some(sim) = self.sims.get_mut(&key)
                && sim.closed.is_none()
            {
                sim.handle(Input::Deliver(&mut delivery));
            }
        }
        self.settle();
    }

    /// Moves the clock to `to`, firing host and session timers in order.
    fn advance(&mut self, to: Tick) {
        loop {
            let host = self.host.borrow().poll_timeout();
            let sessions = self
                .sims
                .values()
                .filter(|s| s.closed.is_none())
                .filter_map(|s| s.session.poll_timeout())
                .min();
            let next = host.into_iter().chain(sessions).min();
            match next {
                Some(at) if at <= to => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    {
                        let mut bus = self.bus.borrow_mut();
                        self.host.borrow_mut().on_timeout(now, &mut *bus);
                    }
                    for sim in self.sims.values_mut().filter(|s| s.closed.is_none()) {
                        sim.advance(now);
                    }
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = to;
        for sim in self.sims.values_mut() {
            sim.now = to;
        }
    }

    fn send(&mut self, key: ConnKey, opcode: OpCode, payload: &[u8]) {
        let mut frame = Vec::new();
        encode_frame(opcode, true, payload, Some([7, 1, 2, 3]), &mut frame);
        let now = self.now;
        let sim = self.sim(key);
        sim.now = now;
        sim.recv(Side::Client, &frame);
        self.settle();
    }

    fn text(&mut self, key: ConnKey, text: &str) {
        self.send(key, OpCode::Text, text.as_bytes());
    }

    /// The HTTP head the client got.
    fn head(&self, key: ConnKey) -> String {
        let text = self.sims[&key].text(Side::Client);
        text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
    }

    /// The frames the client got after its 101.
    fn frames(&self, key: ConnKey) -> Vec<(OpCode, Vec<u8>)> {
        let written = &self.sims[&key].sides[0].written;
        let start = written
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(written.len(), |i| i + 4);
        frames(&written[start..])
    }

    fn texts(&self, key: ConnKey) -> Vec<String> {
        self.frames(key)
            .into_iter()
            .filter(|(op, _)| *op == OpCode::Text)
            .map(|(_, p)| String::from_utf8(p).expect("utf8"))
            .collect()
    }
}

/// Parses frames (unmasking masked ones).
fn frames(mut bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some((header, len))) = parse_header(bytes) {
        let n = header.payload_len as usize;
        if bytes.len() < len + n {
            break;
        }
        let mut payload = bytes[len..len + n].to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        out.push((header.opcode, payload));
        bytes = &bytes[len + n..];
    }
    out
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn echo_script_answers_the_upgrade_and_echoes_text_and_binary() {
    let mut w = World::new(&[("echo", "/echo", "echo.js")], Limits::default());
    let c = w.connect("/echo");
    assert!(
        w.head(c).starts_with("HTTP/1.1 101 Switching Protocols"),
        "{}",
        w.head(c)
    );
    w.text(c, "hello");
    w.send(c, OpCode::Binary, &[0, 1, 2, 255]);
    assert_eq!(
        w.frames(c),
        vec![
            (OpCode::Text, b"hello".to_vec()),
            (OpCode::Binary, vec![0, 1, 2, 255])
        ]
    );
    // A ping is answered by the edge; the client's close gets its reply and ends it.
    w.send(c, OpCode::Ping, b"p");
    w.send(c, OpCode::Close, &1000u16.to_be_bytes());
    let frames = w.frames(c);
    assert_eq!(frames[2], (OpCode::Pong, b"p".to_vec()));
    assert_eq!(frames[3].0, OpCode::Close);
    w.sim(c).eof(Side::Client);
    assert_eq!(w.sims[&c].closed, Some(CloseReason::ClientClosed));
    let stats = w.host.borrow().stats();
    assert_eq!(stats[0].1.sockets, 0, "the connection left the runtime");
    assert!(stats[0].1.invocations >= 3);
    // A plain request gets the script's own answer.
    let plain = w.request("GET /echo HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    assert!(
        w.head(plain).starts_with("HTTP/1.1 426 Upgrade Required"),
        "{}",
        w.head(plain)
    );
}

/// The replies to the messages of one read leave as one chunk, in order, a ping's Pong
/// between them in its place: a chunk per message made the worker's socket write 16 messages
/// per loop turn (the JS echo's stall under a flood, docs/benchmarks.md).
#[test]
fn the_replies_to_one_read_go_out_as_one_chunk() {
    let mut w = World::new(&[("echo", "/echo", "echo.js")], Limits::default());
    let c = w.connect("/echo");
    let n = MESSAGES_PER_TURN;
    let mut bytes = Vec::new();
    for i in 0..n {
        let opcode = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        encode_frame(
            opcode,
            true,
            format!("m{i}").as_bytes(),
            Some([7, 1, 2, 3]),
            &mut bytes,
        );
    }
    let sim = w.sim(c);
    sim.recv(Side::Client, &bytes);
    assert_eq!(sim.sides[0].queue.len(), 1, "{n} replies, one chunk");
    // A ping in the middle: the replies before it, its Pong, the replies after it.
    let mut bytes = Vec::new();
    encode_frame(OpCode::Text, true, b"a", Some([7, 1, 2, 3]), &mut bytes);
    encode_frame(OpCode::Ping, true, b"p", Some([7, 1, 2, 3]), &mut bytes);
    encode_frame(OpCode::Text, true, b"b", Some([7, 1, 2, 3]), &mut bytes);
    sim.recv(Side::Client, &bytes);
    assert_eq!(sim.sides[0].queue.len(), 4);
    w.settle();
    let frames = w.frames(c);
    assert_eq!(frames.len(), n + 3);
    for (i, (opcode, payload)) in frames.iter().take(n).enumerate() {
        let want = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        assert_eq!(
            (*opcode, payload.as_slice()),
            (want, format!("m{i}").as_bytes())
        );
    }
    assert_eq!(
        frames[n..].to_vec(),
        vec![
            (OpCode::Text, b"a".to_vec()),
            (OpCode::Pong, b"p".to_vec()),
            (OpCode::Text, b"b".to_vec())
        ]
    );
}

/// Text frames `m{from}`.. `m{to - 1}`, masked, back to back.
fn numbered(from: usize, to: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in from..to {
        encode_frame(
            OpCode::Text,
            true,
            format!("m{i}").as_bytes(),
            Some([7, 1, 2, 3]),
            &mut bytes,
        );
    }
    bytes
}

/// A read of many messages is handed to the script [`MESSAGES_PER_TURN`] at a time, a batch
/// per turn of the worker's loop (the host's timer, due at once), the client's reads stopped
/// meanwhile: a flooding client holds the worker for one batch per turn, not for its backlog.
#[test]
fn a_flood_in_one_read_reaches_the_script_a_batch_per_turn() {
    let mut w = World::new(&[("echo", "/echo", "echo.js")], Limits::default());
    let c = w.connect("/echo");
    let n = MESSAGES_PER_TURN * 3 + 5;
    let invocations = |w: &World| w.host.borrow().stats()[0].1.invocations;
    let before = invocations(&w);
    let sim = w.sim(c);
    sim.recv(Side::Client, &numbered(0, n));
    assert!(sim.sides[0].stopping, "reads stop while messages wait");
    // A read that completed meanwhile queues behind them.
    sim.recv(Side::Client, &numbered(n, n + 2));
    w.settle();
    assert_eq!(w.frames(c).len(), MESSAGES_PER_TURN);
    assert_eq!(invocations(&w) - before, MESSAGES_PER_TURN as u64);
    let mut turns = 1;
    while w.frames(c).len() < n + 2 {
        assert_eq!(
            w.host.borrow().poll_timeout(),
            Some(w.now),
            "the rest is due at once"
        );
        {
            let mut bus = w.bus.borrow_mut();
            w.host.borrow_mut().on_timeout(w.now, &mut *bus);
        }
        w.settle();
        turns += 1;
        assert_eq!(w.frames(c).len(), (MESSAGES_PER_TURN * turns).min(n + 2));
        assert!(turns <= 4, "{turns} turns");
    }
    assert_eq!(w.host.borrow().poll_timeout(), None, "nothing waits");
    let texts = w.texts(c);
    assert!(texts.iter().enumerate().all(|(i, t)| *t == format!("m{i}")));
    // Once the stopped read ended, the client is read again.
    w.sim(c).read_ended(Side::Client);
    assert!(w.sims[&c].sides[0].reading && !w.sims[&c].sides[0].stopping);
    w.text(c, "again");
    assert_eq!(w.texts(c).last().map(String::as_str), Some("again"));
    // A client that leaves with messages still waiting: the script gets them, then the close.
    let c = w.connect("/echo");
    let before = invocations(&w);
    w.sim(c)
        .recv(Side::Client, &numbered(0, MESSAGES_PER_TURN + 3));
    assert_eq!(invocations(&w) - before, MESSAGES_PER_TURN as u64);
    w.sim(c).eof(Side::Client);
    w.settle();
    assert_eq!(
        invocations(&w) - before,
        MESSAGES_PER_TURN as u64 + 3 + 1,
        "every message, then the close"
    );
}

#[test]
fn chat_rooms_fan_out_through_the_bus_with_presence() {
    let mut w = World::new(&[("chat", "/chat", "chat.js")], Limits::default());
    let alice = w.connect("/chat/lobby?name=alice");
    let bob = w.connect("/chat/lobby?name=bob");
    let carol = w.connect("/chat/attic?name=carol");
    assert_eq!(
        w.texts(alice),
        [
            r#"{"type":"welcome","room":"lobby","name":"alice","present":1}"#,
            r#"{"type":"join","name":"bob","present":2}"#
        ]
    );
    assert_eq!(
        w.texts(bob),
        [r#"{"type":"welcome","room":"lobby","name":"bob","present":2}"#]
    );
    let published = w.bus.borrow().published;
    w.text(bob, "hi all");
    assert_eq!(w.bus.borrow().published, published + 1, "one publish");
    let hi = r#"{"type":"message","from":"bob","text":"hi all"}"#;
    assert_eq!(w.texts(alice).last().map(String::as_str), Some(hi));
    assert_eq!(w.texts(bob).last().map(String::as_str), Some(hi));
    assert!(
        !w.texts(carol).iter().any(|t| t.contains("hi all")),
        "another room"
    );
    // The message reached both without entering JavaScript once per subscriber.
    let invocations = w.host.borrow().stats()[0].1.invocations;
    w.text(alice, "second");
    assert_eq!(
        w.host.borrow().stats()[0].1.invocations,
        invocations + 1,
        "one call into JavaScript for one message, whatever the number of subscribers"
    );
    // Bob leaves: alice is told, with the room's new presence.
    w.send(bob, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(
        w.texts(alice).last().map(String::as_str),
        Some(r#"{"type":"leave","name":"bob","present":1}"#)
    );
    // A path that names no room is refused before any upgrade.
    let lost = w.connect("/chat/");
    assert!(
        w.head(lost).starts_with("HTTP/1.1 404 "),
        "{}",
        w.head(lost)
    );
}

/// Answers the edge's handshake on the peer side of `key` with a 101.
fn accept_peer(w: &mut World, key: ConnKey) -> String {
    accept_peer_with(w, key, &[])
}

/// [`accept_peer`], with `after` (the peer's first frames) in the same read as the 101.
fn accept_peer_with(w: &mut World, key: ConnKey, after: &[u8]) -> String {
    let sim = w.sim(key);
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    let request = sim.text(Side::Origin);
    let edge_key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key")
        .to_owned();
    let accept = String::from_utf8(wsedge_proto::accept::accept_key(edge_key.as_bytes()).to_vec())
        .expect("ascii");
    let mut answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        .into_bytes();
    answer.extend_from_slice(after);
    sim.origin_answers(&answer);
    w.settle();
    request
}

#[test]
fn auth_proxy_checks_the_token_then_pipes_to_its_origin_as_the_connections_peer() {
    let mut w = World::new(&[("proxy", "/proxy", "auth-proxy.js")], Limits::default());
    let refused = w.connect("/proxy?token=nope");
    assert!(
        w.head(refused).starts_with("HTTP/1.1 401 "),
        "{}",
        w.head(refused)
    );
    assert!(
        w.sims[&refused].connects.is_empty(),
        "no origin for a refused client"
    );

    let c = w.connect("/proxy?token=let-me-in");
    assert!(w.head(c).starts_with("HTTP/1.1 101 "));
    assert_eq!(
        w.sims[&c].connects,
        vec!["127.0.0.1:9001".parse().expect("addr")],
        "the outbound socket is this connection's peer"
    );
    assert_eq!(w.sims.len(), 2, "no client-less session");
    assert!(
        !w.sims[&c].sides[0].reading,
        "the client is not read while its peer connects (its bytes wait in the kernel)"
    );
    let request = accept_peer(&mut w, c);
    w.text(c, "early");
    assert!(
        request.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"),
        "{request}"
    );
    let to_origin = |w: &World| {
        let written = &w.sims[&c].sides[1].written;
        let start = written
            .windows(4)
            .position(|x| x == b"\r\n\r\n")
            .expect("head")
            + 4;
        frames(&written[start..])
    };
    assert_eq!(to_origin(&w), vec![(OpCode::Text, b"early".to_vec())]);
    w.text(c, "later");
    assert_eq!(to_origin(&w)[1], (OpCode::Text, b"later".to_vec()));
    // The origin answers through the edge.
    let mut reply = Vec::new();
    encode_frame(OpCode::Text, true, b"from origin", None, &mut reply);
    w.sim(c).recv(Side::Origin, &reply);
    w.settle();
    assert_eq!(w.texts(c), ["from origin"]);
    // The origin closes: the client is closed too.
    let mut close = Vec::new();
    encode_frame(
        OpCode::Close,
        true,
        &1000u16.to_be_bytes(),
        None,
        &mut close,
    );
    w.sim(c).recv(Side::Origin, &close);
    w.settle();
    let last = w.frames(c).pop().expect("a close");
    assert_eq!((last.0, close_code(&last.1)), (OpCode::Close, 1000));

    // The token may come as a subprotocol, which the edge then selects.
    let p = w.connect_with(
        "/proxy",
        "Sec-WebSocket-Protocol: chat, token.let-me-in\r\n",
    );
    assert!(
        w.head(p)
            .contains("Sec-WebSocket-Protocol: token.let-me-in"),
        "{}",
        w.head(p)
    );
}

#[test]
fn ticker_publishes_on_its_interval_to_subscribers() {
    let mut w = World::new(&[("ticker", "/ticker", "ticker.js")], Limits::default());
    assert_eq!(
        w.host.borrow().poll_timeout(),
        Some(1_000),
        "worker 0 runs the ticker"
    );
    let a = w.connect("/ticker");
    let b = w.connect("/ticker");
    w.advance(3_500);
    let ticks = w.texts(a);
    assert_eq!(ticks.len(), 3, "{ticks:?}");
    assert!(ticks[2].starts_with(r#"{"seq":3,"at":""#), "{}", ticks[2]);
    assert_eq!(w.texts(b), ticks, "the same frames to every subscriber");
    assert_eq!(w.bus.borrow().published, 3);
}

#[test]
fn platform_examples_answer_as_documented() {
    let mut w = World::new(
        &[
            ("pong", "/pong", "platform-pong.js"),
            ("received", "/received", "platform-received.js"),
        ],
        Limits::default(),
    );
    let p = w.connect("/pong");
    w.text(p, "ping");
    assert_eq!(w.texts(p), ["pong"]);
    let page = w.request("GET /pong HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    let text = w.sims[&page].text(Side::Client);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/html\r\n")
            && text.contains("new WebSocket("),
        "{text}"
    );
    let r = w.connect("/received");
    w.text(r, "abc");
    assert_eq!(w.texts(r), ["received: abc"]);
    let plain = w.request("GET /received HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    assert!(w.head(plain).starts_with("HTTP/1.1 400 "));
}

fn script(source: &str) -> Result<Script, ScriptError> {
    Script::from_sources("main.js", [("main.js".to_owned(), source.to_owned())])
}

#[test]
fn a_compile_error_is_refused_with_its_line_and_the_old_version_keeps_serving() {
    let error = script("export default {\n  fetch(request) {\n    let x = ;\n  },\n};\n")
        .expect_err("a syntax error");
    assert_eq!(
        (error.file.as_deref(), error.line),
        (Some("main.js"), Some(3)),
        "{error}"
    );
    assert!(error.to_string().starts_with("main.js:3:"), "{error}");
    // From a file too, with the message of a missing import.
    let dir = std::env::temp_dir().join(format!("wsedge-js-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("bad.js"),
        "import { x } from './missing.js';\nexport default { fetch() {} };\n",
    )
    .expect("write");
    let missing = Script::load(&dir.join("bad.js")).expect_err("missing import");
    assert!(missing.message.contains("missing.js"), "{missing}");
    std::fs::write(
        dir.join("escape.js"),
        "import '../outside.js';\nexport default { fetch() {} };\n",
    )
    .expect("write");
    let escape = Script::load(&dir.join("escape.js")).expect_err("outside its directory");
    assert!(escape.message.contains("outside"), "{escape}");
    let _ = std::fs::remove_dir_all(&dir);
    // No fetch at all.
    assert!(script("export default {};").is_err());

    // A deploy that fails leaves the serving version alone.
    let mut host = JsHost::new(0, 1, 1);
    let v1 = host
        .deploy("f", load("echo.js"), Limits::default())
        .expect("v1");
    let bad = host.deploy(
        "f",
        Script {
            entry: "main.js".into(),
            modules: [(
                "main.js".to_owned(),
                std::sync::Arc::from(b"throw new Error('at start')".to_vec()),
            )]
            .into_iter()
            .collect(),
        },
        Limits::default(),
    );
    assert!(bad.expect_err("refused").message.contains("at start"));
    assert_eq!(host.stats()[0].1.version, v1);
}

#[test]
fn an_exception_in_a_handler_closes_that_socket_with_1011() {
    let source = r#"
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            socket.onmessage = (e) => {
              if (e.data === "boom") throw new Error("kaboom");
              socket.send("ok:" + e.data);
            };
            return response;
          },
        };"#;
    let mut w = World::new(&[], Limits::default());
    w.host
        .borrow_mut()
        .deploy("f", script(source).expect("compiles"), Limits::default())
        .expect("deploys");
    w.add_route("f", "/");
    let good = w.connect("/");
    let bad = w.connect("/");
    w.text(good, "a");
    w.text(bad, "boom");
    let last = w.frames(bad).pop().expect("a close");
    assert_eq!((last.0, close_code(&last.1)), (OpCode::Close, 1011));
    w.sim(bad).eof(Side::Client);
    assert_eq!(w.sims[&bad].closed, Some(CloseReason::FunctionError));
    w.text(good, "b");
    assert_eq!(
        w.texts(good),
        ["ok:a", "ok:b"],
        "the other socket is untouched"
    );
    assert!(w.host.borrow().stats()[0].1.errors >= 1);
    // An exception in fetch before the upgrade is a 500.
    let throws = r#"export default { fetch() { throw new Error("no"); } };"#;
    w.host
        .borrow_mut()
        .deploy("f", script(throws).expect("compiles"), Limits::default())
        .expect("deploys");
    let failed = w.connect("/");
    assert!(
        w.head(failed).starts_with("HTTP/1.1 500 "),
        "{}",
        w.head(failed)
    );
    assert_eq!(
        w.texts(good).len(),
        2,
        "the old version's socket still serves"
    );
    w.text(good, "c");
    assert_eq!(w.texts(good).last().map(String::as_str), Some("ok:c"));
}

#[test]
fn a_runaway_handler_is_interrupted_within_its_budget() {
    let source = r#"
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            socket.onmessage = (e) => { if (e.data === "spin") { while (true) {} } socket.send(e.data); };
            return response;
          },
        };"#;
    let limits = Limits {
        cpu_budget: Duration::from_millis(30),
        ..Limits::default()
    };
    let mut w = World::new(&[], limits);
    w.host
        .borrow_mut()
        .deploy("f", script(source).expect("compiles"), limits)
        .expect("deploys");
    w.add_route("f", "/");
    let other = w.connect("/");
    let spinner = w.connect("/");
    let started = std::time::Instant::now();
    w.text(spinner, "spin");
    let took = started.elapsed();
    // The budget plus the engine's check interval; generous for a shared machine.
    assert!(
        took < Duration::from_millis(1_000),
        "interrupted after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(30),
        "ran its budget: {took:?}"
    );
    let last = w.frames(spinner).pop().expect("a close");
    assert_eq!((last.0, close_code(&last.1)), (OpCode::Close, 1011));
    assert_eq!(w.host.borrow().stats()[0].1.interrupts, 1);
    w.text(other, "still here");
    assert_eq!(w.texts(other), ["still here"], "the runtime stays usable");
}

#[test]
fn a_runtime_over_its_memory_cap_is_recreated_and_only_its_sockets_close() {
    let hog = r#"
        const kept = [];
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            socket.onmessage = (e) => {
              if (e.data === "eat") { for (;;) kept.push("x".repeat(4096) + kept.length); }
              socket.send("hog:" + e.data);
            };
            return response;
          },
        };"#;
    let small = Limits {
        memory_limit: 8 << 20,
        ..Limits::default()
    };
    let mut w = World::new(&[("echo", "/echo", "echo.js")], Limits::default());
    w.host
        .borrow_mut()
        .deploy("hog", script(hog).expect("compiles"), small)
        .expect("deploys");
    w.add_route("hog", "/hog");
    let bystander = w.connect("/echo");
    let victim = w.connect("/hog");
    let eater = w.connect("/hog");
    w.text(victim, "1");
    w.text(eater, "eat");
    for key in [victim, eater] {
        let last = w.frames(key).pop().expect("a close");
        assert_eq!(
            (last.0, close_code(&last.1)),
            (OpCode::Close, 1011),
            "{key}"
        );
    }
    let stats: HashMap<String, crate::FunctionStats> =
        w.host.borrow().stats().into_iter().collect();
    assert_eq!(stats["hog"].restarts, 1);
    assert!(
        stats["hog"].memory_bytes < 4 << 20,
        "the new runtime starts small"
    );
    // The new runtime serves; the other function never noticed.
    let fresh = w.connect("/hog");
    w.text(fresh, "2");
    assert_eq!(w.texts(fresh), ["hog:2"]);
    w.text(bystander, "fine");
    assert_eq!(w.texts(bystander), ["fine"]);
    assert_eq!(stats["echo"].restarts, 0);
}

#[test]
fn async_fetch_answers_after_a_timer_and_new_versions_serve_new_connections() {
    let slow = r#"
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        export default {
          async fetch(request) {
            await sleep(200);
            const { socket, response } = upgradeWebSocket(request);
            socket.onmessage = (e) => socket.send(`v${wsedge.version}:${e.data}`);
            return response;
          },
        };"#;
    let mut w = World::new(&[], Limits::default());
    w.host
        .borrow_mut()
        .deploy("f", script(slow).expect("compiles"), Limits::default())
        .expect("deploys");
    w.add_route("f", "/");
    let c = w.connect("/");
    assert_eq!(w.head(c), "", "no answer before the timer");
    w.advance(250);
    assert!(w.head(c).starts_with("HTTP/1.1 101 "), "{}", w.head(c));
    w.text(c, "a");
    assert_eq!(w.texts(c), ["v1:a"]);
    w.host
        .borrow_mut()
        .deploy("f", script(slow).expect("compiles"), Limits::default())
        .expect("deploys");
    let d = w.connect("/");
    w.advance(500);
    w.text(d, "b");
    w.text(c, "c");
    assert_eq!(w.texts(d), ["v2:b"]);
    assert_eq!(
        w.texts(c),
        ["v1:a", "v1:c"],
        "a live connection finishes on its version"
    );
}

#[test]
fn a_module_level_websocket_gets_a_session_of_its_own() {
    let feed = r#"
        const feed = new WebSocket("ws://127.0.0.1:9001/feed");
        feed.onmessage = (e) => channels.publish("feed", e.data);
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            socket.onopen = () => socket.subscribe("feed");
            return response;
          },
        };"#;
    let mut w = World::new(&[], Limits::default());
    w.host
        .borrow_mut()
        .deploy("f", script(feed).expect("compiles"), Limits::default())
        .expect("deploys");
    w.add_route("f", "/");
    let c = w.connect("/");
    let outbound: Vec<ConnKey> = w
        .sims
        .iter()
        .filter(|(_, s)| s.session.is_clientless())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(outbound.len(), 1, "one client-less session");
    let o = outbound[0];
    assert_eq!(
        w.sims[&o].connects,
        vec!["127.0.0.1:9001".parse().expect("addr")]
    );
    let request = accept_peer(&mut w, o);
    assert!(request.starts_with("GET /feed HTTP/1.1\r\n"));
    let mut frame = Vec::new();
    encode_frame(OpCode::Text, true, b"price 42", None, &mut frame);
    w.sim(o).recv(Side::Origin, &frame);
    w.settle();
    assert_eq!(w.texts(c), ["price 42"]);
}

#[test]
fn an_allocation_failure_a_handler_catches_still_tears_the_runtime_down() {
    let hog = r#"
        const kept = [];
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            socket.onmessage = () => {
              try { for (;;) kept.push("y".repeat(4096) + kept.length); } catch (e) { socket.send("caught"); }
            };
            return response;
          },
        };"#;
    let small = Limits {
        memory_limit: 8 << 20,
        ..Limits::default()
    };
    let mut w = World::new(&[], small);
    w.host
        .borrow_mut()
        .deploy("hog", script(hog).expect("compiles"), small)
        .expect("deploys");
    w.add_route("hog", "/");
    let c = w.connect("/");
    w.text(c, "eat");
    let stats = w.host.borrow().stats();
    assert_eq!(stats[0].1.restarts, 1, "{stats:?}");
    let last = w.frames(c).pop().expect("a close");
    assert_eq!((last.0, close_code(&last.1)), (OpCode::Close, 1011));
}

#[test]
fn a_gap_is_one_event_on_each_listening_socket_and_costs_nothing_elsewhere() {
    // `ongap` and a `gap` listener, a socket with none, and one that left its topic.
    let source = r#"
        export default {
          fetch(request) {
            const { socket, response } = upgradeWebSocket(request);
            const mode = new URL(request.url).pathname;
            socket.onopen = () => {
              socket.subscribe("news");
              if (mode === "/left") socket.unsubscribe("news");
            };
            if (mode !== "/deaf") {
              socket.ongap = (e) => socket.send(`ongap:${e.type}:${e.topic}`);
              socket.addEventListener("gap", (e) => socket.send(`listener:${e.topic}`));
            }
            socket.onmessage = (e) => socket.publish("news", e.data);
            return response;
          },
        };"#;
    let mut w = World::new(&[], Limits::default());
    w.host
        .borrow_mut()
        .deploy("f", script(source).expect("compiles"), Limits::default())
        .expect("deploys");
    w.add_route("f", "/");
    let (a, b) = (w.connect("/a"), w.connect("/b"));
    let deaf = w.connect("/deaf");
    let left = w.connect("/left");
    let invocations = w.host.borrow().stats()[0].1.invocations;
    w.gap("f", "news");
    let told = ["ongap:gap:news", "listener:news"];
    assert_eq!(w.texts(a), told);
    assert_eq!(w.texts(b), told);
    assert!(w.texts(deaf).is_empty() && w.texts(left).is_empty());
    assert_eq!(
        w.host.borrow().stats()[0].1.invocations,
        invocations + 2,
        "one call into JavaScript per listening socket, none for the others"
    );
    // What a handler sends comes before the channel's next message.
    w.text(deaf, "next");
    assert_eq!(w.texts(a), ["ongap:gap:news", "listener:news", "next"]);
    // A gap on a topic nobody holds reaches nobody.
    w.gap("f", "other");
    assert_eq!(w.texts(a).len(), 3);
}

/// Counts each socket's messages (each one's count is echoed to the client) and keeps, for
/// `/report`, the count its `close` event saw: the order of events is what it observes.
const COUNTER: &str = r#"
    let report = "none";
    export default {
      fetch(request) {
        const url = new URL(request.url);
        if (url.pathname === "/report") return new Response(report);
        const { socket, response } = upgradeWebSocket(request);
        let n = 0;
        socket.onmessage = () => socket.send(String(++n));
        socket.onclose = (e) => { report = `client ${n} ${e.code}`; };
        if (url.pathname === "/peer") {
          const peer = new WebSocket("ws://127.0.0.1:9001/feed");
          let p = 0;
          peer.onmessage = () => socket.send(`peer ${++p}`);
          peer.onclose = (e) => { report = `peer ${p} ${e.code}`; };
        }
        return response;
      },
    };"#;

/// A world serving `source` as the function `f` on `/`.
fn world_with(source: &str) -> World {
    let mut w = World::new(&[], Limits::default());
    w.host
        .borrow_mut()
        .deploy("f", script(source).expect("compiles"), Limits::default())
        .expect("deploys");
    w.add_route("f", "/");
    w
}

/// The body of the function's answer to `GET /report`.
fn report(w: &mut World) -> String {
    let r = w.request("GET /report HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    let text = w.sims[&r].text(Side::Client);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Text frames `p{from}`.. `p{to - 1}` from a peer (a server: unmasked), back to back.
fn peer_numbered(from: usize, to: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in from..to {
        encode_frame(
            OpCode::Text,
            true,
            format!("p{i}").as_bytes(),
            None,
            &mut bytes,
        );
    }
    bytes
}

/// Runs one turn of the worker's loop for the host (its due work: waiting messages).
fn turn(w: &mut World) {
    {
        let mut bus = w.bus.borrow_mut();
        w.host.borrow_mut().on_timeout(w.now, &mut *bus);
    }
    w.settle();
}

/// Browsers, Deno and Bun deliver every message a socket received before its `close` event:
/// so does the edge when it closes a connection (a drain, a reset) while messages wait
/// behind the per-turn cap. What their handlers send goes out before the edge's Close.
#[test]
fn every_message_read_reaches_the_script_before_the_edge_closes_the_client() {
    let n = MESSAGES_PER_TURN + 5;
    let mut w = world_with(COUNTER);
    // A drain: Close 1001 after the waiting messages and their replies.
    let c = w.connect("/");
    w.sim(c).recv(Side::Client, &numbered(0, n));
    w.settle();
    assert_eq!(
        w.texts(c).len(),
        MESSAGES_PER_TURN,
        "the cap holds the rest"
    );
    let now = w.now;
    w.sim(c).handle(Input::CloseAt {
        at: now,
        reason: CloseReason::Drained,
    });
    w.sim(c).advance(now);
    w.settle();
    assert_eq!(report(&mut w), format!("client {n} 1001"));
    let frames = w.frames(c);
    let texts: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(w.texts(c), texts, "every reply, in order");
    let last = frames.last().expect("a close");
    assert_eq!(
        (frames.len(), last.0, close_code(&last.1)),
        (n + 1, OpCode::Close, 1001),
        "the Close comes last"
    );
    // A reset: the script still gets every message read, then its close (1006).
    let c = w.connect("/");
    w.sim(c).recv(Side::Client, &numbered(0, n));
    w.settle();
    w.sim(c).handle(Input::Failed(Side::Client));
    w.settle();
    assert_eq!(w.sims[&c].closed, Some(CloseReason::ClientReset));
    assert_eq!(report(&mut w), format!("client {n} 1006"));
}

/// An outbound socket's messages are capped per turn like the client's (its reads stop while
/// some wait, and the worker comes back for them), and all of them reach the script before
/// its `close` event.
#[test]
fn a_peers_messages_are_capped_per_turn_and_all_come_before_its_close() {
    let n = MESSAGES_PER_TURN + 5;
    let mut w = world_with(COUNTER);
    let c = w.connect("/peer");
    accept_peer(&mut w, c);
    let peer_texts = |w: &World| {
        w.texts(c)
            .into_iter()
            .filter(|t| t.starts_with("peer "))
            .count()
    };
    w.sim(c).recv(Side::Origin, &peer_numbered(0, n));
    w.settle();
    assert_eq!(peer_texts(&w), MESSAGES_PER_TURN, "one batch per turn");
    assert!(
        w.sims[&c].sides[1].stopping,
        "the peer's reads stop while messages wait"
    );
    assert_eq!(
        w.host.borrow().poll_timeout(),
        Some(w.now),
        "the rest is due at once"
    );
    turn(&mut w);
    assert_eq!(peer_texts(&w), n);
    let texts: Vec<String> = (1..=n).map(|i| format!("peer {i}")).collect();
    assert_eq!(w.texts(c), texts);
    w.sim(c).read_ended(Side::Origin);
    assert!(w.sims[&c].sides[1].reading, "then it is read again");
    // The peer floods, then leaves: every message first, then its close.
    w.sim(c).recv(Side::Origin, &peer_numbered(n, 2 * n));
    w.settle();
    assert_eq!(peer_texts(&w), n + MESSAGES_PER_TURN);
    w.sim(c).eof(Side::Origin);
    w.settle();
    assert_eq!(peer_texts(&w), 2 * n);
    assert_eq!(report(&mut w), format!("peer {} 1006", 2 * n));
    assert_eq!(
        w.sims[&c].closed, None,
        "the client stays: its script decides"
    );
    // The client closes while the peer's messages wait: they still come before the peer's
    // close (the connection's end closes its peer).
    let c = w.connect("/peer");
    accept_peer(&mut w, c);
    w.sim(c).recv(Side::Origin, &peer_numbered(0, n));
    w.settle();
    w.send(c, OpCode::Close, &1000u16.to_be_bytes());
    let last = w.frames(c).pop().expect("the Close reply");
    assert_eq!((last.0, close_code(&last.1)), (OpCode::Close, 1000));
    assert_eq!(report(&mut w), format!("peer {n} 1006"));
}

/// A peer's first message may come in the same read as its 101 (a greeting): the script
/// gets it, on a connection's peer and on a client-less socket.
#[test]
fn a_peers_message_that_came_with_its_101_reaches_the_script() {
    let mut greeting = Vec::new();
    encode_frame(OpCode::Text, true, b"hello", None, &mut greeting);
    let mut w = world_with(COUNTER);
    let c = w.connect("/peer");
    accept_peer_with(&mut w, c, &greeting);
    assert_eq!(w.texts(c), ["peer 1"]);
    let feed = r#"
        let report = "none";
        const feed = new WebSocket("ws://127.0.0.1:9001/feed");
        feed.onmessage = (e) => { report = e.data; };
        export default { fetch() { return new Response(report); } };"#;
    let mut w = world_with(feed);
    assert_eq!(report(&mut w), "none");
    let o = *w
        .sims
        .iter()
        .find(|(_, s)| s.session.is_clientless())
        .expect("a client-less session")
        .0;
    accept_peer_with(&mut w, o, &greeting);
    assert_eq!(report(&mut w), "hello");
}

/// The same for a client-less session (a module-level `new WebSocket`) the edge drains.
#[test]
fn a_clientless_sockets_waiting_messages_come_before_the_edges_close() {
    let feed = r#"
        let report = "none";
        let n = 0;
        const feed = new WebSocket("ws://127.0.0.1:9001/feed");
        feed.onmessage = () => { report = `feed ${++n}`; };
        feed.onclose = (e) => { report = `feed ${n} closed ${e.code}`; };
        export default { fetch() { return new Response(report); } };"#;
    let n = MESSAGES_PER_TURN + 5;
    let mut w = world_with(feed);
    assert_eq!(report(&mut w), "none");
    let o = *w
        .sims
        .iter()
        .find(|(_, s)| s.session.is_clientless())
        .expect("a client-less session")
        .0;
    accept_peer(&mut w, o);
    w.sim(o).recv(Side::Origin, &peer_numbered(0, n));
    w.settle();
    assert_eq!(report(&mut w), format!("feed {MESSAGES_PER_TURN}"));
    assert!(w.sims[&o].sides[1].stopping);
    let now = w.now;
    w.sim(o).handle(Input::CloseAt {
        at: now,
        reason: CloseReason::Drained,
    });
    w.sim(o).advance(now);
    w.settle();
    assert_eq!(report(&mut w), format!("feed {n} closed 1001"));
}

/// Rough figures, not a benchmark (run in release, alone: `cargo test -p wsedge-js --release
/// -- --ignored --nocapture rough_figures`): echo events per second through the simulated
/// worker on one core, and the bytes an idle JS socket costs.
#[test]
#[ignore = "prints rough figures; run by hand"]
fn rough_figures() {
    let mut w = World::new(&[("echo", "/echo", "echo.js")], Limits::default());
    let c = w.connect("/echo");
    let mut frame = Vec::new();
    encode_frame(
        OpCode::Text,
        true,
        b"0123456789abcdef",
        Some([7, 1, 2, 3]),
        &mut frame,
    );
    let n = 200_000;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let sim = w.sim(c);
        sim.recv(Side::Client, &frame);
        sim.flush(Side::Client);
    }
    let took = started.elapsed();
    assert_eq!(w.frames(c).len(), n);
    println!(
        "echo through the Sim: {n} messages in {took:?}: {:.0} events/s",
        n as f64 / took.as_secs_f64()
    );
    // Idle sockets: the runtime's heap before and after N upgraded, idle connections.
    let before = w.host.borrow().stats()[0].1.memory_bytes;
    let count = 2_000;
    for _ in 0..count {
        w.connect("/echo");
    }
    let after = w.host.borrow().stats()[0].1.memory_bytes;
    let js = (after - before) as f64 / count as f64;
    let rust = std::mem::size_of::<crate::JsSession>()
        + std::mem::size_of::<(u64, crate::state::Conn)>()
        + 8;
    println!(
        "idle JS socket: {js:.0} bytes of JS heap + {rust} bytes of Rust state (JsSession, its entry in the runtime's table) = {:.0} bytes",
        js + rust as f64
    );
}
