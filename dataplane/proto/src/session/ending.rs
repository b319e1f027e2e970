//! How a session ends: flushing, lingering, closing with a reason (the [`Ending`] machine).

use super::*;

impl Session {
    // ----- endings ----------------------------------------------------------------------

    /// Answers `status` with a canned response, then closes with a lingering close.
    pub(super) fn respond_error(&mut self, status: u16, reason: CloseReason, env: &mut Env<'_>) {
        let data = error_response(status);
        self.respond(status, Chunk::Static { data, off: 0 }, reason, env);
    }

    /// Sends `answer` (a complete response), tears the origin down, then closes with a
    /// lingering close so the client can read it.
    pub(super) fn respond(
        &mut self,
        status: u16,
        answer: Chunk,
        reason: CloseReason,
        env: &mut Env<'_>,
    ) {
        if self.ending != Ending::Open {
            return;
        }
        self.status = Some(status);
        self.step_deadline = Deadline::NEVER;
        if self.origin.is_some() {
            env.out.push(Output::Abort(Side::Origin));
        }
        if self.reading[Side::Client.index()] == Reading::Stream {
            self.reading[Side::Client.index()] = Reading::Stopping;
            env.out.push(Output::StopRead(Side::Client));
        }
        self.queue_own(Side::Client, answer, env);
        self.ending = Ending::Flushing {
            reason,
            until: env.now.saturating_add(env.cfg.linger_ms),
            then: AfterFlush::Linger,
        };
    }

    /// Shuts the client's write side and drains what it still sends until its EOF or the
    /// linger deadline, so closing never resets an answer it has not read yet. The origin
    /// side is torn down. A client whose EOF has come has nothing left to drain: it closes
    /// at once.
    pub(super) fn linger(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if self.is_clientless() || self.reading[Side::Client.index()] == Reading::Ended {
            return self.close(reason, env);
        }
        if self.origin.is_some() {
            env.out.push(Output::Abort(Side::Origin));
        }
        self.ending = Ending::Lingering {
            reason,
            until: env.now.saturating_add(env.cfg.linger_ms),
        };
        env.out.push(Output::ShutdownWrite(Side::Client));
        match self.reading[Side::Client.index()] {
            // A head read still pending re-arms this when it completes.
            Reading::Head => {}
            Reading::Stopping => {}
            Reading::Stream => {}
            // Closed above.
            Reading::Ended => {}
            Reading::Off => self.read(Side::Client, env),
        }
    }

    /// Ends the connection: the last output.
    pub(super) fn close(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if let Ending::Closed(_) = self.ending {
            return;
        }
        if let Stage::Function(stage) = &mut self.stage {
            let mut actions = Vec::new();
            stage.function.on_closed(&mut FnCx {
                now: env.now,
                conn: env.conn,
                queued_to_client: self.queued[Side::Client.index()],
                route: self.route.as_ref().map_or("", |r| r.name.as_str()),
                random: 0,
                actions: &mut actions,
                bus: &mut *env.bus,
            });
        }
        if let Some(route) = self.route.clone() {
            self.hold_origin(&route, None);
        }
        self.ending = Ending::Closed(reason);
        self.step_deadline = Deadline::NEVER;
        env.out.push(Output::Close(reason));
    }

    /// Checks the session's own invariants; panics when one is broken (debug builds run it
    /// after every event, the fuzz target after every event in any build).
    pub fn check_invariants(&self) {
        for side in [Side::Client, Side::Origin] {
            let flow = &self.flows[side.index()];
            assert!(
                flow.in_flight <= flow.bytes,
                "{side:?}: more in flight ({}) than ever relayed ({})",
                flow.in_flight,
                flow.bytes
            );
        }
        if let Stage::Head(Some(_)) = self.stage {
            panic!("a head buffer is kept only while no head read holds it");
        }
        if let Ending::Closed(_) = self.ending {
            assert!(
                self.poll_timeout().is_none(),
                "a closed session has no timer"
            );
        }
    }
}
