//! The bridge's part in recovery (docs/broker.md, "Recovery"): when a subscriber's history
//! is read, and that every request is answered.
//!
//! A worker asks ([`RecoveryRequest`]) right after it reported the subscriber (its
//! interest), on the same channel to the bridge, so the channel is held by then. The read
//! ([`LinkCmd::History`]) goes to the channel's shard only once the host's broker
//! subscription of the channel is confirmed: every message published after the read then
//! reaches this host live, and the subscriber's merge drops what it gets twice. Until then
//! the request is parked on the channel.
//!
//! Always answered, so no subscriber holds its live messages forever: the shard down (now,
//! or while the read is in flight), the channel not held (past `max_channels`): `unavailable`.
//! An answer a full worker queue refused is handed again, not dropped.

use std::sync::Arc;

use wsedge_proto::function::ConnKey;
use wsedge_proto::recovery::{Answer, Failure, Since};

use super::{Core, Handoff, LinkCmd, LinkState, Output, Sub, shard_of};

/// A subscriber asks for its channel's history (after `since`, or only the position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    pub worker: usize,
    pub conn: ConnKey,
    pub channel: Arc<str>,
    pub since: Option<Since>,
}

/// Recovery answers since start, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Missed messages given back (none missed included).
    pub recovered: u64,
    /// Only the position given (no `since`).
    pub positioned: u64,
    /// Cannot recover: another epoch.
    pub epoch: u64,
    /// Cannot recover: the offset is no longer kept.
    pub trimmed: u64,
    /// Cannot recover: the history could not be read.
    pub unavailable: u64,
}

/// A request not answered yet.
#[derive(Debug)]
pub(super) struct Pending {
    request: RecoveryRequest,
    /// Its read was sent to the link (else it waits for the subscription).
    sent: bool,
}

fn unavailable() -> Answer {
    Answer::Failed {
        failure: Failure::Unavailable,
        position: None,
    }
}

impl Core {
    /// A subscriber's recovery request.
    pub fn recover(&mut self, request: RecoveryRequest) {
        if request.worker >= self.config.workers {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let state = self.channels.get(&request.channel).map(|c| {
            let up = self.shards[c.shard].state == LinkState::Up;
            (c.shard, up, c.sub)
        });
        match state {
            Some((shard, true, Sub::Live)) => {
                self.out.push_back(Output::Link {
                    shard,
                    cmd: LinkCmd::History {
                        token,
                        channel: Arc::clone(&request.channel),
                        since: request.since.clone(),
                    },
                });
                self.recoveries.insert(
                    token,
                    Pending {
                        request,
                        sent: true,
                    },
                );
            }
            Some((_, true, Sub::Pending)) => {
                self.recoveries.insert(
                    token,
                    Pending {
                        request,
                        sent: false,
                    },
                );
            }
            // The shard is down, or the channel is not held (past `max_channels`).
            _ => self.answer(&request, unavailable()),
        }
    }

    /// The channel's subscription is confirmed: its parked reads go to the link.
    pub(super) fn send_parked(&mut self, channel: &Arc<str>) {
        let shard = shard_of(channel, self.shards.len());
        for (token, pending) in &mut self.recoveries {
            if pending.sent || pending.request.channel != *channel {
                continue;
            }
            pending.sent = true;
            self.out.push_back(Output::Link {
                shard,
                cmd: LinkCmd::History {
                    token: *token,
                    channel: Arc::clone(channel),
                    since: pending.request.since.clone(),
                },
            });
        }
    }

    /// The channel is no longer held (its last subscriber left): its parked reads are
    /// answered (nobody is left to read them).
    pub(super) fn forget_parked(&mut self, channel: &Arc<str>) {
        let tokens: Vec<u64> = self
            .recoveries
            .iter()
            .filter(|(_, p)| !p.sent && p.request.channel == *channel)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.on_history(token, unavailable());
        }
    }

    /// The shard went down: every read of its channels, parked or in flight, is answered.
    pub(super) fn fail_recoveries(&mut self, shard: usize) {
        let shards = self.shards.len();
        let tokens: Vec<u64> = self
            .recoveries
            .iter()
            .filter(|(_, p)| shard_of(&p.request.channel, shards) == shard)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.on_history(token, unavailable());
        }
    }

    /// A read's answer (from the link, or made here): to its subscriber's worker.
    pub(super) fn on_history(&mut self, token: u64, answer: Answer) {
        if let Some(pending) = self.recoveries.remove(&token) {
            self.answer(&pending.request, answer);
        }
    }

    fn answer(&mut self, request: &RecoveryRequest, answer: Answer) {
        let stats = &mut self.stats.recovery;
        match &answer {
            Answer::Position(_) => stats.positioned += 1,
            Answer::Recovered { .. } => stats.recovered += 1,
            Answer::Failed { failure, .. } => match failure {
                Failure::Epoch => stats.epoch += 1,
                Failure::Trimmed => stats.trimmed += 1,
                Failure::Unavailable => stats.unavailable += 1,
            },
        }
        self.out.push_back(Output::Deliver(Handoff {
            worker: request.worker,
            channel: Arc::clone(&request.channel),
            message: None,
            gap: false,
            answer: Some((request.conn, Arc::new(answer))),
        }));
    }

    /// Recoveries not answered yet.
    pub fn pending_recoveries(&self) -> usize {
        self.recoveries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Backoff, CoreConfig, LinkEvent, Millis};
    use super::*;
    use wsedge_proto::recovery::Position;

    fn core() -> Core {
        let mut core = Core::new(
            CoreConfig {
                host: 7,
                workers: 2,
                shards: 1,
                max_channels: 10,
                backoff: Backoff {
                    min_ms: 100,
                    max_ms: 100,
                },
                presence_refresh_ms: 10_000,
                presence_delay_ms: 500,
            },
            0,
            1,
        );
        core.on_timeout(0);
        drain(&mut core);
        core.link(0, 1, LinkEvent::Up, 0);
        core
    }

    fn drain(core: &mut Core) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    fn request(conn: ConnKey, since: Option<u64>) -> RecoveryRequest {
        RecoveryRequest {
            worker: 1,
            conn,
            channel: Arc::from("chat:a"),
            since: since.map(|offset| Since {
                offset,
                epoch: "e".into(),
            }),
        }
    }

    fn reads(outs: &[Output]) -> Vec<(u64, Option<u64>)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Link {
                    cmd: LinkCmd::History { token, since, .. },
                    ..
                } => Some((*token, since.as_ref().map(|s| s.offset))),
                _ => None,
            })
            .collect()
    }

    fn answers(outs: &[Output]) -> Vec<(usize, ConnKey, Answer)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Deliver(Handoff {
                    worker,
                    answer: Some((conn, a)),
                    message: None,
                    ..
                }) => Some((*worker, *conn, (**a).clone())),
                _ => None,
            })
            .collect()
    }

    const NOW: Millis = 0;

    #[test]
    fn a_read_waits_for_the_subscription_then_is_answered() {
        let mut core = core();
        core.interest(1, "chat:a", 2, NOW);
        drain(&mut core);
        core.recover(request(10, Some(3)));
        core.recover(request(11, None));
        assert!(reads(&drain(&mut core)).is_empty(), "parked");
        core.link(0, 1, LinkEvent::Subscribed("chat:a".into()), NOW);
        let sent = reads(&drain(&mut core));
        let mut sinces: Vec<Option<u64>> = sent.iter().map(|r| r.1).collect();
        sinces.sort();
        assert_eq!(sinces, [None, Some(3)]);
        // Live now: a third read goes at once.
        core.recover(request(12, Some(5)));
        assert_eq!(reads(&drain(&mut core)).len(), 1);
        let position = Position {
            offset: 4,
            epoch: Arc::from("e"),
        };
        let (token, _) = sent[0];
        core.link(
            0,
            1,
            LinkEvent::History {
                token,
                answer: Answer::Position(position.clone()),
            },
            NOW,
        );
        let got = answers(&drain(&mut core));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1, "to the subscriber's worker");
        assert_eq!(got[0].2, Answer::Position(position));
        // An unknown or repeated token changes nothing.
        core.link(
            0,
            1,
            LinkEvent::History {
                token,
                answer: unavailable(),
            },
            NOW,
        );
        assert!(answers(&drain(&mut core)).is_empty());
        assert_eq!(core.pending_recoveries(), 2);
        assert_eq!(core.stats().recovery.positioned, 1);
    }

    #[test]
    fn every_request_is_answered_when_the_history_cannot_be_read() {
        let mut core = core();
        // Not held (no interest reported): unavailable at once.
        core.recover(request(1, Some(1)));
        assert_eq!(answers(&drain(&mut core))[0].2, unavailable());
        // Parked, then the shard goes down; in flight, then the shard goes down.
        core.interest(1, "chat:a", 1, NOW);
        core.recover(request(2, Some(1)));
        core.link(0, 1, LinkEvent::Subscribed("chat:a".into()), NOW);
        core.recover(request(3, None));
        drain(&mut core);
        core.link(0, 1, LinkEvent::Down("reset".into()), NOW);
        let mut conns: Vec<ConnKey> = answers(&drain(&mut core)).iter().map(|a| a.1).collect();
        conns.sort();
        assert_eq!(conns, [2, 3]);
        // Down: unavailable at once.
        core.recover(request(4, None));
        assert_eq!(answers(&drain(&mut core))[0].1, 4);
        assert_eq!(core.pending_recoveries(), 0);
        assert_eq!(core.stats().recovery.unavailable, 4);
    }

    #[test]
    fn a_refused_answer_is_handed_again_and_the_last_subscriber_leaving_answers_parked() {
        let mut core = core();
        core.interest(1, "chat:a", 1, NOW);
        core.recover(request(5, None));
        drain(&mut core);
        core.interest(1, "chat:a", 0, NOW);
        let outs = drain(&mut core);
        let [(1, 5, _)] = answers(&outs)[..] else {
            panic!("{outs:?}")
        };
        let handoff = outs
            .into_iter()
            .find_map(|o| match o {
                Output::Deliver(h) if h.answer.is_some() => Some(h),
                _ => None,
            })
            .expect("answer");
        core.dropped(&handoff);
        assert_eq!(core.stats().drops, 0, "an answer is not a dropped message");
        assert_eq!(core.poll_timeout(), Some(0));
        core.on_timeout(1);
        assert_eq!(answers(&drain(&mut core)).len(), 1);
        assert_ne!(core.poll_timeout(), Some(0));
    }

    #[test]
    fn an_answer_leaves_an_owed_gap_to_the_next_message() {
        let mut core = core();
        core.interest(1, "chat:a", 1, NOW);
        core.link(0, 1, LinkEvent::Subscribed("chat:a".into()), NOW);
        core.recover(request(7, None));
        drain(&mut core);
        // A message for worker 1 is dropped: a gap is owed to its subscribers.
        let record = |text: &str| {
            let m = crate::Message {
                route: None,
                channel: Arc::from("chat:a"),
                payload: Arc::new(wsedge_proto::function::Payload::Text(text.into())),
                skip: None,
                host: 9,
                position: None,
            };
            crate::wire::encode(&m, 1)
        };
        // One burst: a message, the answer, a message; the first is dropped (the worker's
        // queue is full), so a gap is owed: the answer passes without taking it, the next
        // message carries it.
        core.link(0, 1, LinkEvent::Message("chat:a".into(), record("x")), NOW);
        let token = *core.recoveries.keys().next().expect("pending");
        let position = Position {
            offset: 1,
            epoch: Arc::from("e"),
        };
        let answer = Answer::Position(position);
        core.link(0, 1, LinkEvent::History { token, answer }, NOW);
        core.link(0, 1, LinkEvent::Message("chat:a".into(), record("y")), NOW);
        let mut gaps = Vec::new();
        for (i, out) in drain(&mut core).into_iter().enumerate() {
            if let Output::Deliver(mut h) = out {
                core.claim_gap(&mut h);
                if i == 0 {
                    core.dropped(&h);
                } else {
                    gaps.push((h.answer.is_some(), h.gap));
                }
            }
        }
        assert_eq!(gaps, [(true, false), (false, true)]);
    }
}
