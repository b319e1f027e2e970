//! Loading, listing and reloading certificates.

use super::*;
use crate::StoreError;

fn load_err(config: &TlsConfig) -> String {
    CertStore::load(config).expect_err("refused").to_string()
}

#[test]
fn listing_names_issuer_expiry_and_key_types() {
    let pki = Pki::new("list");
    let ec = pki.leaf("ec", &["a.test", "*.a.test"], KeyKind::Ecdsa);
    let rsa = pki.leaf("rsa", &["b.test"], KeyKind::Rsa);
    let mut b = spec("b", &rsa, true);
    b.names = names(&["B.test", "www.b.test"]);
    let store =
        CertStore::load(&one_listener(vec![spec("a", &ec, false), b], listener())).expect("store");
    let list: Vec<_> = store.certificates().cloned().collect();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, "a");
    assert_eq!(list[0].names, vec!["a.test", "*.a.test"]);
    assert_eq!(list[0].key_type, "ECDSA P-256");
    assert!(
        list[0].issuer.contains("wsedge test CA list"),
        "{}",
        list[0].issuer
    );
    assert!(list[0].subject.contains("CN=a.test"), "{}", list[0].subject);
    assert!(!list[0].default);
    assert_eq!(
        list[1].names,
        vec!["b.test", "www.b.test"],
        "the override, lower-cased"
    );
    assert_eq!(list[1].key_type, "RSA 2048");
    assert!(list[1].default);
    assert_eq!(list[1].chain_len, 1);
    // rcgen's default validity ends in 4096.
    let year_4096 = 67_090_118_400; // 4096-01-01T00:00:00Z
    assert_eq!(list[0].not_after, year_4096);
    assert_eq!(list[0].seconds_to_expiry(1_000), year_4096 - 1_000);
    assert!(list[0].seconds_to_expiry(year_4096 + 5) < 0);
}

#[test]
fn broken_files_are_refused_naming_the_file_and_the_problem() {
    let pki = Pki::new("broken");
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let other = pki.leaf("b", &["b.test"], KeyKind::Ecdsa);
    let with = |cert: PathBuf, key: PathBuf| {
        one_listener(
            vec![CertificateSpec {
                id: "main".into(),
                cert,
                key,
                names: None,
                default: false,
            }],
            listener(),
        )
    };
    let missing = pki.dir.path("nope.pem");
    let msg = load_err(&with(missing.clone(), leaf.key.clone()));
    assert!(msg.starts_with("certificate \"main\": "), "{msg}");
    assert!(
        msg.contains(&format!("{}: cannot read", missing.display())),
        "{msg}"
    );

    let msg = load_err(&with(leaf.key.clone(), leaf.cert.clone()));
    assert!(msg.contains(&leaf.key.display().to_string()), "{msg}");
    assert!(msg.contains("cert and key swapped?"), "{msg}");

    let msg = load_err(&with(leaf.cert.clone(), other.key.clone()));
    assert!(
        msg.contains(&format!(
            "{}: this key does not belong to the certificate in {}",
            other.key.display(),
            leaf.cert.display()
        )),
        "{msg}"
    );

    let pem = file_text(&leaf.cert);
    let cut = pki.dir.write("cut.pem", &pem[..pem.len() - 40]);
    let msg = load_err(&with(cut.clone(), leaf.key.clone()));
    assert!(
        msg.contains(&cut.display().to_string()) && msg.contains("broken PEM"),
        "{msg}"
    );

    let junk = pki.dir.write("junk.pem", "not a certificate\n");
    let msg = load_err(&with(junk.clone(), leaf.key.clone()));
    assert!(msg.contains("no PEM CERTIFICATE block"), "{msg}");
    let msg = load_err(&with(leaf.cert.clone(), junk.clone()));
    assert!(
        msg.contains(&junk.display().to_string()) && msg.contains("no private key"),
        "{msg}"
    );

    // A DER body that is not a certificate, in valid PEM.
    let fake = pki.dir.write(
        "fake.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    let msg = load_err(&with(fake, leaf.key.clone()));
    assert!(
        msg.contains("does not belong") || msg.contains("X.509") || msg.contains("cannot check"),
        "{msg}"
    );

    // Settings that contradict the certificates.
    let mut l = listener();
    l.certificates = Some(vec!["ghost".into()]);
    let msg = load_err(&one_listener(vec![spec("a", &leaf, false)], l));
    assert_eq!(
        msg,
        "tls_listener[0] certificates: no [[certificate]] with id \"ghost\""
    );
    let msg = load_err(&one_listener(vec![], listener()));
    assert!(msg.contains("no certificate to serve"), "{msg}");
    let mut l = listener();
    l.client_auth = ClientAuth::Require;
    let msg = load_err(&one_listener(vec![spec("a", &leaf, false)], l));
    assert!(msg.contains("needs client_ca"), "{msg}");
    let mut l = listener();
    l.client_auth = ClientAuth::Request;
    l.client_ca = Some(junk.clone());
    let err = CertStore::load(&one_listener(vec![spec("a", &leaf, false)], l)).expect_err("bad CA");
    assert!(
        matches!(&err, StoreError::File { context, .. } if context == "tls_listener[0] client_ca"),
        "{err}"
    );

    // A certificate with only an IP address and no names is useless unless default.
    let ip = pki.leaf("ip", &["127.0.0.1"], KeyKind::Ecdsa);
    let msg = load_err(&one_listener(vec![spec("ip", &ip, false)], listener()));
    assert!(msg.contains("no DNS name"), "{msg}");
    assert!(CertStore::load(&one_listener(vec![spec("ip", &ip, true)], listener())).is_ok());
}

#[test]
fn a_broken_reload_changes_nothing_and_a_good_one_serves_the_new_certificate() {
    let pki = Pki::new("reload");
    let old = pki.leaf("old", &["a.test"], KeyKind::Ecdsa);
    // The files the configuration names, rewritten in place like a renewal does.
    let cert = pki.dir.write("live.pem", file_text(&old.cert));
    let key = pki.dir.write("live.key", file_text(&old.key));
    let config = one_listener(
        vec![CertificateSpec {
            id: "live".into(),
            cert: cert.clone(),
            key: key.clone(),
            names: None,
            default: true,
        }],
        listener(),
    );
    let store = CertStore::load(&config).expect("store");
    // A connection that started before any reload.
    let live = handshake(&store, &ClientOpts::default(), "a.test");
    live.assert_ok();

    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage").expect("break");
    let err = store.reload(&config).expect_err("broken file");
    assert!(
        err.to_string().contains(&cert.display().to_string()),
        "{err}"
    );
    // The old store still serves the old certificate.
    let pair = handshake(&store, &ClientOpts::default(), "a.test");
    pair.assert_ok();
    assert_eq!(pair.served_cert(), Some(old.der.clone()));

    let new = pki.leaf("new", &["a.test"], KeyKind::Rsa);
    std::fs::write(&cert, file_text(&new.cert)).expect("renew cert");
    std::fs::write(&key, file_text(&new.key)).expect("renew key");
    let renewed = store.reload(&config).expect("reload");
    let pair = handshake(&renewed, &ClientOpts::default(), "a.test");
    pair.assert_ok();
    assert_eq!(pair.served_cert(), Some(new.der.clone()));
    assert_eq!(
        renewed.certificates().next().expect("one").key_type,
        "RSA 2048"
    );
    // The connection made before the reload still works.
    let mut live = live;
    live.server.seal(b"still here").expect("seal");
    live.run();
    assert_eq!(live.at_client, b"still here");
}
