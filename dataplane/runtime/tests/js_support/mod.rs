//! Support for the JavaScript function tests (`js_functions.rs`, `js_control.rs`,
//! `js_examples.rs`): scripts written to a temporary directory, `js` route tables, and a
//! few client helpers over tokio-tungstenite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::common::Ws;

/// A directory of scripts for one test, removed on drop.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) dir: PathBuf,
}

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Scripts {
    pub(crate) fn new(name: &str) -> Scripts {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-js-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create script dir");
        Scripts { dir }
    }

    /// Writes `source` as `file`; returns its absolute path.
    pub(crate) fn write(&self, file: &str, source: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, source).expect("write script");
        path
    }
}

/// A `js` `[[route]]` table serving `script` at `prefix`; `extra` holds more `key = value`
/// lines.
pub(crate) fn js_route(name: &str, prefix: &str, script: &Path, extra: &[&str]) -> String {
    let mut s = format!(
        "[[route]]\nname = {name:?}\npath_prefix = {prefix:?}\nfunction = \"js\"\nscript = {:?}\n",
        script.display().to_string()
    );
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    s
}

/// The next data message (pings and pongs skipped); panics after 10 s or on a close.
pub(crate) async fn next_msg(ws: &mut Ws) -> Message {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("the stream ended")
            .expect("a WebSocket error");
        match got {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next text message.
pub(crate) async fn next_text(ws: &mut Ws) -> String {
    match next_msg(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends `text` and returns the text answer.
pub(crate) async fn ask(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    next_text(ws).await
}

/// Reads until the server's Close: its code and reason (`None`: the stream ended without
/// one).
pub(crate) async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10 s");
        match got {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Some((u16::from(code), reason.to_string()));
            }
            Some(Ok(Message::Close(None))) => return Some((1005, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Reads on after a Close until the stream ends (this flushes the client's Close reply).
pub(crate) async fn drain(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A free loopback port (bound and released: good enough for a test's own listener).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET path` on `addr` over a raw connection: the status and the body.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
