//! Built-in functions: routes the edge answers itself instead of relaying to an origin.
//!
//! `echo` and `broadcast` complete the WebSocket handshake at the edge and speak the protocol
//! with a pure [`ServerEndpoint`] (unmasking in place in the provided buffer the bytes
//! arrived in). `bridge` is not here: it is a `frames` relay whose origin handshake the edge
//! makes itself (see `on_client_head`).

use std::rc::Rc;

use std::sync::Arc;
use wsedge_command::{FunctionConfig, FunctionKind};
use wsedge_proto::conn::{CloseReason, Side};
use wsedge_proto::endpoint::{EndpointConfig, EndpointEvent, Mode, ServerEndpoint, frame_message};

use wsedge_proto::channels::{
    ClientOp, Hub, HubLimits, ProtocolError, Published, error_envelope, parse_client_message,
    path_channel, raw_frame, subscribed_envelope, unsubscribed_envelope, v1_frame,
};
use wsedge_proto::frame::OpCode;
use wsedge_proto::handshake::parse_request;
use wsedge_proto::upgrade::{BROADCAST_V1, offers_protocol, switching_protocols};
use wsedge_proto::wheel::Tick;

use super::{Chunk, Command, LINGER_MS, Worker, connection_id};
use crate::driver::sys;
use crate::settings::RouteInfo;

/// A broadcast message as it travels between workers (each worker frames it once).
#[derive(Debug)]
pub(crate) enum Payload {
    Text(String),
    Binary(Vec<u8>),
    /// The JSON text of a v1 publish's `data`.
    Json(String),
}

impl Payload {
    fn published(&self) -> Published<'_> {
        match self {
            Payload::Text(t) => Published::Text(t),
            Payload::Binary(b) => Published::Binary(b),
            Payload::Json(j) => Published::Json(j),
        }
    }

    /// An HTTP or CLI publish body: text if it is UTF-8.
    pub(crate) fn from_body(body: Vec<u8>) -> Payload {
        match String::from_utf8(body) {
            Ok(text) => Payload::Text(text),
            Err(e) => Payload::Binary(e.into_bytes()),
        }
    }

    fn from_published(msg: Published<'_>) -> Payload {
        match msg {
            Published::Text(t) => Payload::Text(t.to_owned()),
            Published::Binary(b) => Payload::Binary(b.to_vec()),
            Published::Json(j) => Payload::Json(j.to_owned()),
        }
    }
}

/// The function side of a connection the edge serves itself.
#[derive(Debug)]
pub(super) struct FunctionConn {
    pub(super) kind: FunctionKind,
    pub(super) endpoint: ServerEndpoint,
    /// The client chose the `wsedge.v1` subprotocol (JSON envelopes).
    pub(super) v1: bool,
    /// The endpoint finished the close handshake: close once the queue is written.
    pub(super) closed: bool,
    /// `broadcast`: the channel named by the request path, if any.
    path_channel: Option<String>,
}

impl FunctionConn {
    pub(super) fn new(config: &FunctionConfig, v1: bool, max_message: u64) -> FunctionConn {
        let mode = match config.kind {
            FunctionKind::Broadcast => Mode::Messages,
            _ => Mode::Streaming,
        };
        FunctionConn {
            kind: config.kind,
            endpoint: ServerEndpoint::new(EndpointConfig {
                max_message_len: max_message,
                mode,
            }),
            v1,
            closed: false,
            path_channel: None,
        }
    }
}

impl FunctionConn {
    /// Client bytes through the endpoint (unmasked in place): the bytes to send back (the
    /// echo) and what else happened.
    fn feed(&mut self, chunk: &mut [u8]) -> (Vec<u8>, Vec<EndpointEvent>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        match self.kind {
            FunctionKind::Echo => self.endpoint.echo(chunk, &mut out, &mut events),
            _ => self.endpoint.on_bytes(chunk, &mut events),
        }
        (out, events)
    }
}

/// Why a function connection ended, from the endpoint's `Closed` event.
pub(super) fn closed_reason(event: &EndpointEvent) -> Option<CloseReason> {
    match event {
        EndpointEvent::Closed { error: Some(_), .. } => {
            Some(CloseReason::ProtocolError(Side::Client))
        }
        EndpointEvent::Closed { error: None, .. } => Some(CloseReason::ClientClosed),
        _ => None,
    }
}

impl Worker {
    /// A function route got a complete head: answer the upgrade ourselves, then serve the
    /// client (`tail` = bytes it sent after its head).
    pub(super) fn function_upgrade(
        &mut self,
        slot: usize,
        info: Rc<RouteInfo>,
        mut tail: Vec<u8>,
        now: Tick,
    ) {
        let Some(config) = info.function.clone() else {
            return;
        };
        let limits = self.settings.head_limits;
        let random = self.random();
        let c = &mut self.conns[slot];
        let hs = c.hs.take().unwrap_or_default();
        let request = parse_request(&hs.head, &limits).ok().flatten();
        let offered = request
            .as_ref()
            .and_then(|r| r.header("sec-websocket-protocol"))
            .map(<[u8]>::to_vec);
        let channel = match request
            .as_ref()
            .map(|r| path_channel(r.path(), &info.path_prefix))
        {
            Some(Ok(channel)) => channel.map(str::to_owned),
            // A path that names no valid channel: refused before the upgrade.
            Some(Err(_)) | None if config.kind == FunctionKind::Broadcast => {
                self.respond_error(slot, 404, CloseReason::NoRoute);
                return;
            }
            _ => None,
        };
        drop(request);
        drop(hs);
        c.route = Some(Rc::clone(&info));
        let Some(accept) = c.conn.client_accept() else {
            self.respond_error(slot, 426, CloseReason::NotWebSocket);
            return;
        };
        let v1 = config.kind == FunctionKind::Broadcast
            && offers_protocol(offered.as_deref(), BROADCAST_V1);
        // A path channel is joined before the upgrade, so a full channel is an HTTP answer.
        if config.kind == FunctionKind::Broadcast
            && let Some(name) = channel.as_deref()
        {
            let key = self.conn_key(slot);
            if let Err(e) = self.hub(&info).subscribe(key, name) {
                self.respond_error(slot, e.http_status(), CloseReason::Overloaded);
                return;
            }
        }
        let c = &mut self.conns[slot];
        let answer = switching_protocols(&accept, v1.then_some(BROADCAST_V1));
        c.extra_to_client += answer.len() as u64;
        c.sides[Side::Client.index()].push(Chunk::Owned {
            data: answer,
            off: 0,
            counted: false,
            origin_head: false,
        });
        c.conn.on_function_upgrade(now, info.timers, random);
        c.compact = true;
        let max_message = info.frames.client_max_message.unwrap_or(u64::MAX);
        let mut function = FunctionConn::new(&config, v1, max_message);
        function.path_channel = channel;
        c.function = Some(Box::new(function));
        self.stats.upgraded += 1;
        self.record_handshake(slot);
        self.kick_send(slot, Side::Client);
        if !tail.is_empty() {
            self.function_input(slot, &mut tail, now);
        }
        self.function_read(slot);
    }

    /// Keeps the client read while its queue is short (echo backpressure).
    pub(super) fn function_read(&mut self, slot: usize) {
        let limit = self.settings.relay.max_in_flight as usize;
        let c = &self.conns[slot];
        let Some(f) = c.function.as_ref() else {
            return;
        };
        if c.closing.is_some() || c.after_send.is_some() || c.linger.is_some() || f.closed {
            return;
        }
        let io = &c.sides[Side::Client.index()];
        if !io.recv_armed && io.queued < limit {
            self.arm_recv(slot, Side::Client);
        } else if io.recv_armed && !io.recv_cancelled && io.queued >= limit {
            self.cancel_recv(slot, Side::Client);
        }
    }

    /// A recv completion on a function connection.
    pub(super) fn function_on_recv(&mut self, slot: usize, bid: u16, n: usize, now: Tick) {
        self.stats.bytes_from_clients += n as u64;
        let c = &mut self.conns[slot];
        // The bytes are consumed here (copied or dropped): nothing stays in flight.
        c.conn.on_recv(Side::Client, n, now);
        c.conn.on_dropped(Side::Client, n);
        let Some(f) = c.function.as_mut() else {
            self.bufs.give_back(bid);
            return;
        };
        let (out, events) = f.feed(self.bufs.bytes_mut(bid, n));
        self.bufs.give_back(bid);
        self.function_output(slot, out, events, now);
    }

    /// Bytes that arrived with the head (no provided buffer).
    fn function_input(&mut self, slot: usize, bytes: &mut [u8], now: Tick) {
        let c = &mut self.conns[slot];
        let Some(f) = c.function.as_mut() else {
            return;
        };
        let (out, events) = f.feed(bytes);
        self.function_output(slot, out, events, now);
    }

    fn function_output(
        &mut self,
        slot: usize,
        out: Vec<u8>,
        events: Vec<EndpointEvent>,
        now: Tick,
    ) {
        self.function_send(slot, out);
        for event in events {
            if self.conns[slot].closing.is_some() {
                return;
            }
            match event {
                EndpointEvent::Send(frame) => self.function_send(slot, frame),
                EndpointEvent::Message { opcode, payload } => {
                    self.broadcast_on_message(slot, opcode, payload, now);
                }
                EndpointEvent::Data { .. } => {}
                closed @ EndpointEvent::Closed { .. } => {
                    let reason = closed_reason(&closed).unwrap_or(CloseReason::ClientClosed);
                    self.function_finish(slot, reason, now);
                }
            }
        }
        self.function_read(slot);
    }

    /// Sends `json` to the client as one text message (a `wsedge.v1` envelope).
    fn function_send_text(&mut self, slot: usize, json: &[u8]) {
        let mut frame = Vec::with_capacity(json.len() + 4);
        frame_message(OpCode::Text, json, &mut frame);
        self.function_send(slot, frame);
    }

    fn function_send(&mut self, slot: usize, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let c = &mut self.conns[slot];
        c.extra_to_client += bytes.len() as u64;
        c.sides[Side::Client.index()].push(Chunk::Owned {
            data: bytes,
            off: 0,
            counted: false,
            origin_head: false,
        });
        self.kick_send(slot, Side::Client);
    }

    /// The close handshake is done (or failed): close once the queue is written, with a
    /// bounded wait for a client that does not read.
    fn function_finish(&mut self, slot: usize, reason: CloseReason, now: Tick) {
        self.broadcast_leave_all(slot);
        let c = &mut self.conns[slot];
        if let Some(f) = c.function.as_mut() {
            f.closed = true;
        }
        c.conn.close();
        if c.sides[Side::Client.index()].outq.is_empty() {
            self.start_linger(slot, reason, now);
        } else {
            c.after_send = Some(reason);
            c.send_deadline = Some(now + LINGER_MS);
        }
    }

    /// The edge ends a function connection: Close `code` to the client, then the same
    /// bounded wait as [`Worker::function_finish`].
    pub(super) fn function_close(&mut self, slot: usize, code: u16, reason: CloseReason) {
        let now = self.now();
        let frame = self.conns[slot]
            .function
            .as_mut()
            .and_then(|f| f.endpoint.close(code, ""));
        if let Some(frame) = frame {
            self.function_send(slot, frame);
        }
        self.function_finish(slot, reason, now);
    }
}

impl Worker {
    fn conn_key(&self, slot: usize) -> u64 {
        connection_id(self.index, slot, self.conns[slot].generation).to_raw()
    }

    fn hub(&mut self, info: &RouteInfo) -> &mut Hub<u64> {
        let limits = info
            .function
            .as_ref()
            .map_or(HubLimits::default(), |f| HubLimits {
                max_subscribers: f.max_subscribers,
                max_channels_per_client: f.max_channels_per_client,
            });
        self.hubs
            .entry(info.name.clone())
            .or_insert_with(|| Hub::new(limits))
    }

    /// Leaves every channel (the connection is ending).
    pub(super) fn broadcast_leave_all(&mut self, slot: usize) {
        let Some(route) = self.conns[slot].route.clone() else {
            return;
        };
        if !self.conns[slot]
            .function
            .as_ref()
            .is_some_and(|f| f.kind == FunctionKind::Broadcast)
        {
            return;
        }
        let key = self.conn_key(slot);
        if let Some(hub) = self.hubs.get_mut(&route.name) {
            hub.remove_conn(key);
        }
    }

    /// A whole message from a broadcast client.
    fn broadcast_on_message(&mut self, slot: usize, opcode: OpCode, payload: Vec<u8>, _now: Tick) {
        let Some(route) = self.conns[slot].route.clone() else {
            return;
        };
        let Some(config) = route.function.as_ref() else {
            return;
        };
        let Some(f) = self.conns[slot].function.as_ref() else {
            return;
        };
        let v1 = f.v1;
        let key = self.conn_key(slot);
        let skip = (!config.echo_to_sender).then_some(key);
        let op = parse_client_message(&payload, v1);
        match op {
            Ok(ClientOp::PublishRaw) => {
                let channel = f.path_channel.clone();
                match channel {
                    Some(channel) if config.publish => {
                        let message =
                            Payload::from_published(Published::from_message(opcode, &payload));
                        self.publish(&route.name, &channel, Arc::new(message), skip);
                    }
                    // Raw clients that may not publish are told so by a policy close.
                    _ => self.function_close(slot, 1008, CloseReason::PublishForbidden),
                }
            }
            Ok(ClientOp::Publish { channel, data }) => {
                if config.publish {
                    let message = Payload::Json(data.to_owned());
                    self.publish(&route.name, &channel, Arc::new(message), skip);
                } else {
                    let error = ProtocolError::PublishForbidden.as_str();
                    self.function_send_text(slot, &error_envelope(error, Some(&channel)));
                }
            }
            Ok(ClientOp::Subscribe { channel }) => {
                let reply = match self.hub(&route).subscribe(key, &channel) {
                    Ok(count) => subscribed_envelope(&channel, count),
                    Err(e) => error_envelope(e.as_str(), Some(&channel)),
                };
                self.function_send_text(slot, &reply);
            }
            Ok(ClientOp::Unsubscribe { channel }) => {
                self.hub(&route).unsubscribe(key, &channel);
                self.function_send_text(slot, &unsubscribed_envelope(&channel));
            }
            Err(e) => self.function_send_text(slot, &error_envelope(e.as_str(), None)),
        }
    }

    /// Publishes `message` on `channel`: delivered here, and sent to every other worker.
    pub(super) fn publish(
        &mut self,
        route: &str,
        channel: &str,
        message: Arc<Payload>,
        skip: Option<u64>,
    ) -> usize {
        let delivered = self.deliver(Some(route), channel, &message, skip);
        let channel: Arc<str> = Arc::from(channel);
        let route: Arc<str> = Arc::from(route);
        for (tx, fd) in &self.peers {
            let sent = tx.send(Command::Publish {
                route: Some(Arc::clone(&route)),
                channel: Arc::clone(&channel),
                message: Arc::clone(&message),
                skip,
                reply: None,
            });
            if sent.is_ok() {
                sys::eventfd_signal(*fd);
            }
        }
        delivered
    }

    /// Queues `message` to this worker's subscribers of `channel`: framed once per format
    /// and shared by every send. A subscriber whose queue passes its bound is closed (1013).
    /// `route`: only that broadcast route's channel; `None`: every broadcast route's.
    pub(super) fn deliver(
        &mut self,
        route: Option<&str>,
        channel: &str,
        message: &Payload,
        skip: Option<u64>,
    ) -> usize {
        let mut raw: Option<Rc<[u8]>> = None;
        let mut v1: Option<Rc<[u8]>> = None;
        let mut targets: Vec<u64> = Vec::new();
        for (name, hub) in &self.hubs {
            if route.is_none_or(|r| r == name) {
                targets.extend(hub.subscribers(channel).filter(|k| Some(*k) != skip));
            }
        }
        let mut delivered = 0;
        for key in targets {
            let slot = (key & 0xffff_ffff) as usize;
            let generation = ((key >> 32) as u32) & 0x00ff_ffff;
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            if c.generation != generation || c.closing.is_some() || c.after_send.is_some() {
                continue;
            }
            let Some(f) = c.function.as_ref() else {
                continue;
            };
            let frame = if f.v1 {
                Rc::clone(
                    v1.get_or_insert_with(|| Rc::from(v1_frame(channel, message.published()))),
                )
            } else {
                Rc::clone(raw.get_or_insert_with(|| Rc::from(raw_frame(message.published()))))
            };
            let bound = c
                .route
                .as_ref()
                .and_then(|r| r.function.as_ref())
                .map_or(usize::MAX, |f| f.max_send_queue);
            let io = &mut c.sides[Side::Client.index()];
            if io.queued + frame.len() > bound {
                self.stats.slow_consumers += 1;
                self.function_close(slot, 1013, CloseReason::SlowConsumer);
                continue;
            }
            c.extra_to_client += frame.len() as u64;
            io.push(Chunk::Shared {
                data: frame,
                off: 0,
            });
            self.kick_send(slot, Side::Client);
            delivered += 1;
        }
        delivered
    }

    /// Subscribers of `channel` on this worker, over every broadcast route.
    pub(super) fn presence(&self, channel: &str) -> usize {
        self.hubs.values().map(|h| h.local_count(channel)).sum()
    }
}
