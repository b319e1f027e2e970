//! The byte relay (buffered, splice, auto) once both sides are upgraded.

use super::*;

impl Session {
    // ----- the relay --------------------------------------------------------------------

    /// Bytes from `from`, in provided buffer `buf` (relayed in place) or, with `None`, in
    /// memory of the driver's (relayed by copy).
    pub(super) fn on_recv(
        &mut self,
        from: Side,
        buf: Option<BufId>,
        data: &mut [u8],
        env: &mut Env<'_>,
    ) {
        let release = |env: &mut Env<'_>| {
            if let Some(buf) = buf {
                env.out.push(Output::Release(buf));
            }
        };
        // The first `n` bytes, to send on: in place, or copied.
        let forward_chunk = |n: usize, data: &[u8]| match buf {
            Some(buf) => Chunk::Buf {
                buf,
                off: 0,
                len: n as u32,
                release: true,
            },
            None => Chunk::relayed(data[..n].to_vec()),
        };
        if self.ending != Ending::Open {
            // Discarding (a lingering close, or a final answer being written).
            release(env);
            return;
        }
        self.last_activity = env.now;
        match &mut self.stage {
            Stage::Stream(relay) => {
                let n = data.len();
                let auto = self
                    .route
                    .as_ref()
                    .is_some_and(|r| r.relay == RelayMode::Auto);
                // Bulk traffic one way makes the whole connection bulk: the reverse
                // direction splices too, before its own bytes arrive. Switching it later,
                // once it too filled a buffer, left its socket's receive buffer at the size
                // the buffered phase let the kernel grow it to, and an unbounded 16 KiB
                // flood ran at 0.86-0.95x `splice` (docs/benchmarks.md, "Pipe size and TCP
                // memory"); switched together, 0.98-1.10x.
                if auto && n as u32 == env.cfg.buffer_size && self.status == Some(101) {
                    relay.bulk = true;
                }
                let forward = self.flows[from.index()].on_data(data);
                if forward > 0 {
                    let to = from.other();
                    self.queued[to.index()] += forward;
                    env.out.push(Output::Send {
                        to,
                        chunk: forward_chunk(forward, data),
                    });
                } else {
                    release(env);
                }
            }
            Stage::Frames(_) => {
                self.flows[from.index()].count(data.len());
                self.frames_chunk(from, buf, data, env);
            }
            Stage::Function(_) if from == Side::Client => {
                release(env);
                self.with_function(env, |f, cx| f.on_client(data, cx));
            }
            Stage::Function(_) => {
                release(env);
                self.with_function(env, |f, cx| f.on_peer(data, cx));
            }
            Stage::Head(_) | Stage::Origin(_) => {
                // A plain request's body, read while the origin answers.
                if from == Side::Client {
                    let forward = self.flows[from.index()].on_data(data);
                    if forward > 0 {
                        self.queued[Side::Origin.index()] += forward;
                        env.out.push(Output::Send {
                            to: Side::Origin,
                            chunk: forward_chunk(forward, data),
                        });
                    } else {
                        release(env);
                    }
                } else {
                    release(env);
                }
            }
        }
        self.progress(env);
    }

    pub(super) fn on_eof(&mut self, side: Side, env: &mut Env<'_>) {
        match self.ending {
            Ending::Lingering { reason, .. } if side == Side::Client => {
                return self.close(reason, env);
            }
            Ending::Open => {}
            _ => return,
        }
        if let Stage::Stream(relay) = &mut self.stage {
            relay.splicing[side.index()] = false;
        }
        let flow = &mut self.flows[side.index()];
        if !flow.eof {
            flow.eof = true;
            self.first_eof.get_or_insert(side);
        }
        if let Reading::Stream | Reading::Off = self.reading[side.index()] {
            // The multishot read (or the splice pump) ended with the EOF.
            self.reading[side.index()] = Reading::Ended;
        }
        if let Stage::Function(_) = self.stage {
            return match side {
                Side::Client => self.with_function(env, |f, cx| f.on_client_gone(cx)),
                Side::Origin => self.with_function(env, |f, cx| {
                    f.on_peer_event(PeerEvent::Closed { reset: false }, cx);
                }),
            };
        }
        self.progress(env);
    }

    pub(super) fn on_failed(&mut self, side: Side, env: &mut Env<'_>) {
        let reason = match self.ending {
            Ending::Lingering { reason, .. } | Ending::Flushing { reason, .. } => reason,
            _ => match side {
                Side::Client => CloseReason::ClientReset,
                Side::Origin => CloseReason::OriginReset,
            },
        };
        if let Stage::Function(_) = self.stage
            && side == Side::Origin
            && self.ending == Ending::Open
        {
            return self.with_function(env, |f, cx| {
                f.on_peer_event(PeerEvent::Closed { reset: true }, cx);
            });
        }
        self.close(reason, env);
    }

    pub(super) fn on_sent(&mut self, to: Side, relayed: usize, own: usize, env: &mut Env<'_>) {
        self.last_activity = env.now;
        let i = to.index();
        self.queued[i] = self.queued[i].saturating_sub(relayed + own);
        self.flows[to.other().index()].done(relayed);
        if let Ending::Flushing { reason, then, .. } = self.ending {
            let flushed = if self.is_clientless() {
                Side::Origin
            } else {
                Side::Client
            };
            if to == flushed && self.queued[i] == 0 {
                match then {
                    AfterFlush::Linger => self.linger(reason, env),
                    AfterFlush::Close => self.close(reason, env),
                }
            }
            return;
        }
        if self.ending != Ending::Open {
            return;
        }
        // A plain request's head is written: the rest of its body may follow.
        if let Stage::Origin(stage) = &self.stage
            && to == Side::Origin
            && self.queued[i] == 0
            && stage.connected
            && !stage.websocket
        {
            let client = &mut self.flows[Side::Client.index()];
            if client.body.is_some() && !client.started {
                client.started = true;
            }
        }
        self.progress(env);
    }

    /// How many bytes a read of `from` armed now may bring before the kernel ends it: the
    /// room left in its direction's in-flight window plus one more window. The driver hands
    /// this to the kernel (a multishot recv's byte limit), so a flooding side holds at most
    /// two windows of the worker's shared buffers even before the session's stop lands
    /// (without a bound it held the whole ring and starved the other connections). Ending
    /// reads exactly at the window costs a re-armed read every buffer or two (the depth-
    /// limited 16 KiB relay lost a third); one window of slack keeps a flood fair at full
    /// speed (docs/benchmarks.md). `None` where no window applies (the head, a function's
    /// reads).
    pub fn read_budget(&self, from: Side, cfg: &SessionConfig) -> Option<u64> {
        let flow = &self.flows[from.index()];
        let windowed = matches!(
            self.stage,
            Stage::Stream(_) | Stage::Frames(_) | Stage::Origin(_)
        );
        windowed.then(|| cfg.max_in_flight.saturating_sub(flow.in_flight) + cfg.max_in_flight)
    }

    /// Whether `from` should be read now.
    pub(super) fn wants_read(&self, from: Side, env: &Env<'_>) -> bool {
        let flow = &self.flows[from.index()];
        let relaying = matches!(self.stage, Stage::Stream(_) | Stage::Frames(_));
        !flow.eof && flow.in_flight < env.cfg.max_in_flight && (relaying || flow.started)
    }

    /// Re-evaluates the relay after any event: start or stop reading each side (or splice
    /// it), pass half-closes on, and end the connection when both directions are done.
    pub(super) fn progress(&mut self, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        if let Stage::Function(_) = self.stage {
            return self.function_progress(env);
        }
        if matches!(self.stage, Stage::Head(_)) {
            return;
        }
        let upgraded = self.status == Some(101);
        if let Stage::Frames(_) = self.stage {
            self.frames_progress(env);
            if self.ending != Ending::Open {
                return;
            }
        }
        for from in [Side::Client, Side::Origin] {
            let to = from.other();
            if self.wants_shutdown(to) {
                self.flows[from.index()].shut = true;
                env.out.push(Output::ShutdownWrite(to));
            }
            let wants = self.wants_read(from, env);
            let i = from.index();
            let splice = match (&self.stage, &self.route) {
                (Stage::Stream(relay), Some(route)) if upgraded => {
                    !relay.no_splice[i]
                        && (route.relay == RelayMode::Splice
                            || (route.relay == RelayMode::Auto && relay.bulk))
                }
                _ => false,
            };
            if splice {
                let Stage::Stream(relay) = &mut self.stage else {
                    continue;
                };
                match self.reading[i] {
                    // `auto` going bulk: the stream read ends first (what it still delivers
                    // is forwarded as usual), then splicing starts at once; the driver
                    // writes the pipe after the bytes still queued to `to` (`Output::Splice`).
                    Reading::Stream => {
                        self.reading[i] = Reading::Stopping;
                        env.out.push(Output::StopRead(from));
                    }
                    Reading::Off if wants && !relay.splicing[i] => {
                        relay.splicing[i] = true;
                        env.out.push(Output::Splice(from));
                    }
                    _ => {}
                }
            } else if wants && self.reading[i] == Reading::Off {
                self.read(from, env);
            } else if !wants && self.reading[i] == Reading::Stream {
                self.reading[i] = Reading::Stopping;
                env.out.push(Output::StopRead(from));
            }
        }
        if let Some(reason) = self.finished() {
            if upgraded {
                let reason = self.grace().map_or(reason, |(r, _)| r);
                self.close(reason, env);
            } else {
                self.linger(reason, env);
            }
        }
    }

    pub(super) fn read(&mut self, side: Side, env: &mut Env<'_>) {
        if self.reading[side.index()] == Reading::Off {
            self.reading[side.index()] = Reading::Stream;
            env.out.push(Output::Read(side));
        }
    }

    /// Whether `to`'s write side should be shut now: its source ended and everything was
    /// written (the half-close travels on).
    pub(super) fn wants_shutdown(&self, to: Side) -> bool {
        let flow = &self.flows[to.other().index()];
        let relaying = match &self.stage {
            Stage::Stream(_) => true,
            // The proxy's own frames to `to` (a deferred Close) go before its FIN.
            Stage::Frames(state) => !state.owes(to),
            _ => false,
        };
        self.websocket
            && self.status == Some(101)
            && relaying
            && flow.eof
            && !flow.shut
            && flow.in_flight == 0
    }

    /// Whether the exchange is over, and why.
    pub(super) fn finished(&self) -> Option<CloseReason> {
        if !matches!(self.stage, Stage::Stream(_) | Stage::Frames(_)) {
            return None;
        }
        let [client, origin] = &self.flows;
        let drained = client.in_flight == 0 && origin.in_flight == 0;
        if self.status == Some(101) {
            let closer = match self.first_close.or(self.first_eof) {
                Some(Side::Origin) => CloseReason::OriginClosed,
                _ => CloseReason::ClientClosed,
            };
            (client.eof && origin.eof && client.shut && origin.shut && drained).then_some(closer)
        } else {
            // A response relayed as is: over when the origin is done and all of it was sent.
            (origin.eof && origin.in_flight == 0).then_some(if self.websocket {
                CloseReason::NotUpgraded
            } else {
                CloseReason::HttpDone
            })
        }
    }
}
