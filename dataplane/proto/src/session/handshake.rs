//! The handshake stages: the client's head (parse, route, firewall) and the origin (connect,
//! its answer, the 101 check).

use super::*;

impl Session {
    // ----- the client's head --------------------------------------------------------------

    pub(super) fn on_head_read(
        &mut self,
        side: Side,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&mut HeadContext<'_>>,
        env: &mut Env<'_>,
    ) {
        if self.reading[side.index()] == Reading::Head {
            self.reading[side.index()] = Reading::Off;
        }
        if self.ending != Ending::Open {
            // An answer is under way (a head read was pending): a lingering client is read to
            // discard from now on; an error there ends the linger.
            if let Ending::Lingering { reason, .. } = self.ending
                && side == Side::Client
            {
                if result <= 0 {
                    self.close(reason, env);
                } else {
                    self.read(Side::Client, env);
                }
            }
            return;
        }
        match side {
            Side::Client => self.on_client_head(buf, result, cx, env),
            Side::Origin => self.on_answer(buf, result, env),
        }
    }

    pub(super) fn on_client_head(
        &mut self,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&mut HeadContext<'_>>,
        env: &mut Env<'_>,
    ) {
        if result <= 0 {
            let reason = if result == 0 {
                CloseReason::ClientGone
            } else {
                CloseReason::ClientReset
            };
            return self.close(reason, env);
        }
        self.head_seen = true;
        self.last_activity = env.now;
        let Some(cx) = cx else {
            // The worker always gives the client's head its context; without one, no route.
            return self.respond_error(404, CloseReason::NoRoute, env);
        };
        let mut facts = HeadFacts::default();
        let decision = head::decide(
            &buf,
            &env.cfg.head_limits,
            self.peer.ip(),
            env.now,
            cx,
            &mut *env.bus,
            &mut facts,
        );
        self.head_bytes = buf.len() as u64;
        self.firewall_admitted = facts.firewall_admitted;
        let facts_accept = facts.client_accept;
        if facts.traceback.is_some() || facts.debug_pragma {
            self.extra = Some(Box::new(Extra {
                traceback: facts.traceback,
                debug_pragma: facts.debug_pragma,
            }));
        }
        match decision {
            HeadDecision::NeedMore => {
                self.stage = Stage::Head(None);
                self.reading[Side::Client.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Client,
                    buf,
                });
            }
            HeadDecision::Reject { status, reason } => self.respond_error(status, reason, env),
            HeadDecision::Firewall { route, verdict } => {
                self.route = Some(route);
                env.out.push(Output::Metric(Metric::Firewall));
                let reason = head::refusal(&verdict);
                match verdict.status() {
                    None => self.close(reason, env),
                    Some(status) => {
                        let mut answer = Vec::new();
                        verdict.write_response(&mut answer);
                        let answer = self.debug_headers(answer, env);
                        self.respond(status, Chunk::own(answer), reason, env);
                    }
                }
            }
            HeadDecision::Refused { route, refused } => {
                self.route = Some(route);
                self.respond_error(refused.status, refused.reason, env);
            }
            HeadDecision::Forward(forward) => {
                // The client's early bytes wait for the origin's 101 (or are never forwarded):
                // they count as received from the client only once relayed.
                self.head_bytes -= forward.held.len() as u64;
                self.websocket = forward.websocket;
                self.flows[Side::Client.index()].body = forward.body.map(Box::new);
                let route = Rc::clone(&forward.route);
                self.route = Some(forward.route);
                self.stage = Stage::Origin(Box::new(OriginStage {
                    head: forward.origin_head,
                    held: forward.held,
                    accept: forward.accept,
                    websocket: forward.websocket,
                    head_request: forward.head_request,
                    tried: 0,
                    attempts: 0,
                    connected: false,
                    key: forward.key,
                    for_function: None,
                    peer_tls: None,
                }));
                self.connect(&route, env);
                if self.ending == Ending::Open {
                    self.watching = true;
                    env.out.push(Output::WatchClient);
                }
            }
            HeadDecision::Function {
                route,
                function,
                held,
            } => {
                self.head_bytes -= held.len() as u64;
                self.websocket = true;
                self.route = Some(route);
                self.step_deadline = Deadline::NEVER;
                self.stage = Stage::Function(Box::new(FunctionStage {
                    function,
                    upgraded: false,
                    finished: false,
                    held,
                    peer_early: Vec::new(),
                    peer_open: false,
                    accept: facts_accept,
                    clientless: false,
                    actions: Vec::new(),
                }));
                self.with_function(env, |f, cx| f.on_start(cx));
            }
        }
    }

    // ----- the origin -----------------------------------------------------------------

    /// Starts (or retries) the connect to an origin of the route's pool: the balancer's
    /// choice among the live origins not tried yet. None live at the first attempt: 503 with
    /// `Retry-After`; none left for a retry: 502.
    pub(super) fn connect(&mut self, route: &Route, env: &mut Env<'_>) {
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        let chosen = route
            .balance
            .choose_keyed(route.origins.len(), stage.tried, stage.key);
        let first = stage.attempts == 0;
        let Some((index, &addr)) = chosen.and_then(|i| Some((i, route.origins.get(i)?))) else {
            if first && !route.origins.is_empty() {
                let answer = unavailable_response(route.balance.retry_after_secs());
                return self.respond(503, Chunk::own(answer), CloseReason::NoLiveOrigin, env);
            }
            return self.respond_error(502, CloseReason::OriginUnreachable, env);
        };
        stage.tried |= 1 << index;
        stage.attempts += 1;
        self.hold_origin(route, Some(index));
        self.origin = Some(addr.into());
        self.step_deadline = Deadline::at(env.now.saturating_add(route.timers.connect_ms));
        env.out.push(Output::Connect(addr));
    }

    pub(super) fn on_connected(&mut self, result: Result<(), ConnectFailure>, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        let Some(route) = self.route.clone() else {
            return;
        };
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        match result {
            Ok(()) => {
                stage.connected = true;
                let head = std::mem::take(&mut stage.head);
                self.queued[Side::Origin.index()] += head.len();
                env.out.push(Output::Send {
                    to: Side::Origin,
                    chunk: Chunk::own(head),
                });
                self.reading[Side::Origin.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Origin,
                    buf: Vec::with_capacity(ORIGIN_HEAD_BUF_START),
                });
                self.step_deadline =
                    Deadline::at(env.now.saturating_add(route.timers.origin_handshake_ms));
            }
            Err(ConnectFailure::Refused) if stage.attempts < 2 && route.origins.len() > 1 => {
                self.report_origin(&route, Outcome::Failed(Failure::ConnectFailed), env);
                self.connect(&route, env);
            }
            Err(failure) => {
                if failure == ConnectFailure::Refused {
                    self.report_origin(&route, Outcome::Failed(Failure::ConnectFailed), env);
                }
                let reason = match failure {
                    ConnectFailure::Refused => CloseReason::OriginUnreachable,
                    ConnectFailure::Local => CloseReason::ResourceExhausted,
                };
                self.origin_failed(reason, 502, env);
            }
        }
    }

    /// Counts this connection on origin `index` of `route`'s pool (none: on no origin),
    /// releasing the one it counted on before.
    pub(super) fn hold_origin(&mut self, route: &Route, index: Option<usize>) {
        if let Some(old) = self.origin_index.take() {
            route.balance.release(usize::from(old));
        }
        if let Some(index) = index.and_then(|i| u8::try_from(i).ok()) {
            route.balance.acquire(usize::from(index));
            self.origin_index = Some(index);
        }
    }

    /// Tells the pool's shared health what this connection saw of its origin.
    pub(super) fn report_origin(&self, route: &Route, outcome: Outcome, env: &mut Env<'_>) {
        if let Some(origin) = self.origin_index
            && route.balance.view().is_some()
        {
            env.out.push(Output::OriginOutcome {
                origin: usize::from(origin),
                outcome,
            });
        }
    }

    /// The origin (or a function's peer) failed before its answer: 502/504, or the function
    /// decides.
    pub(super) fn origin_failed(&mut self, reason: CloseReason, status: u16, env: &mut Env<'_>) {
        if let Stage::Origin(stage) = &mut self.stage
            && let Some(function) = stage.for_function.take()
        {
            env.out.push(Output::Abort(Side::Origin));
            self.stage = Stage::Function(function);
            self.with_function(env, |f, cx| {
                f.on_peer_event(PeerEvent::Failed { reason }, cx)
            });
            return;
        }
        self.respond_error(status, reason, env);
    }

    /// The origin's answer so far.
    pub(super) fn on_answer(&mut self, mut buf: Vec<u8>, result: i32, env: &mut Env<'_>) {
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        if result <= 0 {
            let reason = if result == 0 {
                CloseReason::OriginHeadIncomplete
            } else {
                CloseReason::OriginReset
            };
            return self.origin_failed(reason, 502, env);
        }
        let parsed = response::parse_response(&buf, &env.cfg.head_limits, stage.accept.as_ref());
        let response = match parsed {
            Ok(None) => {
                self.reading[Side::Origin.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Origin,
                    buf,
                });
                return;
            }
            Err(error) => {
                return self.origin_failed(CloseReason::OriginBadHandshake(error), 502, env);
            }
            Ok(Some(response)) => response,
        };
        let Stage::Origin(mut stage) = std::mem::replace(&mut self.stage, Stage::Head(None)) else {
            return;
        };
        self.step_deadline = Deadline::NEVER;
        self.last_activity = env.now;
        if self.watching {
            self.watching = false;
            env.out.push(Output::UnwatchClient);
        }
        if let Some(mut function) = stage.for_function.take() {
            // A function's peer: its 101 (checked against the edge's own key) is not relayed.
            if !response.upgraded {
                self.stage = Stage::Function(function);
                let reason = CloseReason::OriginBadHandshake(ResponseError::BadUpgrade(
                    response::BadUpgradeReason::MissingUpgrade,
                ));
                env.out.push(Output::Abort(Side::Origin));
                return self.with_function(env, |f, cx| {
                    f.on_peer_event(PeerEvent::Failed { reason }, cx);
                });
            }
            function.peer_open = true;
            function.peer_early = buf.split_off(response.head_len);
            self.stage = Stage::Function(function);
            return self.with_function(env, |f, cx| f.on_peer_event(PeerEvent::Open, cx));
        }
        let route = self.route.clone();
        if let Some(route) = &route {
            let outcome = if response.status >= 500 {
                Outcome::Failed(Failure::Status(response.status))
            } else {
                Outcome::Ok
            };
            self.report_origin(route, outcome, env);
        }
        self.status = Some(response.status);
        let after_head = buf.len() - response.head_len;
        if response.upgraded {
            self.flows = [Flow::default(), Flow::default()];
            let mut data = self.debug_headers_at(buf, response.head_len, env);
            let head_len = data.len() - after_head;
            env.out.push(Output::Metric(Metric::Upgraded));
            let frames = route.as_ref().is_some_and(|r| r.relay == RelayMode::Frames);
            let early_origin = if frames {
                data.split_off(head_len)
            } else {
                Vec::new()
            };
            self.queue_relayed(Side::Client, data, env);
            self.start_relay_timers(env);
            if frames && let Some(route) = route {
                self.stage = Stage::Frames(Box::new(FramesState::new(&route.frames, env.now)));
                self.frames_replay(Side::Client, &stage.held, env);
                self.frames_replay(Side::Origin, &early_origin, env);
            } else {
                self.stage = Stage::Stream(StreamRelay::default());
                if !stage.held.is_empty() {
                    let held = std::mem::take(&mut stage.held);
                    self.queue_relayed(Side::Origin, held, env);
                }
            }
            self.progress(env);
            return;
        }
        // Not upgraded: relayed with Connection: close up to the end of its body, then over.
        env.out.push(Output::Metric(Metric::PlainHttp));
        let client = &mut self.flows[Side::Client.index()];
        if !client.started || stage.websocket {
            client.eof = true;
            client.shut = true;
        }
        let (head, framing) = if response.status < 200 {
            // An interim answer (100, 103): the final one follows on the stream, which is
            // relayed as it is until the origin closes.
            (None, Some(BodyEnd::UntilClose))
        } else {
            let framing = if stage.head_request {
                None
            } else {
                response.body
            };
            (
                Some(response::closing_head(&buf[..response.head_len])),
                framing,
            )
        };
        let origin = &mut self.flows[Side::Origin.index()];
        origin.body = framing.map(Box::new);
        let body = &buf[response.head_len..];
        let body_len = match origin.body.as_mut().map(|f| f.feed(body)) {
            Some(Ok(Fed::More)) => body.len(),
            Some(Ok(Fed::Done(n))) => {
                origin.body = None;
                origin.eof = true;
                n
            }
            None | Some(Err(_)) => {
                origin.body = None;
                origin.eof = true;
                0
            }
        };
        let mut data = match head {
            Some(mut head) => {
                head.extend_from_slice(&body[..body_len]);
                head
            }
            None => {
                buf.truncate(response.head_len + body_len);
                buf
            }
        };
        data = self.debug_headers(data, env);
        self.queue_relayed(Side::Client, data, env);
        self.stage = Stage::Stream(StreamRelay::default());
        self.progress(env);
    }

    /// Queues bytes of the origin's stream that the session holds (a response head, early
    /// frames, held client bytes) to `to`, counted as relayed from the other side.
    pub(super) fn queue_relayed(&mut self, to: Side, data: Vec<u8>, env: &mut Env<'_>) {
        if data.is_empty() {
            return;
        }
        self.flows[to.other().index()].count(data.len());
        self.queued[to.index()] += data.len();
        env.out.push(Output::Send {
            to,
            chunk: Chunk::relayed(data),
        });
    }

    /// Queues the proxy's own bytes to `to`.
    pub(super) fn queue_own(&mut self, to: Side, chunk: Chunk, env: &mut Env<'_>) {
        let n = chunk.remaining();
        if n == 0 {
            return;
        }
        self.queued[to.index()] += n;
        if to == Side::Client {
            self.own_to_client += n as u64;
        }
        env.out.push(Output::Send { to, chunk });
    }

    /// Arms the maximum connection time (with the route's jitter).
    pub(super) fn start_relay_timers(&mut self, env: &mut Env<'_>) {
        let Some(route) = self.route.clone() else {
            return;
        };
        let t = route.timers;
        let spread = t.max_connection_ms * u64::from(t.jitter_pct.min(50)) / 100;
        let cut = if spread == 0 {
            0
        } else {
            self.random() % (spread + 1)
        };
        self.max_deadline =
            Deadline::at(self.accepted_at.saturating_add(t.max_connection_ms - cut));
        let _ = env;
    }

    /// The debug headers, added to a complete response in `response` when asked for.
    pub(super) fn debug_headers(&self, response: Vec<u8>, env: &Env<'_>) -> Vec<u8> {
        match (&self.extra, &self.route) {
            (Some(extra), Some(route)) if extra.debug_pragma => match &extra.traceback {
                Some(traceback) => head::with_debug_headers(
                    response,
                    traceback,
                    &route.name,
                    self.origin(),
                    env.worker,
                ),
                None => response,
            },
            _ => response,
        }
    }

    /// As [`Session::debug_headers`], for a buffer whose head ends at `head_len` (the bytes
    /// after it are the stream's).
    pub(super) fn debug_headers_at(
        &self,
        mut buf: Vec<u8>,
        head_len: usize,
        env: &Env<'_>,
    ) -> Vec<u8> {
        if !self.extra.as_ref().is_some_and(|e| e.debug_pragma) {
            return buf;
        }
        let rest = buf.split_off(head_len);
        let mut head = self.debug_headers(buf, env);
        head.extend_from_slice(&rest);
        head
    }

    pub(super) fn on_client_left(&mut self, reset: bool, env: &mut Env<'_>) {
        self.watching = false;
        // Waiting for the origin's answer, or for a function's (an async `fetch`).
        let waiting = match &self.stage {
            Stage::Origin(_) => true,
            Stage::Function(f) => !f.upgraded && !f.clientless,
            _ => false,
        };
        if waiting && self.ending == Ending::Open {
            let reason = if reset {
                CloseReason::ClientReset
            } else {
                CloseReason::ClientGone
            };
            self.close(reason, env);
        }
    }
}
