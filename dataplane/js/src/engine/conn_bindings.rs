//! The `__host` bindings that act on connections: answers (`upgradeWebSocket`, responses),
//! sockets (send, close, `bufferedAmount`, `new WebSocket`) and channels. Part of `engine`,
//! installed by `bindings`; what they change is the runtime's `State`, which the connection's
//! `JsSession` turns into actions.

use std::rc::Rc;

use rquickjs::{Ctx, Exception, Function, Object, Value};
use wsedge_proto::frame::{OpCode, encode_frame};
use wsedge_proto::function::Payload;

use super::bindings::{St, data_of};
use super::web::{WsTarget, client_head, http_response, is_token, ws_target};
use crate::state::{BusOp, Conn, Decision, Peer};

/// Adds the connection bindings to `host`.
pub(super) fn install<'js>(ctx: &Ctx<'js>, host: &Object<'js>, state: &St) -> rquickjs::Result<()> {
    // Answers.
    let st = Rc::clone(state);
    host.set(
        "isWebSocket",
        Function::new(ctx.clone(), move |conn: f64| -> bool {
            st.borrow()
                .conns
                .get(&(conn as u64))
                .is_some_and(|c| c.websocket && c.decision == Decision::Pending)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "upgrade",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  protocol: String,
                  idle: f64,
                  life: f64|
                  -> rquickjs::Result<()> {
                if !protocol.is_empty() && !is_token(&protocol) {
                    return Err(Exception::throw_type(
                        &ctx,
                        "upgradeWebSocket: protocol must be a token",
                    ));
                }
                let mut st = st.borrow_mut();
                let id = conn as u64;
                let now = st.now;
                let Some(c) = st.conns.get_mut(&id) else {
                    return Ok(());
                };
                if c.decision != Decision::Pending {
                    return Ok(());
                }
                c.decision = Decision::Upgrade {
                    protocol: (!protocol.is_empty()).then_some(protocol),
                };
                let ms = |s: f64| (s.is_finite() && s > 0.0).then_some((s * 1000.0) as u64);
                c.idle_ms = ms(idle);
                c.lifetime_ms = ms(life);
                c.last_active = now;
                c.opened_at = now;
                st.touch(id);
                Ok(())
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "respond",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  status: u16,
                  text: String,
                  headers: Vec<String>,
                  body: Value<'js>|
                  -> rquickjs::Result<()> {
                let body = if body.is_null() || body.is_undefined() {
                    Vec::new()
                } else {
                    data_of(&ctx, &body)?.1
                };
                let response = http_response(status, &text, &headers, &body);
                let mut st = st.borrow_mut();
                let id = conn as u64;
                if let Some(c) = st.conns.get_mut(&id)
                    && c.decision == Decision::Pending
                {
                    c.decision = Decision::Respond { status, response };
                    st.touch(id);
                }
                Ok(())
            },
        )?,
    )?;

    // Sockets.
    let st = Rc::clone(state);
    host.set(
        "send",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, socket: f64, data: Value<'js>| -> rquickjs::Result<()> {
                let (text, bytes) = data_of(&ctx, &data)?;
                let opcode = if text { OpCode::Text } else { OpCode::Binary };
                let socket = socket as u64;
                let (id, peer) = (socket / 2, socket % 2 == 1);
                let mut st = st.borrow_mut();
                let mask = if peer { st.random() as u32 } else { 0 };
                let Some(c) = st.conns.get_mut(&id) else {
                    return Ok(());
                };
                if peer {
                    encode_frame(
                        opcode,
                        true,
                        &bytes,
                        Some(mask.to_ne_bytes()),
                        &mut c.to_peer,
                    );
                } else if c.close_client.is_none() {
                    encode_frame(opcode, true, &bytes, None, &mut c.to_client);
                }
                st.touch(id);
                Ok(())
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "close",
        Function::new(
            ctx.clone(),
            move |socket: f64, code: u16, reason: String| {
                let socket = socket as u64;
                let (id, peer) = (socket / 2, socket % 2 == 1);
                let mut st = st.borrow_mut();
                let Some(c) = st.conns.get_mut(&id) else {
                    return;
                };
                let slot = if peer {
                    &mut c.close_peer
                } else {
                    &mut c.close_client
                };
                slot.get_or_insert((code, reason));
                st.touch(id);
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "buffered",
        Function::new(ctx.clone(), move |socket: f64| -> f64 {
            let socket = socket as u64;
            let st = st.borrow();
            st.conns.get(&(socket / 2)).map_or(0.0, |c| {
                if socket % 2 == 1 {
                    c.to_peer.len() as f64
                } else {
                    (c.buffered + c.to_client.len()) as f64
                }
            })
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "connect",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, href: String, protocols: Vec<String>| -> rquickjs::Result<u64> {
                let WsTarget {
                    addr,
                    host,
                    target,
                    tls,
                } = ws_target(&href)
                    .map_err(|m| Exception::throw_syntax(&ctx, &format!("WebSocket: {m}")))?;
                if let Some(p) = protocols.iter().find(|p| !is_token(p)) {
                    return Err(Exception::throw_syntax(
                        &ctx,
                        &format!("WebSocket: {p:?} is not a valid subprotocol"),
                    ));
                }
                let mut st = st.borrow_mut();
                let mut random = [0u8; 16];
                random[..8].copy_from_slice(&st.random().to_ne_bytes());
                random[8..].copy_from_slice(&st.random().to_ne_bytes());
                let (head, accept) = client_head(&host, &target, &protocols, random);
                let requested = Peer::Requested {
                    addr,
                    head,
                    accept,
                    tls,
                };
                // The peer of the connection being handled, if it has none yet.
                if let Some(id) = st.current
                    && let Some(c) = st.conns.get_mut(&id)
                    && !c.clientless
                    && c.peer == Peer::None
                    && c.fault.is_none()
                {
                    c.peer = requested;
                    st.touch(id);
                    return Ok(id * 2 + 1);
                }
                // A connection of its own, with no client.
                let id = st.add_conn(Conn {
                    clientless: true,
                    peer: requested,
                    ..Conn::default()
                });
                st.outbound.push(id);
                Ok(id * 2 + 1)
            },
        )?,
    )?;

    // Channels.
    host.set(
        "topicOk",
        Function::new(ctx.clone(), |t: String| {
            wsedge_proto::channels::is_valid_channel(&t)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "subscribe",
        Function::new(ctx.clone(), move |conn: f64, topic: String| {
            let mut st = st.borrow_mut();
            let id = conn as u64;
            let topic: Box<str> = topic.into();
            let Some(c) = st.conns.get_mut(&id) else {
                return;
            };
            let Some(key) = c.key else {
                return;
            };
            if c.topics.contains(&topic) {
                return;
            }
            c.topics.push(topic.clone());
            *st.topics.borrow_mut().entry(topic.clone()).or_insert(0) += 1;
            st.bus_ops.push(BusOp::Subscribe(key, topic));
            st.touch(id);
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "unsubscribe",
        Function::new(ctx.clone(), move |conn: f64, topic: String| {
            let mut st = st.borrow_mut();
            let id = conn as u64;
            let Some(c) = st.conns.get_mut(&id) else {
                return;
            };
            let Some(i) = c.topics.iter().position(|t| **t == *topic) else {
                return;
            };
            let topic = c.topics.swap_remove(i);
            let key = c.key;
            {
                let mut topics = st.topics.borrow_mut();
                if let Some(n) = topics.get_mut(&topic) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        topics.remove(&topic);
                    }
                }
            }
            if let Some(key) = key {
                st.bus_ops.push(BusOp::Unsubscribe(key, topic));
            }
            st.touch(id);
        })?,
    )?;
    // A server socket's script listens for `gap`: only then does a gap enter JavaScript.
    let st = Rc::clone(state);
    host.set(
        "listenGap",
        Function::new(ctx.clone(), move |conn: f64| {
            if let Some(c) = st.borrow_mut().conns.get_mut(&(conn as u64)) {
                c.gap_listener = true;
            }
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "isSubscribed",
        Function::new(ctx.clone(), move |conn: f64, topic: String| -> bool {
            st.borrow()
                .conns
                .get(&(conn as u64))
                .is_some_and(|c| c.topics.iter().any(|t| **t == *topic))
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "subscribers",
        Function::new(ctx.clone(), move |topic: String| -> f64 {
            st.borrow()
                .topics
                .borrow()
                .get(topic.as_str())
                .copied()
                .unwrap_or(0) as f64
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "publish",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  topic: String,
                  data: Value<'js>|
                  -> rquickjs::Result<()> {
                let (text, bytes) = data_of(&ctx, &data)?;
                let payload = if text {
                    Payload::Text(String::from_utf8(bytes).unwrap_or_default())
                } else {
                    Payload::Binary(bytes)
                };
                let mut st = st.borrow_mut();
                let skip = if conn < 0.0 {
                    None
                } else {
                    st.conns.get(&(conn as u64)).and_then(|c| c.key)
                };
                st.bus_ops.push(BusOp::Publish {
                    topic: topic.into(),
                    payload,
                    skip,
                });
                Ok(())
            },
        )?,
    )?;
    Ok(())
}
