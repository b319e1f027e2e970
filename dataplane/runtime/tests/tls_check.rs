//! `wsedge --check` on TLS configurations: the shipped example with the certificates
//! `scripts/dev-certs.sh` makes passes, and a missing or broken certificate file is refused
//! naming the file. Serving wss:// is tests/tls.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("wsedge-tls-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wsedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(args)
        .env("WSEDGE_LOG", "error")
        .output()
        .expect("run wsedge")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// docs/examples/tls.toml with its certificate paths moved to `dir`.
fn example_in(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("docs/examples/tls.toml")).expect("example");
    let text = text.replace("target/dev-certs/", &format!("{}/", dir.display()));
    let path = dir.join("tls.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_loads_the_example_certificates_and_names_a_broken_file() {
    let tmp = TempDir::new("example");
    let certs = tmp.0.join("certs");
    let made = Command::new(root().join("scripts/dev-certs.sh"))
        .arg(&certs)
        .output()
        .expect("run scripts/dev-certs.sh (needs openssl)");
    assert!(made.status.success(), "dev-certs.sh: {}", stderr(&made));
    let config = example_in(&certs);
    let config_arg = config.to_str().expect("utf-8 path");

    let out = wsedge(&["--config", config_arg, "--check"]);
    assert!(
        out.status.success(),
        "--check refused the example: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("is valid"), "{}", stderr(&out));

    // A broken certificate file: exit 2, naming the file and the problem.
    let cert = certs.join("localhost.pem");
    let pem = std::fs::read_to_string(&cert).expect("cert");
    std::fs::write(&cert, &pem[..pem.len() / 2]).expect("truncate");
    let out = wsedge(&["--config", config_arg, "--check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains(&cert.display().to_string()) && msg.contains("broken PEM"),
        "{msg}"
    );

    // A missing one.
    std::fs::remove_file(&cert).expect("remove");
    let out = wsedge(&["--config", config_arg, "--check"]);
    assert_eq!(out.status.code(), Some(2));
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!(
            "certificate \"localhost\": {}: cannot read",
            cert.display()
        )),
        "{msg}"
    );

    // The wrong key for the certificate.
    std::fs::write(&cert, pem).expect("restore");
    std::fs::copy(certs.join("a.test.key"), certs.join("localhost.key")).expect("swap key");
    let out = wsedge(&["--config", config_arg, "--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does not belong to the certificate"),
        "{}",
        stderr(&out)
    );
}
