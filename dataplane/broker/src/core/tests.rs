//! The bridge's decisions, driven without sockets: reference counts, routing, gaps,
//! backoff, presence, bounds.

use super::*;
use crate::wire;
use wsedge_proto::function::Payload;

const ME: HostId = 7;
const OTHER: HostId = 9;

fn config(shards: usize, max_channels: usize) -> CoreConfig {
    CoreConfig {
        host: ME,
        workers: 3,
        shards,
        max_channels,
        backoff: Backoff {
            min_ms: 100,
            max_ms: 1600,
        },
        presence_refresh_ms: 10_000,
        presence_delay_ms: 500,
    }
}

fn msg(host: HostId, channel: &str, text: &str, skip: Option<u64>) -> Message {
    Message {
        route: None,
        channel: Arc::from(channel),
        payload: Arc::new(Payload::Text(text.into())),
        skip,
        host,
        position: None,
    }
}

fn drain(core: &mut Core) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// A core with every shard up.
fn up_core(shards: usize) -> Core {
    let mut core = Core::new(config(shards, 100), 0, 1);
    core.on_timeout(0);
    for out in drain(&mut core) {
        let Output::Connect { shard, epoch } = out else {
            panic!("{out:?}")
        };
        core.link(shard, epoch, LinkEvent::Up, 0);
    }
    core
}

fn handoffs(outs: &[Output]) -> Vec<(usize, Option<String>, bool)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Deliver(h) => Some((
                h.worker,
                h.message.as_ref().map(|m| match &*m.payload {
                    Payload::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                }),
                h.gap,
            )),
            _ => None,
        })
        .collect()
}

fn link_cmds(outs: &[Output]) -> Vec<LinkCmd> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Link { cmd, .. } => Some(cmd.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_drop_marks_the_next_handoff_of_the_same_burst_with_a_gap() {
    let mut core = up_core(1);
    core.interest(0, "a", 1, 0);
    core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
    drain(&mut core);
    for text in ["1", "2", "3"] {
        let record = wire::encode(&msg(OTHER, "a", text, None), 1);
        core.link(0, 1, LinkEvent::Message("a".into(), record), 0);
    }
    let outs = drain(&mut core);
    let mut handed = Vec::new();
    for (i, out) in outs.into_iter().enumerate() {
        let Output::Deliver(mut h) = out else {
            continue;
        };
        core.claim_gap(&mut h);
        if i == 0 {
            core.dropped(&h);
        } else {
            handed.push(h.gap);
        }
    }
    assert_eq!(
        handed,
        [true, false],
        "the one after the drop says so, once"
    );
    assert_eq!(core.stats().drops, 1);
}

#[test]
fn timed_records_are_measured() {
    let mut core = up_core(1);
    core.interest(0, "a", 1, 0);
    drain(&mut core);
    core.set_wall_clock(1_000_000);
    let m = msg(OTHER, "a", "x", None);
    let timed = |t| LinkEvent::Message("a".into(), wire::encode_at(&m, 1, Some(t)));
    core.link(0, 1, timed(997_000), 0);
    core.link(0, 1, timed(2_000_000), 0);
    core.link(0, 1, LinkEvent::Message("a".into(), wire::encode(&m, 2)), 0);
    let lag = core.stats().lag;
    assert_eq!(lag.count, 2, "an untimed record is not counted");
    assert_eq!(lag.sum_us, 3_000, "a clock ahead of ours counts as 0");
    assert_eq!(lag.buckets[0], 1);
    assert_eq!(lag.buckets[3], 1, "3 ms is in the 5 ms bucket");
    // Our own publications carry the clock.
    core.publish(msg(ME, "a", "y", None));
    let sent = drain(&mut core).into_iter().find_map(|o| match o {
        Output::Link {
            cmd: LinkCmd::Publish(_, record),
            ..
        } => Some(record),
        _ => None,
    });
    let (_, _, t) = wire::decode_at(&"a".into(), &sent.expect("published")).expect("decodes");
    assert_eq!(t, Some(1_000_000));
}

#[test]
fn subscribes_on_first_worker_and_unsubscribes_on_last() {
    let mut core = up_core(1);
    drain(&mut core);
    core.interest(0, "a", 2, 0);
    assert_eq!(
        link_cmds(&drain(&mut core)),
        [LinkCmd::Subscribe("a".into())]
    );
    core.interest(1, "a", 1, 0);
    core.interest(0, "a", 5, 0);
    core.interest(0, "a", 0, 0);
    assert!(link_cmds(&drain(&mut core)).is_empty(), "still one worker");
    assert_eq!(core.local_count("a"), 1);
    core.interest(1, "a", 0, 0);
    assert_eq!(
        link_cmds(&drain(&mut core)),
        [LinkCmd::Unsubscribe("a".into())]
    );
    assert_eq!(core.channel_count(), 0);
    core.interest(2, "never", 0, 0);
    core.interest(99, "bad worker", 1, 0);
    assert_eq!(core.channel_count(), 0);
}

#[test]
fn a_record_goes_once_to_each_interested_worker() {
    let mut core = up_core(1);
    core.interest(0, "a", 3, 0);
    core.interest(2, "a", 1, 0);
    core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
    drain(&mut core);
    let record = wire::encode(&msg(OTHER, "a", "hi", Some(5)), 1);
    core.link(0, 1, LinkEvent::Message("a".into(), record), 0);
    let outs = drain(&mut core);
    assert_eq!(
        handoffs(&outs),
        [(0, Some("hi".into()), false), (2, Some("hi".into()), false)]
    );
    // One message shared by both workers; a foreign host's skip key is not ours.
    let arcs: Vec<&Arc<Message>> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver(h) => h.message.as_ref(),
            _ => None,
        })
        .collect();
    assert!(Arc::ptr_eq(arcs[0], arcs[1]));
    assert_eq!(arcs[0].skip, None);
    // Nobody interested, foreign bytes: counted, not delivered.
    core.link(
        0,
        1,
        LinkEvent::Message("zz".into(), wire::encode(&msg(OTHER, "zz", "x", None), 2)),
        0,
    );
    core.link(
        0,
        1,
        LinkEvent::Message("a".into(), b"not ours".to_vec()),
        0,
    );
    assert!(handoffs(&drain(&mut core)).is_empty());
    let s = core.stats();
    assert_eq!(
        (s.unrouted, s.decode_errors, s.deliveries, s.publishes_in),
        (1, 1, 2, 3)
    );
}

#[test]
fn local_publications_come_back_through_the_broker_once() {
    let mut core = up_core(1);
    core.interest(1, "a", 1, 0);
    drain(&mut core);
    // Pending subscription: delivered here at once, and sent to the broker.
    core.publish(msg(ME, "a", "early", Some(11)));
    let outs = drain(&mut core);
    assert_eq!(handoffs(&outs), [(1, Some("early".into()), false)]);
    let [LinkCmd::Publish(_, early)] = &link_cmds(&outs)[..] else {
        panic!("{outs:?}")
    };
    // Its echo arrives after the subscription: a duplicate, dropped.
    core.link(0, 1, LinkEvent::Message("a".into(), early.clone()), 0);
    assert!(handoffs(&drain(&mut core)).is_empty());
    assert_eq!(core.stats().duplicates, 1);
    // Live: only the broker's copy is delivered, with our own skip key kept.
    core.publish(msg(ME, "a", "late", Some(11)));
    let outs = drain(&mut core);
    assert!(handoffs(&outs).is_empty());
    let [LinkCmd::Publish(_, late)] = &link_cmds(&outs)[..] else {
        panic!("{outs:?}")
    };
    core.link(0, 1, LinkEvent::Message("a".into(), late.clone()), 0);
    let outs = drain(&mut core);
    assert_eq!(handoffs(&outs), [(1, Some("late".into()), false)]);
    let Output::Deliver(h) = &outs[0] else {
        panic!()
    };
    assert_eq!(h.message.as_ref().and_then(|m| m.skip), Some(11));
    let s = core.stats();
    assert_eq!((s.publishes_out, s.publishes_local), (2, 1));
}

#[test]
fn down_at_start_serves_locally_then_connects_with_backoff() {
    let mut core = Core::new(config(1, 100), 0, 3);
    assert_eq!(core.poll_timeout(), Some(0));
    core.on_timeout(0);
    let [Output::Connect { shard: 0, epoch: 1 }] = &drain(&mut core)[..] else {
        panic!()
    };
    core.interest(0, "a", 1, 0);
    core.link(0, 1, LinkEvent::Down("refused".into()), 10);
    assert_eq!(core.link_state(0), Some(LinkState::Down));
    assert_eq!(core.last_error(0), Some("refused"));
    // Local-only: delivered here, nothing for the broker.
    core.publish(msg(ME, "a", "local", None));
    let outs = drain(&mut core);
    assert_eq!(handoffs(&outs), [(0, Some("local".into()), false)]);
    assert!(link_cmds(&outs).is_empty());
    // The retries back off: 100, 200, 400, 800, 1600, 1600 (each in [d/2, d]).
    let mut now = 10;
    let mut epoch = 1;
    for (i, d) in [100u64, 200, 400, 800, 1600, 1600].into_iter().enumerate() {
        let at = core.retry_at(0).expect("retry planned");
        assert!(
            (now + d / 2..=now + d).contains(&at),
            "retry {i}: {at} not in {now}+[{}, {d}]",
            d / 2
        );
        core.on_timeout(at - 1);
        assert!(drain(&mut core).is_empty(), "not before its time");
        core.on_timeout(at);
        epoch += 1;
        let outs = drain(&mut core);
        assert!(matches!(outs[..], [Output::Connect { shard: 0, epoch: e }] if e == epoch));
        now = at + 5;
        // A stale link's event changes nothing.
        core.link(0, epoch - 1, LinkEvent::Up, now);
        assert_eq!(core.link_state(0), Some(LinkState::Connecting));
        core.link(0, epoch, LinkEvent::Down("refused".into()), now);
    }
    // It comes up: resubscribes, and the subscriber hears of a gap.
    let at = core.retry_at(0).expect("retry");
    core.on_timeout(at);
    drain(&mut core);
    core.link(0, epoch + 1, LinkEvent::Up, at);
    let outs = drain(&mut core);
    assert_eq!(handoffs(&outs), [(0, None, true)]);
    assert_eq!(link_cmds(&outs), [LinkCmd::Subscribe("a".into())]);
    assert_eq!(
        core.stats().reconnects,
        0,
        "the first connection is no reconnection"
    );
    assert_eq!(core.stats().link_failures, 7);
}

#[test]
fn a_restart_resubscribes_every_channel_with_a_gap() {
    let mut core = up_core(2);
    for name in ["a", "b", "c", "d"] {
        core.interest(0, name, 1, 0);
    }
    core.interest(1, "a", 1, 0);
    drain(&mut core);
    let shard = shard_of("a", 2);
    let on_shard: Vec<&str> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|n| shard_of(n, 2) == shard)
        .collect();
    core.link(shard, 1, LinkEvent::Down("reset".into()), 5);
    let retry = core.retry_at(shard).expect("retry");
    core.on_timeout(retry);
    drain(&mut core);
    core.link(shard, 2, LinkEvent::Up, retry);
    let outs = drain(&mut core);
    let mut subs: Vec<String> = link_cmds(&outs)
        .into_iter()
        .map(|c| match c {
            LinkCmd::Subscribe(n) => n.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    subs.sort();
    assert_eq!(subs, on_shard);
    // One gap notice per interested worker of each resubscribed channel.
    let gaps = handoffs(&outs);
    assert_eq!(gaps.len(), on_shard.len() + 1, "{gaps:?}");
    assert!(gaps.iter().all(|(_, m, gap)| m.is_none() && *gap));
    assert_eq!(core.stats().reconnects, 1);
    assert_eq!(core.stats().gaps, on_shard.len() as u64);
}

#[test]
fn a_full_worker_queue_drops_and_owes_a_gap() {
    let mut core = up_core(1);
    core.interest(0, "a", 1, 0);
    core.interest(1, "a", 1, 0);
    core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
    drain(&mut core);
    let record = |n: u64| wire::encode(&msg(OTHER, "a", &n.to_string(), None), n);
    core.link(0, 1, LinkEvent::Message("a".into(), record(1)), 0);
    // The bridge could not queue worker 1's copy.
    for out in drain(&mut core) {
        if let Output::Deliver(h) = out
            && h.worker == 1
        {
            core.dropped(&h);
        }
    }
    core.link(0, 1, LinkEvent::Message("a".into(), record(2)), 0);
    assert_eq!(
        handoffs(&drain(&mut core)),
        [(0, Some("2".into()), false), (1, Some("2".into()), true)]
    );
    let s = core.stats();
    assert_eq!((s.drops, s.gaps), (1, 1));
}

#[test]
fn channels_are_bounded() {
    let mut core = Core::new(config(1, 2), 0, 1);
    core.interest(0, "a", 1, 0);
    core.interest(0, "b", 1, 0);
    core.interest(1, "c", 1, 0);
    assert_eq!(core.channel_count(), 2);
    assert_eq!(core.stats().channels_refused, 1);
    drain(&mut core);
    // A publication on the refused channel is offered to every worker.
    core.publish(msg(ME, "c", "x", None));
    assert_eq!(handoffs(&drain(&mut core)).len(), 3);
    // Room again, but c's subscribers have not changed yet: c is still offered.
    core.interest(0, "b", 0, 0);
    drain(&mut core);
    core.publish(msg(ME, "c", "y", None));
    assert_eq!(handoffs(&drain(&mut core)).len(), 3);
    // The next change of that worker's count is taken.
    core.interest(1, "c", 2, 0);
    assert_eq!(core.channel_count(), 2);
    assert_eq!(core.local_count("c"), 2);
}

#[test]
fn presence_is_written_after_changes_and_refreshed() {
    let mut core = up_core(1);
    drain(&mut core);
    core.interest(0, "a", 2, 100);
    core.interest(1, "a", 1, 150);
    drain(&mut core);
    assert_eq!(core.poll_timeout(), Some(600));
    core.on_timeout(600);
    assert_eq!(
        link_cmds(&drain(&mut core)),
        [LinkCmd::Presence("a".into(), 3)]
    );
    core.interest(0, "a", 0, 700);
    core.interest(1, "a", 0, 700);
    drain(&mut core);
    core.on_timeout(1200);
    assert_eq!(
        link_cmds(&drain(&mut core)),
        [LinkCmd::Presence("a".into(), 0)]
    );
    core.interest(2, "b", 4, 1300);
    core.on_timeout(1800);
    drain(&mut core);
    // The refresh rewrites every channel held.
    core.on_timeout(10_000);
    assert_eq!(
        link_cmds(&drain(&mut core)),
        [LinkCmd::Presence("b".into(), 4)]
    );
}

#[test]
fn shards_are_stable_and_spread() {
    assert_eq!(shard_of("news", 1), 0);
    assert_eq!(shard_of("news", 4), shard_of("news", 4));
    let mut seen = [0usize; 4];
    for i in 0..400 {
        seen[shard_of(&format!("room-{i}"), 4)] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    let b = Backoff {
        min_ms: 10,
        max_ms: 50,
    };
    for attempt in 0..40 {
        for r in [0, 1, 7, u64::MAX] {
            let d = b.delay(attempt, r);
            assert!((5..=50).contains(&d), "{attempt} {r} {d}");
        }
    }
}
