//! The monitoring files in docs/monitoring name only metrics wsedge exports: every
//! `wsedge_*` name in the Grafana dashboard and the Prometheus alert rules must be a metric
//! family of a real dataplane's `/metrics` (families are listed with their `# TYPE` line even
//! before they have samples). `promtool check rules` and `promtool test rules` run in
//! scripts/package-check.sh.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use common::{Config, Proxy, Route, dead_addr, within};

/// Every `wsedge_[a-z0-9_]*` word of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wsedge_") {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + word.len()..];
        out.insert(word);
    }
    out
}

#[tokio::test]
async fn monitoring_files_name_real_metrics() {
    within(60, async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let config = Config::new()
            .route(Route::new("main", &[dead_addr()]))
            .table(&format!("[control]\nmetrics_listen = \"127.0.0.1:{port}\""))
            // A broker nobody runs: the bridge exports its wsedge_broker_* families anyway.
            .table(&format!(
                "[broker]\naddresses = [\"redis://{}\"]",
                dead_addr()
            ));
        let _proxy = Proxy::start(&config).await;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let families: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect();
        assert!(families.len() >= 10, "{text}");

        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/monitoring");
        for file in [
            "wsedge-dashboard.json",
            "wsedge-alerts.yml",
            "wsedge-alerts.test.yml",
        ] {
            let content = std::fs::read_to_string(docs.join(file)).expect("read");
            let used = metric_names(&content);
            assert!(!used.is_empty(), "{file} names no metric");
            let unknown: Vec<&String> = used.iter().filter(|n| !families.contains(*n)).collect();
            assert!(
                unknown.is_empty(),
                "{file} names metrics /metrics does not export: {unknown:?}; exported: {families:?}"
            );
        }
    })
    .await;
}
