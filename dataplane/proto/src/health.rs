//! Origin health: the rise/fall state machine of one origin, fed by active checks and by what
//! real connections saw (passive), with time as an input.
//!
//! One [`OriginHealth`] per origin of a pool. The dataplane keeps one per origin for the whole
//! process (shared by every worker behind a lock; only its `up` bit is read on the hot path)
//! and feeds it:
//! - [`Event::Check`]: the result of an active check (a TCP connect, or a WebSocket handshake
//!   expecting 101). `fall` failed checks in a row take an up origin down; `rise` good checks
//!   in a row bring a down origin back, whatever took it down.
//! - [`Event::Passive`]: what a worker's connection saw. `max_fails` failures in a row
//!   (connect refused or timed out, a 5xx answer to the handshake) eject the origin at once;
//!   any other answer resets the count.
//! - [`Event::Tick`]: time passes. Without active checks an ejected origin comes back when its
//!   ejection time is over, on probation: the next passive failure ejects it again at once,
//!   the next success ends the probation.
//!
//! No clock, no I/O: `now` is milliseconds on whatever monotonic scale the caller uses.

use std::fmt;

/// How many results decide, and how long an ejection lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thresholds {
    /// Good checks in a row that bring a down origin back (≥ 1).
    pub rise: u32,
    /// Failed checks in a row that take an up origin down (≥ 1).
    pub fall: u32,
    /// Passive failures in a row that eject an origin; 0 = no passive ejection.
    pub max_fails: u32,
    /// How long a passive ejection lasts when the pool has no active check (ms).
    pub eject_ms: u64,
    /// The pool runs active checks: only they re-admit an ejected origin.
    pub active: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rise: 2,
            fall: 3,
            max_fails: 3,
            eject_ms: 10_000,
            active: false,
        }
    }
}

/// Why a check or a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The TCP connect was refused or the address unreachable.
    ConnectFailed,
    /// The TCP connect did not complete in time.
    ConnectTimeout,
    /// Connected, but no complete answer in time (active WebSocket check).
    Timeout,
    /// The origin answered with this status: a 5xx to a handshake (passive), anything but
    /// 101 to a WebSocket check (active).
    Status(u16),
    /// An answer that is not a valid HTTP response or a 101 that fails the handshake checks,
    /// or the connection closed before a complete answer (active).
    BadAnswer,
}

impl Failure {
    /// A short label: `connect_failed`, `status_503`...
    pub fn label(self) -> String {
        match self {
            Failure::ConnectFailed => "connect_failed".into(),
            Failure::ConnectTimeout => "connect_timeout".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Status(s) => format!("status_{s}"),
            Failure::BadAnswer => "bad_answer".into(),
        }
    }
}

/// What a real connection saw of its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The origin answered the handshake (with anything but a 5xx).
    Ok,
    Failed(Failure),
}

/// An input of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An active check's result.
    Check(Result<(), Failure>),
    /// A connection's outcome, reported by a worker.
    Passive(Outcome),
    /// Time passed (ends an ejection without active checks).
    Tick,
}

/// Why an origin is in its state (for `wsedgectl origins` and the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// Up from the start (a new pool starts with every origin up).
    Initial,
    /// `fall` active checks failed in a row, the last with this.
    ChecksFailed(Failure),
    /// `max_fails` connections failed in a row, the last with this.
    Ejected(Failure),
    /// `rise` active checks passed in a row.
    ChecksPassed,
    /// The ejection time is over (no active checks): up on probation.
    EjectionOver,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Initial => f.write_str("initial"),
            Why::ChecksFailed(failure) => write!(f, "checks_failed: {}", failure.label()),
            Why::Ejected(failure) => write!(f, "ejected: {}", failure.label()),
            Why::ChecksPassed => f.write_str("checks_passed"),
            Why::EjectionOver => f.write_str("ejection_over"),
        }
    }
}

/// A change of state, returned by [`OriginHealth::on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    pub why: Why,
}

/// The health of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginHealth {
    up: bool,
    why: Why,
    /// When the current state began.
    since: u64,
    /// Failed checks in a row while up / good checks in a row while down.
    check_run: u32,
    /// Passive failures in a row while up.
    passive_fails: u32,
    /// Without active checks: when an ejection ends.
    ejected_until: Option<u64>,
    /// Re-admitted by time alone: the next passive failure ejects again.
    probation: bool,
    /// Counters for listings and metrics.
    pub checks: u64,
    pub checks_failed: u64,
    pub transitions: u64,
    pub ejections: u64,
    /// The last active check's result, if any ran.
    pub last_check: Option<Result<(), Failure>>,
}

impl OriginHealth {
    /// A new origin, up since `now`.
    pub fn new(now: u64) -> OriginHealth {
        OriginHealth {
            up: true,
            why: Why::Initial,
            since: now,
            check_run: 0,
            passive_fails: 0,
            ejected_until: None,
            probation: false,
            checks: 0,
            checks_failed: 0,
            transitions: 0,
            ejections: 0,
            last_check: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn why(&self) -> Why {
        self.why
    }

    /// When the current state began (the caller's scale).
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Up again by time alone, and not yet confirmed by a success.
    pub fn on_probation(&self) -> bool {
        self.probation
    }

    /// Passive failures in a row counted so far (0 when the last connection was fine).
    pub fn passive_fails(&self) -> u32 {
        self.passive_fails
    }

    /// The next moment a [`Event::Tick`] may change the state: the end of an ejection.
    pub fn next_deadline(&self) -> Option<u64> {
        self.ejected_until
    }

    /// Feeds one event at `now`; returns the transition it caused, if any.
    pub fn on(&mut self, now: u64, event: Event, t: &Thresholds) -> Option<Transition> {
        match event {
            Event::Check(result) => {
                self.checks += 1;
                self.last_check = Some(result);
                match (self.up, result) {
                    (true, Ok(())) => {
                        self.check_run = 0;
                        None
                    }
                    (true, Err(failure)) => {
                        self.check_run += 1;
                        self.checks_failed += 1;
                        (self.check_run >= t.fall.max(1))
                            .then(|| self.go(false, Why::ChecksFailed(failure), now))
                    }
                    (false, Ok(())) => {
                        self.check_run += 1;
                        (self.check_run >= t.rise.max(1))
                            .then(|| self.go(true, Why::ChecksPassed, now))
                    }
                    (false, Err(_)) => {
                        self.checks_failed += 1;
                        self.check_run = 0;
                        None
                    }
                }
            }
            // Reports from connections picked before a down transition change nothing.
            Event::Passive(_) if !self.up => None,
            Event::Passive(Outcome::Ok) => {
                self.passive_fails = 0;
                self.probation = false;
                None
            }
            Event::Passive(Outcome::Failed(failure)) => {
                if t.max_fails == 0 {
                    return None;
                }
                self.passive_fails += 1;
                if self.passive_fails < t.max_fails && !self.probation {
                    return None;
                }
                self.ejections += 1;
                let transition = self.go(false, Why::Ejected(failure), now);
                if !t.active {
                    self.ejected_until = Some(now.saturating_add(t.eject_ms));
                }
                Some(transition)
            }
            Event::Tick => match self.ejected_until {
                Some(until) if !self.up && now >= until => {
                    let transition = self.go(true, Why::EjectionOver, now);
                    self.probation = true;
                    Some(transition)
                }
                _ => None,
            },
        }
    }

    fn go(&mut self, up: bool, why: Why, now: u64) -> Transition {
        self.up = up;
        self.why = why;
        self.since = now;
        self.check_run = 0;
        self.passive_fails = 0;
        self.ejected_until = None;
        self.probation = false;
        self.transitions += 1;
        Transition { up, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: Thresholds = Thresholds {
        rise: 2,
        fall: 3,
        max_fails: 2,
        eject_ms: 10_000,
        active: true,
    };
    const PASSIVE: Thresholds = Thresholds {
        active: false,
        ..ACTIVE
    };
    const REFUSED: Failure = Failure::ConnectFailed;

    fn down(why: Why) -> Option<Transition> {
        Some(Transition { up: false, why })
    }

    fn up(why: Why) -> Option<Transition> {
        Some(Transition { up: true, why })
    }

    #[test]
    fn starts_up() {
        let h = OriginHealth::new(5);
        assert!(h.is_up());
        assert_eq!(h.why(), Why::Initial);
        assert_eq!(h.since(), 5);
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn fall_failed_checks_in_a_row_take_it_down() {
        let mut h = OriginHealth::new(0);
        assert_eq!(h.on(1, Event::Check(Err(REFUSED)), &ACTIVE), None);
        assert_eq!(h.on(2, Event::Check(Err(REFUSED)), &ACTIVE), None);
        let t = h.on(3, Event::Check(Err(Failure::Timeout)), &ACTIVE);
        assert_eq!(t, down(Why::ChecksFailed(Failure::Timeout)));
        assert!(!h.is_up());
        assert_eq!(h.since(), 3);
        assert_eq!((h.checks, h.checks_failed, h.transitions), (3, 3, 1));
        assert_eq!(h.last_check, Some(Err(Failure::Timeout)));
    }

    #[test]
    fn a_good_check_resets_the_fall_count() {
        let mut h = OriginHealth::new(0);
        h.on(1, Event::Check(Err(REFUSED)), &ACTIVE);
        h.on(2, Event::Check(Err(REFUSED)), &ACTIVE);
        assert_eq!(h.on(3, Event::Check(Ok(())), &ACTIVE), None);
        h.on(4, Event::Check(Err(REFUSED)), &ACTIVE);
        assert_eq!(h.on(5, Event::Check(Err(REFUSED)), &ACTIVE), None);
        assert!(h.is_up());
        assert!(h.on(6, Event::Check(Err(REFUSED)), &ACTIVE).is_some());
    }

    #[test]
    fn rise_good_checks_in_a_row_bring_it_back() {
        let mut h = OriginHealth::new(0);
        for now in 1..=3 {
            h.on(now, Event::Check(Err(REFUSED)), &ACTIVE);
        }
        assert_eq!(h.on(4, Event::Check(Ok(())), &ACTIVE), None);
        // A failure while down restarts the rise count.
        assert_eq!(h.on(5, Event::Check(Err(REFUSED)), &ACTIVE), None);
        assert_eq!(h.on(6, Event::Check(Ok(())), &ACTIVE), None);
        assert_eq!(
            h.on(7, Event::Check(Ok(())), &ACTIVE),
            up(Why::ChecksPassed)
        );
        assert!(h.is_up());
        assert_eq!(h.since(), 7);
        assert_eq!(h.transitions, 2);
    }

    #[test]
    fn max_fails_passive_failures_in_a_row_eject() {
        let mut h = OriginHealth::new(0);
        let fail = Event::Passive(Outcome::Failed(Failure::Status(503)));
        assert_eq!(h.on(1, fail, &PASSIVE), None);
        assert_eq!(h.passive_fails(), 1);
        assert_eq!(
            h.on(2, fail, &PASSIVE),
            down(Why::Ejected(Failure::Status(503)))
        );
        assert_eq!(h.ejections, 1);
        assert_eq!(h.next_deadline(), Some(10_002));
        assert_eq!(h.why().to_string(), "ejected: status_503");
    }

    #[test]
    fn a_passive_success_resets_the_count() {
        let mut h = OriginHealth::new(0);
        let fail = Event::Passive(Outcome::Failed(REFUSED));
        h.on(1, fail, &PASSIVE);
        h.on(2, Event::Passive(Outcome::Ok), &PASSIVE);
        assert_eq!(h.passive_fails(), 0);
        assert_eq!(h.on(3, fail, &PASSIVE), None);
        assert!(h.is_up());
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let t = Thresholds {
            max_fails: 0,
            ..PASSIVE
        };
        let mut h = OriginHealth::new(0);
        for now in 0..100 {
            assert_eq!(
                h.on(now, Event::Passive(Outcome::Failed(REFUSED)), &t),
                None
            );
        }
        assert!(h.is_up());
    }

    #[test]
    fn without_checks_the_ejection_ends_in_time_on_probation() {
        let mut h = OriginHealth::new(0);
        let fail = Event::Passive(Outcome::Failed(REFUSED));
        h.on(1, fail, &PASSIVE);
        h.on(2, fail, &PASSIVE);
        assert_eq!(h.on(10_001, Event::Tick, &PASSIVE), None);
        assert!(!h.is_up());
        assert_eq!(h.on(10_002, Event::Tick, &PASSIVE), up(Why::EjectionOver));
        assert!(h.is_up() && h.on_probation());
        assert_eq!(h.next_deadline(), None);
        // On probation one failure ejects again.
        assert_eq!(h.on(10_003, fail, &PASSIVE), down(Why::Ejected(REFUSED)));
        assert_eq!(h.ejections, 2);
        assert_eq!(h.next_deadline(), Some(20_003));
    }

    #[test]
    fn a_success_ends_the_probation() {
        let mut h = OriginHealth::new(0);
        let fail = Event::Passive(Outcome::Failed(REFUSED));
        h.on(1, fail, &PASSIVE);
        h.on(2, fail, &PASSIVE);
        h.on(10_002, Event::Tick, &PASSIVE);
        h.on(10_003, Event::Passive(Outcome::Ok), &PASSIVE);
        assert!(!h.on_probation());
        assert_eq!(h.on(10_004, fail, &PASSIVE), None);
        assert!(h.is_up());
    }

    #[test]
    fn with_checks_only_checks_readmit_an_ejected_origin() {
        let mut h = OriginHealth::new(0);
        let fail = Event::Passive(Outcome::Failed(Failure::ConnectTimeout));
        h.on(1, fail, &ACTIVE);
        assert_eq!(
            h.on(2, fail, &ACTIVE),
            down(Why::Ejected(Failure::ConnectTimeout))
        );
        assert_eq!(h.next_deadline(), None);
        // Time alone does nothing.
        assert_eq!(h.on(1_000_000, Event::Tick, &ACTIVE), None);
        assert!(!h.is_up());
        h.on(1_000_001, Event::Check(Ok(())), &ACTIVE);
        assert_eq!(
            h.on(1_000_002, Event::Check(Ok(())), &ACTIVE),
            up(Why::ChecksPassed)
        );
        assert!(!h.on_probation());
    }

    #[test]
    fn reports_while_down_are_ignored() {
        let mut h = OriginHealth::new(0);
        for now in 1..=3 {
            h.on(now, Event::Check(Err(REFUSED)), &ACTIVE);
        }
        let before = h.clone();
        assert_eq!(
            h.on(4, Event::Passive(Outcome::Failed(REFUSED)), &ACTIVE),
            None
        );
        assert_eq!(h.on(5, Event::Passive(Outcome::Ok), &ACTIVE), None);
        assert_eq!(h, before);
    }

    #[test]
    fn a_tick_while_up_does_nothing() {
        let mut h = OriginHealth::new(0);
        assert_eq!(h.on(99, Event::Tick, &PASSIVE), None);
        assert!(h.is_up());
        assert_eq!(h.transitions, 0);
    }

    #[test]
    fn thresholds_of_zero_act_as_one() {
        let t = Thresholds {
            rise: 0,
            fall: 0,
            ..ACTIVE
        };
        let mut h = OriginHealth::new(0);
        assert!(h.on(1, Event::Check(Err(REFUSED)), &t).is_some());
        assert!(h.on(2, Event::Check(Ok(())), &t).is_some());
    }

    #[test]
    fn labels() {
        assert_eq!(
            Why::ChecksFailed(Failure::Status(200)).to_string(),
            "checks_failed: status_200"
        );
        assert_eq!(Why::Initial.to_string(), "initial");
        assert_eq!(Why::EjectionOver.to_string(), "ejection_over");
        assert_eq!(Why::ChecksPassed.to_string(), "checks_passed");
        assert_eq!(Failure::BadAnswer.label(), "bad_answer");
    }
}
