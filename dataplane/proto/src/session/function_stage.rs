//! The function stage: the edge answers (built-in or scripted functions, an optional peer).

use super::*;

impl Session {
    // ----- functions --------------------------------------------------------------------

    /// Runs `call` on the function with a context, then applies what it asked for.
    pub(super) fn with_function(
        &mut self,
        env: &mut Env<'_>,
        call: impl FnOnce(&mut dyn FunctionSession, &mut FnCx<'_>),
    ) {
        let random = self.random();
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if stage.finished {
            return;
        }
        let mut actions = std::mem::take(&mut stage.actions);
        let route = self.route.clone();
        let mut cx = FnCx {
            now: env.now,
            conn: env.conn,
            queued_to_client: self.queued[Side::Client.index()],
            route: route.as_ref().map_or("", |r| r.name.as_str()),
            random,
            actions: &mut actions,
            bus: &mut *env.bus,
        };
        call(stage.function.as_mut(), &mut cx);
        for action in actions.drain(..) {
            self.apply_function(action, env);
        }
        if let Stage::Function(stage) = &mut self.stage {
            stage.actions = actions;
        }
        self.progress(env);
        self.function_waiting(env);
    }

    /// After a function ran: the peer's bytes that came with its 101 go to it (unless it
    /// joined the peer, which takes them); while it has not answered its client (an async
    /// answer), the client is watched (a client that leaves ends it) and the answer is due
    /// within the route's origin handshake time (504); once upgraded, early client bytes held
    /// while its peer opened go to it (unless it joined the peer).
    pub(super) fn function_waiting(&mut self, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if stage.finished {
            return;
        }
        if stage.peer_open && !stage.peer_early.is_empty() {
            // The peer's bytes that came with its 101 (a function that joined its peer took
            // them): the function reads them as the peer's first bytes.
            let mut early = std::mem::take(&mut stage.peer_early);
            return self.with_function(env, |f, cx| f.on_peer(&mut early, cx));
        }
        if stage.clientless {
            return;
        }
        if !stage.upgraded {
            if !self.watching {
                self.watching = true;
                env.out.push(Output::WatchClient);
            }
            if !self.step_deadline.is_set() {
                let ms = self
                    .route
                    .as_ref()
                    .map_or(10_000, |r| r.timers.origin_handshake_ms);
                self.step_deadline = Deadline::at(env.now.saturating_add(ms));
            }
            return;
        }
        if stage.peer_open && !stage.held.is_empty() {
            let mut held = std::mem::take(&mut stage.held);
            self.with_function(env, |f, cx| f.on_client(&mut held, cx));
        }
    }

    pub(super) fn apply_function(&mut self, action: FnAction, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        match action {
            FnAction::Upgrade { .. } if self.is_clientless() => {}
            FnAction::Upgrade { protocol } => {
                let Some(accept) = self.client_accept() else {
                    return self.respond_error(426, CloseReason::NotWebSocket, env);
                };
                let Stage::Function(stage) = &mut self.stage else {
                    return;
                };
                if stage.upgraded {
                    return;
                }
                stage.upgraded = true;
                self.status = Some(101);
                self.step_deadline = Deadline::NEVER;
                if self.watching {
                    // The client is read from now on.
                    self.watching = false;
                    env.out.push(Output::UnwatchClient);
                }
                self.flows = [Flow::default(), Flow::default()];
                let answer = switching_protocols(&accept, protocol.as_deref());
                self.queue_own(Side::Client, Chunk::own(answer), env);
                env.out.push(Output::Metric(Metric::Upgraded));
                self.start_relay_timers(env);
                let Stage::Function(stage) = &mut self.stage else {
                    return;
                };
                let mut held = std::mem::take(&mut stage.held);
                if !held.is_empty() && !stage.peer_open {
                    self.with_function(env, |f, cx| f.on_client(&mut held, cx));
                } else if let Stage::Function(stage) = &mut self.stage {
                    stage.held = held;
                }
            }
            FnAction::Respond {
                status,
                response,
                reason,
            } => {
                if let Stage::Function(stage) = &mut self.stage {
                    stage.finished = true;
                }
                if self.is_clientless() {
                    return self.close(reason, env);
                }
                self.respond(status, Chunk::own(response), reason, env);
            }
            FnAction::SendClient(_) if self.is_clientless() => {}
            FnAction::SendClient(chunk) => self.queue_own(Side::Client, chunk, env),
            FnAction::SendPeer(chunk) => self.queue_own(Side::Origin, chunk, env),
            FnAction::OpenPeer {
                addr,
                head,
                accept,
                tls,
            } => {
                let Stage::Function(_) = self.stage else {
                    return;
                };
                let Stage::Function(function) =
                    std::mem::replace(&mut self.stage, Stage::Head(None))
                else {
                    return;
                };
                let route = self.route.clone();
                self.stage = Stage::Origin(Box::new(OriginStage {
                    head,
                    held: Vec::new(),
                    accept: Some(accept),
                    websocket: true,
                    head_request: false,
                    tried: 0,
                    attempts: 1,
                    connected: false,
                    key: None,
                    for_function: Some(function),
                    peer_tls: tls,
                }));
                self.origin = Some(addr.into());
                let connect_ms = route.map_or(5_000, |r| r.timers.connect_ms);
                self.step_deadline = Deadline::at(env.now.saturating_add(connect_ms));
                env.out.push(Output::Connect(addr));
            }
            FnAction::Finish(reason) => {
                if let Stage::Function(stage) = &mut self.stage {
                    stage.finished = true;
                    stage.function.on_closed(&mut FnCx {
                        now: env.now,
                        conn: env.conn,
                        queued_to_client: self.queued[Side::Client.index()],
                        route: self.route.as_ref().map_or("", |r| r.name.as_str()),
                        random: 0,
                        actions: &mut Vec::new(),
                        bus: &mut *env.bus,
                    });
                }
                if self.is_clientless() {
                    // No client: its last bytes to the peer are written, then it closes.
                    if self.queued[Side::Origin.index()] == 0 {
                        self.close(reason, env);
                    } else {
                        self.ending = Ending::Flushing {
                            reason,
                            until: env.now.saturating_add(env.cfg.linger_ms),
                            then: AfterFlush::Close,
                        };
                    }
                } else if self.queued[Side::Client.index()] == 0 {
                    self.linger(reason, env);
                } else {
                    self.ending = Ending::Flushing {
                        reason,
                        until: env.now.saturating_add(env.cfg.linger_ms),
                        then: AfterFlush::Linger,
                    };
                }
            }
            FnAction::JoinPeer => self.join_peer(env),
        }
    }

    /// A function hands its client and its open peer to the route's relay.
    pub(super) fn join_peer(&mut self, env: &mut Env<'_>) {
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if !stage.peer_open || !stage.upgraded {
            return;
        }
        stage.finished = true;
        let held = std::mem::take(&mut stage.held);
        let early = std::mem::take(&mut stage.peer_early);
        self.flows = [Flow::default(), Flow::default()];
        let Some(route) = self.route.clone() else {
            return;
        };
        if route.relay == RelayMode::Frames || route.function.is_some() {
            self.stage = Stage::Frames(Box::new(FramesState::new(&route.frames, env.now)));
            self.frames_replay(Side::Client, &held, env);
            // The peer's early bytes were not counted with an answer (its head was not
            // relayed): count them now.
            self.flows[Side::Origin.index()].count(early.len());
            self.frames_chunk(Side::Origin, None, &early, env);
        } else {
            self.stage = Stage::Stream(StreamRelay::default());
            self.queue_relayed(Side::Origin, held, env);
            self.queue_relayed(Side::Client, early, env);
        }
        self.progress(env);
    }

    pub(super) fn function_progress(&mut self, env: &mut Env<'_>) {
        let Stage::Function(stage) = &self.stage else {
            return;
        };
        let queued = self.queued[Side::Client.index()];
        let wants = stage.upgraded
            && !stage.finished
            && stage.function.wants_client()
            && (queued as u64) < env.cfg.max_in_flight;
        let peer = stage.peer_open && !stage.finished && stage.function.wants_peer();
        for (side, wants) in [(Side::Client, wants), (Side::Origin, peer)] {
            match (wants, self.reading[side.index()]) {
                (true, Reading::Off) => self.read(side, env),
                (false, Reading::Stream) => {
                    self.reading[side.index()] = Reading::Stopping;
                    env.out.push(Output::StopRead(side));
                }
                _ => {}
            }
        }
    }

    pub(super) fn on_deliver(&mut self, delivery: &mut Delivery, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        if let Stage::Function(stage) = &self.stage
            && stage.upgraded
        {
            self.with_function(env, |f, cx| f.on_delivery(delivery, cx));
        }
    }

    /// The client's accept value, if a function serves a WebSocket upgrade.
    pub(super) fn client_accept(&self) -> Option<[u8; 28]> {
        match &self.stage {
            Stage::Function(stage) => stage.accept,
            _ => None,
        }
    }
}
