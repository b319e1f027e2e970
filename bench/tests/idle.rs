//! The `idle` mode against the real echo origin: connections are opened and held, and with
//! `heartbeat` each sends a message on the shared schedule and gets its echo.

use std::sync::Arc;
use std::time::Duration;

use wsedge_bench::load::client::{SourceAddrs, Target};
use wsedge_bench::load::{Common, idle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_send_heartbeats_and_get_their_echoes() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(wsedge_bench::origin::serve_listener(l));
    let url = format!("ws://{addr}/ws");
    let c = Common {
        connections: 5,
        open_concurrency: 5,
        ..Common::default()
    };
    let run = |heartbeat: Duration| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let opts = idle::Options {
                url: url.clone(),
                processes: 1,
                hold: Duration::from_millis(1000),
                heartbeat,
                ..idle::Options::default()
            };
            let t = Target::parse(&url).unwrap();
            idle::run(&c, t, Arc::new(SourceAddrs::default()), &opts)
                .await
                .unwrap()
        }
    };

    let beating = run(Duration::from_millis(200)).await;
    let r = &beating.results;
    assert_eq!(r["opened"], 5, "{}", beating.human);
    assert_eq!(r["alive"], 5, "{}", beating.human);
    // Held ~2 s (1 s settle + 1 s hold) at one beat per 200 ms: about 10 each.
    let sent = r["heartbeats_sent"].as_u64().unwrap();
    assert!((5 * 7..=5 * 12).contains(&sent), "{}", beating.human);
    // Every beat but those still in flight when the hold ended was echoed.
    let echoed = r["heartbeats_echoed"].as_u64().unwrap();
    assert!(echoed + 5 >= sent && echoed <= sent, "{}", beating.human);

    // Without heartbeats the connections are held silent and still relay (the ping check).
    let silent = run(Duration::ZERO).await;
    assert_eq!(silent.results["alive"], 5, "{}", silent.human);
}
