//! `broadcast`: channels. Clients subscribe (by the request path, or with `wsedge.v1`
//! envelopes) and publish; a message reaches every subscriber on every worker (through the
//! [`Bus`]), framed once per worker and format. A subscriber whose queue passes its bound is
//! sent Close 1013 and dropped (`slow_consumer`), so one slow client never holds the others.
//!
//! On a channel that keeps a history ([`Bus::recoverable`]), a `wsedge.v1` client's path
//! channel is read back first: with `?since=<offset>:<epoch>` the messages it missed, else
//! only the current position; its live messages are held meanwhile and merged after
//! ([`crate::recovery::Merge`]). A malformed `since`, or one that cannot apply (a raw
//! client, no path channel, a channel with no history), is refused with 400.

use super::{BroadcastSpec, Bus, Delivery, FnAction, FnCx, FunctionRequest, FunctionSession};
use super::{Payload, Refused};
use crate::channels::{
    ClientOp, ProtocolError, Published, error_envelope, parse_client_message, path_channel,
    subscribed_envelope, unsubscribed_envelope,
};
use crate::chunk::Chunk;
use crate::endpoint::{EndpointConfig, EndpointEvent, Mode, ServerEndpoint, frame_message};
use crate::frame::OpCode;
use crate::recovery::{Item, Live, Merge, Since, Step, positioned_frame, since_of_query};
use crate::session::CloseReason;
use crate::upgrade::{BROADCAST_V1, offers_protocol};

/// One client of a `broadcast` route.
#[derive(Debug)]
pub struct Broadcast {
    spec: BroadcastSpec,
    endpoint: ServerEndpoint,
    /// The client chose the `wsedge.v1` subprotocol (JSON envelopes).
    v1: bool,
    /// The channel the request path named, if any (raw clients publish to it).
    path_channel: Option<String>,
    /// The endpoint finished: nothing more is sent or delivered.
    done: bool,
    events: Vec<EndpointEvent>,
    /// The path channel keeps a history: its position, and the switch from history to
    /// live (v1 clients only).
    merge: Option<Merge>,
    /// What to recover from (asked for at the upgrade).
    since: Option<Since>,
}

impl Broadcast {
    /// Opens a client: a path channel is joined before the upgrade, so a full channel (or a
    /// path that names no valid channel) is an HTTP answer, not a closed WebSocket.
    pub fn open(
        spec: &BroadcastSpec,
        request: &FunctionRequest<'_>,
        bus: &mut dyn Bus,
    ) -> Result<Broadcast, Refused> {
        let channel =
            path_channel(request.request.path(), request.path_prefix).map_err(|_| Refused {
                status: 404,
                reason: CloseReason::NoRoute,
            })?;
        let offered = request.request.header("sec-websocket-protocol");
        let v1 = offers_protocol(offered, BROADCAST_V1);
        let bad_since = Refused {
            status: 400,
            reason: CloseReason::BadSince,
        };
        let since = request
            .request
            .query()
            .map_or(Ok(None), since_of_query)
            .map_err(|_| bad_since)?;
        // History only for v1 clients (raw ones cannot be told positions or notices).
        let recoverable = v1 && channel.is_some_and(|c| bus.recoverable(c));
        if since.is_some() && !recoverable {
            return Err(bad_since);
        }
        if let Some(name) = channel {
            bus.subscribe(request.route, name, request.conn, spec.limits)
                .map_err(|e| Refused {
                    status: e.http_status(),
                    reason: CloseReason::Overloaded,
                })?;
        }
        Ok(Broadcast {
            spec: spec.clone(),
            endpoint: ServerEndpoint::new(EndpointConfig {
                max_message_len: request.max_message,
                mode: Mode::Messages,
            }),
            v1,
            path_channel: channel.map(str::to_owned),
            done: false,
            events: Vec::new(),
            merge: recoverable.then(|| Merge::reading(spec.max_send_queue)),
            since,
        })
    }

    /// Sends `json` to the client as one text message (a `wsedge.v1` envelope).
    fn send_text(cx: &mut FnCx<'_>, json: &[u8]) {
        let mut frame = Vec::with_capacity(json.len() + 4);
        frame_message(OpCode::Text, json, &mut frame);
        cx.send_client(Chunk::own(frame));
    }

    fn close(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        if let Some(frame) = self.endpoint.close(code, "") {
            cx.send_client(Chunk::own(frame));
        }
        self.finish(reason, cx);
    }

    fn finish(&mut self, reason: CloseReason, cx: &mut FnCx<'_>) {
        if !self.done {
            self.done = true;
            cx.bus.leave_all(cx.route, cx.conn);
            cx.actions.push(FnAction::Finish(reason));
        }
    }

    /// Sends what a recovery answer released: its notice, then messages (within the send
    /// queue's bound, as any delivery).
    fn send_steps(&mut self, channel: &str, steps: Vec<Step>, cx: &mut FnCx<'_>) {
        let mut queued = cx.queued_to_client;
        for step in steps {
            let frame = match step {
                Step::Notice(json) => {
                    let mut frame = Vec::with_capacity(json.len() + 4);
                    frame_message(OpCode::Text, &json, &mut frame);
                    frame
                }
                Step::Message(item) => {
                    positioned_frame(channel, item.payload.published(), item.position.as_ref())
                }
            };
            queued += frame.len();
            if queued > self.spec.max_send_queue {
                return self.close(1013, CloseReason::SlowConsumer, cx);
            }
            cx.send_client(Chunk::own(frame));
        }
    }

    /// A whole message from the client.
    fn on_message(&mut self, opcode: OpCode, payload: &[u8], cx: &mut FnCx<'_>) {
        let skip = (!self.spec.echo_to_sender).then_some(cx.conn);
        match parse_client_message(payload, self.v1) {
            Ok(ClientOp::PublishRaw) => match self.path_channel.as_deref() {
                Some(channel) if self.spec.publish => {
                    let message = Payload::from_published(Published::from_message(opcode, payload));
                    cx.bus.publish(cx.route, channel, message, skip);
                }
                // Raw clients that may not publish are told so by a policy close.
                _ => self.close(1008, CloseReason::PublishForbidden, cx),
            },
            Ok(ClientOp::Publish { channel, data }) => {
                if self.spec.publish {
                    cx.bus
                        .publish(cx.route, &channel, Payload::Json(data.to_owned()), skip);
                } else {
                    let error = ProtocolError::PublishForbidden.as_str();
                    Self::send_text(cx, &error_envelope(error, Some(&channel)));
                }
            }
            Ok(ClientOp::Subscribe { channel }) => {
                let reply = match cx
                    .bus
                    .subscribe(cx.route, &channel, cx.conn, self.spec.limits)
                {
                    Ok(count) => subscribed_envelope(&channel, count),
                    Err(e) => error_envelope(e.as_str(), Some(&channel)),
                };
                Self::send_text(cx, &reply);
            }
            Ok(ClientOp::Unsubscribe { channel }) => {
                cx.bus.unsubscribe(cx.route, &channel, cx.conn);
                Self::send_text(cx, &unsubscribed_envelope(&channel));
            }
            Err(e) => Self::send_text(cx, &error_envelope(e.as_str(), None)),
        }
    }
}

impl FunctionSession for Broadcast {
    fn on_start(&mut self, cx: &mut FnCx<'_>) {
        cx.actions.push(FnAction::Upgrade {
            protocol: self.v1.then(|| BROADCAST_V1.to_owned()),
        });
        // Asked once the client is upgraded: the answer (which comes through the broker
        // bridge, never within this call) finds it open.
        if self.merge.is_some()
            && let Some(channel) = &self.path_channel
        {
            cx.bus
                .recover(cx.route, channel, cx.conn, self.since.take());
        }
    }

    fn on_client(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.endpoint.on_bytes(data, &mut events);
        for event in events.drain(..) {
            if self.done {
                break;
            }
            match event {
                EndpointEvent::Send(frame) => cx.send_client(Chunk::own(frame)),
                EndpointEvent::Message { opcode, payload } => {
                    self.on_message(opcode, &payload, cx);
                }
                EndpointEvent::Data { .. } => {}
                closed @ EndpointEvent::Closed { .. } => {
                    let reason =
                        super::echo::closed_reason(&closed).unwrap_or(CloseReason::ClientClosed);
                    self.finish(reason, cx);
                }
            }
        }
        self.events = events;
    }

    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        self.finish(CloseReason::ClientClosed, cx);
    }

    fn on_delivery(&mut self, delivery: &mut Delivery, cx: &mut FnCx<'_>) {
        if self.done || !self.endpoint.is_open() {
            return;
        }
        let on_path = self.path_channel.as_deref() == Some(&*delivery.channel);
        if let Some(answer) = delivery.recovery() {
            if let (true, Some(merge)) = (on_path, self.merge.as_mut()) {
                let steps = merge.on_answer(&delivery.channel, cx.route, answer);
                self.send_steps(&delivery.channel.clone(), steps, cx);
            }
            return;
        }
        if let (true, false, Some(merge)) = (on_path, delivery.is_gap(), self.merge.as_mut()) {
            let item = Item {
                position: delivery.position().cloned(),
                payload: delivery.payload.clone(),
            };
            match merge.on_live(&item) {
                Live::Deliver => {}
                Live::Held | Live::Duplicate => return,
                Live::Overflow => return self.close(1013, CloseReason::SlowConsumer, cx),
            }
        }
        let frame = if self.v1 {
            delivery.v1_frame()
        } else if delivery.is_gap() {
            // Raw subscribers' protocol has no notices.
            return;
        } else {
            delivery.raw_frame()
        };
        if cx.queued_to_client + frame.len() > self.spec.max_send_queue {
            self.close(1013, CloseReason::SlowConsumer, cx);
            return;
        }
        cx.send_client(Chunk::Shared {
            data: frame,
            off: 0,
        });
    }

    fn on_shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        self.close(code, reason, cx);
    }

    fn on_closed(&mut self, cx: &mut FnCx<'_>) {
        if !self.done {
            self.done = true;
            cx.bus.leave_all(cx.route, cx.conn);
        }
    }
}
