//! The worker's JavaScript functions: its [`JsHost`] (created on the worker's thread with
//! the worker, never shared), the code it serves, and the three hooks through which code
//! that belongs to no connection event runs (see `wsedge_proto::function`):
//!
//! - after every event the loop dispatched, [`Worker::pump_functions`] creates the
//!   client-less sessions the scripts asked for (`new WebSocket(url)` outside a connection:
//!   a connection with no client socket, whose peer the ring connects like an origin) and
//!   feeds `Input::Wake` to the connections whose function has work, then delivers what
//!   they published;
//! - the host's timers (JavaScript timers, idle deadlines, promise jobs left by a capped
//!   drain) are one entry on the worker's timer wheel ([`TimerKey::Functions`]), re-armed at
//!   the host's `poll_timeout` before the loop waits;
//! - a new configuration (or `wsedgectl functions deploy`, which is one) deploys each
//!   script that changed: new connections get the new version, live ones finish on theirs.

use std::rc::Rc;

use wsedge_js::{FunctionStats, JsHost};
use wsedge_proto::function::{FunctionHost, Outbound};
use wsedge_proto::session::{Env, Input, Session};
use wsedge_proto::wheel::{Tick, TimerId};

use super::conn::Conn;
use super::{TimerKey, Worker};
use crate::conn_id::{ConnId, next_generation};

/// Rounds of outbound sessions and wakes handled after one event before the loop goes on
/// (a script that keeps waking itself cannot hold the worker: the rest wait for the next
/// turn of the loop, whose timer is armed at once).
const PUMP_ROUNDS: usize = 64;

/// The worker's function host and its one timer-wheel entry.
#[derive(Debug)]
pub(super) struct Functions {
    pub(super) host: JsHost,
    timer: Option<(TimerId, Tick)>,
    /// A pump stopped at its round cap: run it again before waiting.
    pending: bool,
}

impl Functions {
    pub(super) fn new(worker: usize, workers: usize, seed: u64) -> Functions {
        Functions {
            host: JsHost::new(worker, workers, seed),
            timer: None,
            pending: false,
        }
    }

    /// The host's timer is due now: the loop goes on without waiting.
    pub(super) fn due(&self, now: Tick) -> bool {
        self.timer.is_some_and(|(_, at)| at <= now)
    }

    /// Counters per function (route name) on this worker.
    pub(super) fn stats(&self) -> Vec<(String, FunctionStats)> {
        self.host.stats()
    }
}

impl Worker {
    /// Deploys the scripts of the settings in force that the host does not serve yet (or
    /// serves in another version), and removes the functions of routes that are gone.
    pub(super) fn deploy_scripts(&mut self) {
        let host = &mut self.functions.host;
        for s in &self.settings.scripts {
            if host
                .deployed(&s.route)
                .is_some_and(|(script, limits)| *script == s.script && limits == s.limits)
            {
                continue;
            }
            match host.deploy(&s.route, s.script.clone(), s.limits) {
                Ok(version) => {
                    tracing::info!(worker = self.index, function = %s.route, version, "function deployed");
                }
                // Checked when the settings were built; a runtime can still fail to start
                // (its memory limit, its top-level code's time).
                Err(e) => {
                    tracing::error!(worker = self.index, function = %s.route, "function not deployed: {e}");
                }
            }
        }
        for route in host.routes() {
            if !self.settings.scripts.iter().any(|s| s.route == route) {
                host.remove(&route);
            }
        }
    }

    /// Creates the client-less sessions and feeds the wakes the host has, until it has none
    /// (or the round cap), then delivers what was published meanwhile.
    pub(super) fn pump_functions(&mut self) {
        self.functions.pending = false;
        for _ in 0..PUMP_ROUNDS {
            let mut busy = false;
            while let Some(outbound) = self.functions.host.poll_outbound() {
                busy = true;
                self.open_outbound(outbound);
            }
            while let Some(key) = self.functions.host.poll_wake() {
                busy = true;
                let (worker, id) = ConnId::from_public(key);
                let Some(slot) = self.live_slot(id).filter(|_| worker == self.index) else {
                    continue;
                };
                if self.conns[slot].session.is_closed() {
                    continue;
                }
                self.feed(slot, Input::Wake);
                self.maybe_free(slot);
            }
            self.drain_bus();
            if !busy {
                return;
            }
        }
        self.functions.pending = true;
    }

    /// A script's outbound socket with no client: a connection of its own, whose session
    /// opens the peer at once.
    fn open_outbound(&mut self, outbound: Outbound) {
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.name == outbound.route)
            .map(Rc::clone)
        else {
            tracing::warn!(worker = self.index, function = %outbound.route, "outbound socket of a route that is gone: not opened");
            return;
        };
        if self.exit_when_empty {
            // Shutting down: no new connections, not even the scripts' own.
            return;
        }
        if self.conns.len() >= self.settings.max_connections {
            tracing::warn!(worker = self.index, function = %outbound.route, "outbound socket refused: the worker is at max_connections");
            return;
        }
        let now = self.now();
        self.next_generation = next_generation(self.next_generation);
        let seed = self.random();
        let accepted_us = self.now_us();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let id = ConnId::new(slot, self.next_generation);
        let mut env = Env {
            now,
            cfg: &self.settings.session,
            out: &mut self.out,
            bus: &mut self.bus,
            conn: id.public(self.index),
            worker: self.index,
        };
        let session = Session::outbound(
            &self.settings.session,
            route,
            outbound.function,
            seed,
            &mut env,
        );
        entry.insert(Conn::new(id, session, -1, accepted_us));
        self.apply_outputs(slot);
        if self.conns.contains(slot) {
            self.feed_drain(slot);
        }
        if self.conns.contains(slot) {
            self.maybe_free(slot);
        }
    }

    /// The host's timer fired: run what is due, then what it asked for.
    pub(super) fn on_functions_timer(&mut self, now: Tick) {
        self.functions.timer = None;
        self.functions.host.on_timeout(now, &mut self.bus);
        self.pump_functions();
    }

    /// Puts the host's wheel entry at its next deadline (a pump left at its cap: now).
    pub(super) fn rearm_functions_timer(&mut self, now: Tick) {
        let want = if self.functions.pending {
            Some(now)
        } else {
            self.functions.host.poll_timeout().map(|w| w.max(now))
        };
        match (self.functions.timer, want) {
            (Some((_, at)), Some(w)) if w == at => {}
            (current, Some(w)) => {
                if let Some((timer, _)) = current {
                    self.wheel.cancel(timer);
                }
                let timer = self.wheel.insert(w, TimerKey::Functions.pack());
                self.functions.timer = Some((timer, w));
            }
            (Some((timer, _)), None) => {
                self.wheel.cancel(timer);
                self.functions.timer = None;
            }
            (None, None) => {}
        }
    }
}
