//! `TlsClient` (edge to origin) against a `TlsServer` (the origin's side here).

use std::net::IpAddr;

use super::*;
use crate::{
    ClientCertStatus, ClientIdentity, OriginTls, OriginTlsSpec, StoreError, TlsClient, TlsErrorKind,
};

/// Runs a TlsClient against a TlsServer until quiet; returns both errors.
fn run(client: &mut TlsClient, server: &mut TlsServer) -> (Option<TlsError>, Option<TlsError>) {
    let (mut ce, mut se) = (None, None);
    let mut at_server = Vec::new();
    let mut at_client = Vec::new();
    for _ in 0..64 {
        let mut moved = false;
        let mut c2s = Vec::new();
        client.take_ciphertext(&mut c2s);
        if !c2s.is_empty() && se.is_none() {
            moved = true;
            if let Err(e) = server.feed(&c2s) {
                se = Some(e);
            }
            server.take_plaintext(&mut at_server);
        }
        let mut s2c = Vec::new();
        server.take_ciphertext(&mut s2c);
        if !s2c.is_empty() && ce.is_none() {
            moved = true;
            if let Err(e) = client.feed(&s2c) {
                ce = Some(e);
            }
            client.take_plaintext(&mut at_client);
        }
        if !moved {
            break;
        }
    }
    if !at_server.is_empty() {
        server.seal(&at_server).expect("echo");
        let mut s2c = Vec::new();
        server.take_ciphertext(&mut s2c);
        client.feed(&s2c).expect("echo back");
        client.take_plaintext(&mut at_client);
        assert_eq!(at_client, at_server, "echoed through the origin");
    }
    (ce, se)
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn origin_store(pki: &Pki, names: &[&str]) -> CertStore {
    let leaf = pki.leaf("origin", names, KeyKind::Ecdsa);
    let mut s = spec("origin", &leaf, true);
    s.names = super::names(&["origin.test"]);
    CertStore::load(&one_listener(vec![s], listener())).expect("origin store")
}

#[test]
fn origin_handshake_verifies_name_and_carries_data() {
    let pki = Pki::new("origin-ok");
    let store = origin_store(&pki, &["origin.test"]);
    let tls = OriginTls::build(
        "r",
        &OriginTlsSpec {
            server_name: Some("origin.test".into()),
            ca: Some(pki.ca_path.clone()),
        },
        None,
    )
    .expect("origin tls");
    let mut client = tls.connect(LOCAL).expect("client");
    // The request head is sealed before the handshake finished: it waits, then goes.
    client
        .seal(b"GET /ws HTTP/1.1\r\n\r\n")
        .expect("early seal");
    let mut server = store.listener(0).expect("l0").accept();
    let (ce, se) = run(&mut client, &mut server);
    assert_eq!((ce, se), (None, None));
    let facts = client.facts().expect("facts");
    assert_eq!(facts.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(facts.version, TlsVersion::Tls13);
    assert_eq!(
        server.facts().expect("server facts").sni.as_deref(),
        Some("origin.test"),
        "SNI = the origin's name"
    );
}

#[test]
fn origin_by_ip_address_checks_the_ip_san() {
    let pki = Pki::new("origin-ip");
    let store = origin_store(&pki, &["127.0.0.1"]);
    let tls = OriginTls::build(
        "r",
        &OriginTlsSpec {
            server_name: None,
            ca: Some(pki.ca_path.clone()),
        },
        None,
    )
    .expect("origin tls");
    let mut client = tls.connect(LOCAL).expect("client");
    let mut server = store.listener(0).expect("l0").accept();
    assert_eq!(run(&mut client, &mut server), (None, None));
    assert_eq!(
        server.facts().expect("facts").sni,
        None,
        "no SNI for an address"
    );
}

#[test]
fn origin_verification_failures_say_why() {
    let pki = Pki::new("origin-bad");
    let other = Pki::new("origin-bad-other");
    let store = origin_store(&pki, &["wrong.test", "also-wrong.test"]);

    // Wrong name.
    let tls = OriginTls::build(
        "chat",
        &OriginTlsSpec {
            server_name: Some("origin.test".into()),
            ca: Some(pki.ca_path.clone()),
        },
        None,
    )
    .expect("origin tls");
    let mut client = tls.connect(LOCAL).expect("client");
    let mut server = store.listener(0).expect("l0").accept();
    let (ce, se) = run(&mut client, &mut server);
    let err = ce.expect("refused");
    assert_eq!(err.kind(), TlsErrorKind::Certificate);
    assert_eq!(
        err.to_string(),
        "certificate refused: origin 127.0.0.1 (origin.test): certificate valid for [wrong.test, also-wrong.test], not for \"origin.test\""
    );
    assert_eq!(se.map(|e| e.kind()), Some(TlsErrorKind::AlertReceived));

    // Unknown issuer.
    let tls = OriginTls::build(
        "chat",
        &OriginTlsSpec {
            server_name: Some("wrong.test".into()),
            ca: Some(other.ca_path.clone()),
        },
        None,
    )
    .expect("origin tls");
    let mut client = tls.connect(LOCAL).expect("client");
    let mut server = store.listener(0).expect("l0").accept();
    let err = run(&mut client, &mut server).0.expect("refused");
    assert!(
        err.to_string().contains("not signed by a trusted CA"),
        "{err}"
    );

    // The system roots do not know the test CA either.
    let tls = OriginTls::build(
        "chat",
        &OriginTlsSpec {
            server_name: Some("wrong.test".into()),
            ca: None,
        },
        None,
    );
    if let Ok(tls) = tls {
        let mut client = tls.connect(LOCAL).expect("client");
        let mut server = store.listener(0).expect("l0").accept();
        let err = run(&mut client, &mut server).0.expect("refused");
        assert!(err.to_string().contains("unknown issuer"), "{err}");
    }
}

#[test]
fn origin_settings_errors() {
    let pki = Pki::new("origin-cfg");
    let err = OriginTls::build(
        "r",
        &OriginTlsSpec {
            server_name: Some("bad name!".into()),
            ca: Some(pki.ca_path.clone()),
        },
        None,
    )
    .expect_err("bad name");
    assert!(matches!(err, StoreError::Setting { .. }), "{err}");
    let missing = pki.dir.path("missing-ca.pem");
    let err = OriginTls::build(
        "r",
        &OriginTlsSpec {
            server_name: None,
            ca: Some(missing.clone()),
        },
        None,
    )
    .expect_err("missing CA");
    let text = err.to_string();
    assert!(
        text.starts_with("route \"r\" origin_ca: ")
            && text.contains(&missing.display().to_string()),
        "{text}"
    );
}

#[test]
fn a_client_identity_is_presented_to_a_server_that_requires_one() {
    let pki = Pki::new("client-identity");
    let leaf = pki.leaf("origin", &["origin.test"], KeyKind::Ecdsa);
    let mut l = listener();
    l.client_auth = ClientAuth::Require;
    l.client_ca = Some(pki.ca_path.clone());
    let store = CertStore::load(&one_listener(vec![spec("o", &leaf, true)], l)).expect("store");
    let trusting = || {
        OriginTls::trusting("broker.tls_ca", "broker.tls_ca", Some(&pki.ca_path), None)
            .expect("client")
    };
    // Without an identity: refused by the server.
    let mut client = trusting().connect_named("origin.test", LOCAL).expect("c");
    let mut server = store.listener(0).expect("l0").accept();
    let (_, se) = run(&mut client, &mut server);
    assert_eq!(
        se.map(|e| e.kind()),
        Some(TlsErrorKind::Certificate),
        "no client certificate"
    );
    // With one: accepted, and the server saw a valid certificate.
    let edge = pki.client_leaf("edge", "edge");
    let identity = ClientIdentity::load(&edge.cert, &edge.key).expect("identity");
    assert!(
        !format!("{identity:?}").contains("PRIVATE"),
        "Debug shows no key"
    );
    let tls = trusting().with_identity(&identity);
    let mut client = tls.connect_named("origin.test", LOCAL).expect("c");
    let mut server = store.listener(0).expect("l0").accept();
    assert_eq!(run(&mut client, &mut server), (None, None));
    assert_eq!(
        server.facts().expect("facts").client_cert,
        ClientCertStatus::Valid
    );
    // A key of another certificate: refused at load, naming the key file.
    let other = pki.client_leaf("other", "other");
    let e = ClientIdentity::load(&edge.cert, &other.key).expect_err("mismatch");
    assert_eq!(e.path, other.key);
    assert!(e.what.contains("does not belong to the certificate"), "{e}");
}
