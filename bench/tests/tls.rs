//! The TLS paths of the load generator against the real `wsedge` binary terminating TLS (a
//! `[[tls_listener]]` with an ECDSA leaf made by the test, one worker) in front of the echo
//! origin: full handshakes, resumed ones (TLS 1.3 and 1.2, each counted as resumed by the
//! client), 16 KiB messages over `wss://` depth-limited and unbounded, and the `s-time` mode
//! driving `openssl s_time` (skipped, saying so, without an `openssl` binary). About 12 s.
//!
//! `wsedge` is found beside this test's directory (`target/debug/wsedge`): `cargo build -p
//! wsedge` first (scripts/test.sh and CI build every binary before the tests).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde_json::Value;
use wsedge_bench::load::client::{SourceAddrs, Target};
use wsedge_bench::load::tls::{Options, TlsClient, Version};
use wsedge_bench::load::{Common, flood, handshakes, stime, throughput};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("wsedge-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).expect("write test file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway CA and an ECDSA P-256 leaf for `localhost`: (ca.pem, leaf.pem, leaf.key).
fn pki(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let key = || KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wsedge bench test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, key()).expect("CA");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = key();
    let cert = leaf.signed_by(&leaf_key, &ca).expect("sign leaf");
    (
        dir.write("ca.pem", ca.pem()),
        dir.write("leaf.pem", cert.pem()),
        dir.write("leaf.key", leaf_key.serialize_pem()),
    )
}

/// The wsedge binary built beside this test (target/debug/deps/tls-* → target/debug/wsedge).
fn wsedge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("wsedge");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build -p wsedge` first (this test starts the real binary)",
        bin.display()
    );
    bin
}

/// A running wsedge, killed when dropped.
struct Wsedge {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Wsedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts wsedge with one TLS listener on a free port serving `cert`/`key` by default, one
/// worker, relaying to `origin`; waits for `wsedge: ready`.
fn start_wsedge(dir: &TempDir, cert: &Path, key: &Path, origin: SocketAddr) -> Wsedge {
    let config = dir.write(
        "wsedge.toml",
        format!(
            "[dataplane]\nlisten = []\nworkers = 1\n\n[access_log]\ntarget = \"off\"\n\n\
             [[certificate]]\nid = \"bench\"\ncert = {:?}\nkey = {:?}\ndefault = true\n\n\
             [[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\n\n\
             [[route]]\nname = \"bench\"\norigins = [\"{origin}\"]\nrelay = \"buffered\"\n",
            cert.display().to_string(),
            key.display().to_string(),
        ),
    );
    let mut child = Command::new(wsedge_bin())
        .arg("--config")
        .arg(&config)
        .env("WSEDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsedge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // Every line is echoed (shown when the test fails) and the pipe kept drained.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[wsedge] {line}");
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("wsedge ready within 20 s");
        if let Some(rest) = line.strip_prefix("wsedge: listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if line.starts_with("wsedge: ready") {
            break;
        }
    }
    Wsedge {
        child,
        addr: addr.expect("a `listening on` line"),
    }
}

fn common(pid: u32) -> Common {
    Common {
        connections: 4,
        size: 64,
        depth: 4,
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(300),
        rate: 0.0,
        concurrency: 4,
        open_concurrency: 4,
        pids: vec![pid],
        origin_pids: vec![std::process::id()],
        sender_threads: 1,
        write_bytes: 64 * 1024,
        connect_rate: 0.0,
        probe_interval: Duration::from_millis(200),
        settle: Duration::ZERO,
    }
}

fn target(addr: SocketAddr, ca: &Path, resume: bool, version: Version) -> Target {
    let client = TlsClient::new(&Options {
        ca: ca.to_owned(),
        name: "localhost".into(),
        resume,
        version,
        groups: vec!["x25519".into()],
    })
    .expect("TLS client");
    Target::parse(&format!("wss://{addr}/ws"))
        .expect("target")
        .with_tls(client)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_tls_paths_through_wsedge() {
    let dir = TempDir::new();
    let (ca, cert, key) = pki(&dir);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    tokio::spawn(wsedge_bench::origin::serve_listener(l));
    let ws = start_wsedge(&dir, &cert, &key, origin);
    let c = common(ws.child.id());
    let src = Arc::new(SourceAddrs::default());

    // Full handshakes: every one full, no error, and the target's CPU per session measured.
    let out = handshakes::run(&c, target(ws.addr, &ca, false, Version::Any), src.clone())
        .await
        .unwrap();
    let r = &out.results;
    assert_eq!(r["errors"], 0, "{}", out.human);
    assert!(f(&r["sessions_per_s"]) > 0.0, "{}", out.human);
    assert!(r["tls"]["full"].as_u64().unwrap() > 0, "{}", out.human);
    assert_eq!(r["tls"]["resumed"], 0, "{}", out.human);
    assert_eq!(r["tls"]["version"], "TLSv1_3", "{}", out.human);
    assert_eq!(r["tls"]["kx_group"], "X25519", "{}", out.human);
    assert!(f(&r["target_cpu_s_per_1k_sessions"]) > 0.0, "{}", out.human);

    // --resume: after each loop's first (full) handshake, every handshake resumes, over TLS
    // 1.3 (tickets) and TLS 1.2: at most one full handshake per loop in the window (none when
    // the warm-up took them), and resumed ones.
    for (version, name) in [(Version::Tls13, "TLSv1_3"), (Version::Tls12, "TLSv1_2")] {
        let out = handshakes::run(&c, target(ws.addr, &ca, true, version), src.clone())
            .await
            .unwrap();
        let r = &out.results;
        assert_eq!(r["errors"], 0, "{}", out.human);
        assert_eq!(r["tls"]["version"], name, "{}", out.human);
        assert!(r["tls"]["resumed"].as_u64().unwrap() > 0, "{}", out.human);
        assert!(r["tls"]["full"].as_u64().unwrap() <= 4, "{}", out.human);
        assert!(f(&r["tls"]["resumed_fraction"]) > 0.0, "{}", out.human);
    }

    // 16 KiB over wss://, depth-limited.
    let mut t = c.clone();
    t.size = 16384;
    let out = throughput::run(&t, target(ws.addr, &ca, false, Version::Any), src.clone())
        .await
        .unwrap();
    assert!(f(&out.results["recv_msgs_per_s"]) > 0.0, "{}", out.human);
    assert_eq!(out.results["tls"]["full"], 4, "{}", out.human);

    // 16 KiB over wss://, unbounded: every echo checked, and the TLS probes get through.
    let out = flood::run(&t, target(ws.addr, &ca, false, Version::Any), src.clone())
        .await
        .unwrap();
    let r = &out.results;
    assert!(r["problem"].is_null(), "{}", out.human);
    assert_eq!(r["seq_errors"], 0, "{}", out.human);
    assert!(f(&r["recv_msgs_per_s"]) > 0.0, "{}", out.human);
    assert!(r["probe"]["ok"].as_u64().unwrap() >= 1, "{}", out.human);

    // The independent tool: openssl s_time, new sessions (TLS 1.3) and reused (TLS 1.2).
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPING the s-time part: no `openssl` on PATH (apt-get install openssl)");
        return;
    }
    let plain = Target::parse(&format!("wss://{}/", ws.addr)).unwrap();
    let mut s = c.clone();
    s.concurrency = 1;
    for (resume, version) in [(false, Version::Tls13), (true, Version::Tls12)] {
        let opts = stime::Options {
            openssl: "openssl".into(),
            resume,
            version,
            ca: Some(ca.clone()),
        };
        let out = stime::run(&s, &plain, &opts).await.unwrap();
        let r = &out.results;
        assert!(r["connections"].as_u64().unwrap() > 0, "{}", out.human);
        assert!(
            f(&r["target_cpu_s_per_1k_handshakes"]) > 0.0,
            "{}",
            out.human
        );
        let resumed = f(&r["tls"]["resumed_fraction"]);
        if resume {
            assert!(resumed > 0.5, "s_time -reuse resumed: {}", out.human);
        } else {
            assert_eq!(resumed, 0.0, "{}", out.human);
        }
    }
}
