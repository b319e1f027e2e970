//! The session's one timer: which deadline is next and what happens when it passes.

use super::*;

impl Session {
    // ----- timers -----------------------------------------------------------------------

    pub(super) fn on_timeout(&mut self, env: &mut Env<'_>) {
        let now = env.now;
        match self.ending {
            Ending::Flushing { reason, until, .. } | Ending::Lingering { reason, until } => {
                if now >= until {
                    self.close(reason, env);
                }
                return;
            }
            Ending::Closed(_) => return,
            Ending::Open => {}
        }
        if self.step_deadline.get().is_some_and(|d| now >= d) {
            self.step_deadline = Deadline::NEVER;
            return match &self.stage {
                Stage::Head(_) => {
                    if self.head_seen {
                        self.respond_error(408, CloseReason::HandshakeTimeout, env);
                    } else {
                        self.close(CloseReason::HandshakeTimeout, env);
                    }
                }
                Stage::Origin(o) if o.connected => {
                    self.origin_failed(CloseReason::OriginHandshakeTimeout, 504, env);
                }
                Stage::Function(_) => {
                    // The function has not answered the request in time.
                    if let Stage::Function(stage) = &mut self.stage {
                        stage.finished = true;
                    }
                    self.respond_error(504, CloseReason::FunctionTimeout, env);
                }
                _ => {
                    if let Some(route) = self.route.clone()
                        && matches!(&self.stage, Stage::Origin(o) if o.for_function.is_none())
                    {
                        let timeout = Outcome::Failed(Failure::ConnectTimeout);
                        self.report_origin(&route, timeout, env);
                    }
                    self.origin_failed(CloseReason::OriginConnectTimeout, 502, env)
                }
            };
        }
        if let Some((reason, grace_end)) = self.grace() {
            // Only the grace period counts now: the close handshake is in progress.
            if now >= grace_end {
                self.close(reason, env);
            }
            return;
        }
        if self.max_deadline.get().is_some_and(|d| now >= d) {
            return self.shutdown_gracefully(CloseReason::MaxConnectionTime, env);
        }
        if self.close_at.get().is_some_and(|at| now >= at) {
            self.close_at = Deadline::NEVER;
            return self.shutdown_gracefully(self.close_reason, env);
        }
        if self.ping_deadline().get().is_some_and(|d| now >= d) {
            return self.close(CloseReason::KeepaliveTimeout, env);
        }
        let Some(route) = self.route.clone() else {
            return;
        };
        let relaying = matches!(
            self.stage,
            Stage::Stream(_) | Stage::Frames(_) | Stage::Function(_)
        );
        if relaying
            && !self.is_clientless()
            && now >= self.last_activity.saturating_add(route.timers.idle_ms)
        {
            if let Stage::Function(_) = self.stage {
                return self.with_function(env, |f, cx| {
                    f.on_shutdown(1001, CloseReason::IdleTimeout, cx);
                });
            }
            return self.close(CloseReason::IdleTimeout, env);
        }
        if let (Stage::Frames(state), Some(ms)) = (&mut self.stage, route.frames.keepalive_ms)
            && !state.ping_deadline.is_set()
            && now >= self.last_activity.saturating_add(ms)
        {
            state.ping_deadline =
                Deadline::at(now.saturating_add(route.frames.keepalive_timeout_ms));
            let frame = state.ping_frame();
            self.frames_inject(Side::Client, frame, false, env);
        }
    }

    /// Ends it the politest way the stage allows: Close frames (frames relay, functions), or
    /// a close.
    pub(super) fn shutdown_gracefully(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        match &self.stage {
            Stage::Frames(_) if self.status == Some(101) => self.frames_graceful_close(reason, env),
            Stage::Function(f) if f.upgraded || f.clientless => {
                self.with_function(env, |f, cx| f.on_shutdown(1001, reason, cx));
            }
            _ => self.close(reason, env),
        }
    }
}
