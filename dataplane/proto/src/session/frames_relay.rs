//! The frames relay: the proxy reads both streams as WebSocket frames.

use super::*;

impl Session {
    // ----- the frames relay -------------------------------------------------------------

    /// Bytes the session holds (the client's held early frames, the origin's after its 101)
    /// through the frame tracker, as if received.
    pub(super) fn frames_replay(&mut self, from: Side, early: &[u8], env: &mut Env<'_>) {
        if early.is_empty() || self.ending != Ending::Open {
            return;
        }
        if from == Side::Client {
            // Held bytes count once relayed; the origin's came with its (counted) answer.
            self.flows[from.index()].count(early.len());
        }
        self.frames_chunk(from, None, early, env);
    }

    /// A chunk from `from` on a `frames` route: its frames are forwarded as ranges of the
    /// buffer (copies for bytes the session holds), with the proxy's frames at boundaries.
    pub(super) fn frames_chunk(
        &mut self,
        from: Side,
        buf: Option<BufId>,
        data: &[u8],
        env: &mut Env<'_>,
    ) {
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        let mut pieces = Vec::new();
        let outcome = state.on_chunk(from, data, env.now, &mut pieces);
        let last_forward = pieces.iter().rposition(|p| matches!(p, Piece::Forward(_)));
        let to = from.other();
        for (i, piece) in pieces.into_iter().enumerate() {
            let chunk = match (piece, buf) {
                (Piece::Forward(range), Some(buf)) => Chunk::Buf {
                    buf,
                    off: range.start as u32,
                    len: range.end as u32,
                    release: Some(i) == last_forward,
                },
                (Piece::Forward(range), None) => Chunk::relayed(data[range].to_vec()),
                (Piece::Inject(frame), _) => Chunk::own(frame),
            };
            let n = chunk.remaining();
            self.queued[to.index()] += n;
            if to == Side::Client && !chunk.is_relayed() {
                self.own_to_client += n as u64;
            }
            env.out.push(Output::Send { to, chunk });
        }
        if last_forward.is_none()
            && let Some(buf) = buf
        {
            env.out.push(Output::Release(buf));
        }
        self.frames_outcome(from, outcome, env);
    }

    pub(super) fn frames_outcome(&mut self, from: Side, outcome: ChunkOutcome, env: &mut Env<'_>) {
        self.flows[from.index()].done(outcome.dropped);
        if outcome.messages > 0 {
            env.out.push(Output::Metric(Metric::Messages {
                from,
                count: outcome.messages,
            }));
        }
        for code in outcome.close_codes {
            env.out.push(Output::Metric(Metric::CloseSeen(code)));
        }
        if outcome.close_received {
            self.first_close.get_or_insert(from);
        }
        if outcome.pong
            && let Stage::Frames(state) = &mut self.stage
        {
            state.ping_deadline = Deadline::NEVER;
        }
        if let Some((code, reason)) = outcome.violation {
            self.frames_violation(from, code, reason, env);
        }
    }

    /// Queues a frame the proxy originates toward `to`, at the next frame boundary.
    pub(super) fn frames_inject(
        &mut self,
        to: Side,
        frame: Vec<u8>,
        stop: bool,
        env: &mut Env<'_>,
    ) {
        if self.flows[to.other().index()].shut {
            // Its write half is already shut (its peer's FIN was passed on): nothing more
            // can reach it.
            return;
        }
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        if let Some(data) = state.inject(to, frame, stop) {
            self.queue_own(to, Chunk::own(data), env);
        }
    }

    pub(super) fn frames_send_close(
        &mut self,
        to: Side,
        code: u16,
        reason: &str,
        env: &mut Env<'_>,
    ) {
        let mask = (self.random() as u32).to_ne_bytes();
        let frame = frames::close_frame(to, code, reason, mask);
        env.out.push(Output::Metric(Metric::CloseSent(code)));
        self.frames_inject(to, frame, true, env);
    }

    /// Ends a `frames` connection politely: Close (the route's code, 1001 by default) to both
    /// sides at a frame boundary, then waits for the close handshake up to the grace period.
    pub(super) fn frames_graceful_close(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        let Stage::Frames(state) = &mut self.stage else {
            return self.close(reason, env);
        };
        if state.grace.is_some() {
            return;
        }
        let Some(route) = self.route.clone() else {
            return self.close(reason, env);
        };
        state.grace = Some((reason, env.now.saturating_add(route.frames.close_grace_ms)));
        state.ping_deadline = Deadline::NEVER;
        self.close_at = Deadline::NEVER;
        let (code, text) = (route.frames.close_code, route.frames.close_reason.as_str());
        self.frames_send_close(Side::Client, code, text, env);
        self.frames_send_close(Side::Origin, code, text, env);
    }

    /// A side broke the protocol or a limit: Close `code` to it, 1001 to the other side first.
    pub(super) fn frames_violation(
        &mut self,
        violator: Side,
        code: u16,
        reason: CloseReason,
        env: &mut Env<'_>,
    ) {
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        // Its stream is broken: no close reply is expected from it.
        state.close_received[violator.index()] = true;
        if state.grace.is_some() {
            return;
        }
        // The other side first: what it still sends (answers to the violator's valid frames
        // before the violation) reaches the violator before its Close, as it would directly.
        state.deferred_close = Some((violator, code));
        let grace = self
            .route
            .as_ref()
            .map_or(LINGER_MS, |r| r.frames.close_grace_ms);
        state.grace = Some((reason, env.now.saturating_add(grace)));
        state.ping_deadline = Deadline::NEVER;
        self.close_at = Deadline::NEVER;
        self.frames_send_close(violator.other(), 1001, "going away", env);
    }

    /// The graceful close's progress: the Close owed to a violator once the other side is
    /// done; the end once both close handshakes are.
    pub(super) fn frames_progress(&mut self, env: &mut Env<'_>) {
        let Some((reason, _)) = self.grace() else {
            return;
        };
        let eof = [self.flows[0].eof, self.flows[1].eof];
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        if let Some((violator, code)) = state.deferred_close {
            let other = violator.other().index();
            if state.close_received[other] || eof[other] {
                state.deferred_close = None;
                self.frames_send_close(violator, code, "", env);
            }
        }
        let Stage::Frames(state) = &self.stage else {
            return;
        };
        if state.deferred_close.is_none() && state.handshake_done(eof) {
            self.finish_after_flush(reason, env);
        }
    }

    /// Closes once the client's queue (a Close frame, most likely) is written, with a bounded
    /// wait; at once if nothing is queued.
    pub(super) fn finish_after_flush(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if self.queued[Side::Client.index()] == 0 {
            self.close(reason, env);
        } else {
            self.ending = Ending::Flushing {
                reason,
                until: env.now.saturating_add(env.cfg.linger_ms),
                then: AfterFlush::Close,
            };
        }
    }
}
