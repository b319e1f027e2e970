//! `TlsServer` against a real rustls client.

use std::io::Write as _;
use std::sync::Arc;

use rustls::{AlertDescription, CipherSuite};

use super::*;
use crate::{ClientCertStatus, PLAINTEXT_HTTP_RESPONSE, TlsErrorKind, TlsLimits};

fn exchange_data(pair: &mut Pair) {
    pair.client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("client write");
    pair.run();
    assert_eq!(pair.at_server, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    pair.server
        .seal(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .expect("seal");
    pair.run();
    assert_eq!(pair.at_client, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
}

#[test]
fn handshakes_ecdsa_and_rsa_over_tls12_and_tls13() {
    let pki = Pki::new("hs");
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let leaf = pki.leaf(&format!("{kind:?}"), &["a.test"], kind);
        let store = CertStore::load(&one_listener(vec![spec("a", &leaf, false)], listener()))
            .expect("store");
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let opts = ClientOpts {
                version: Some(version),
                roots: Some(pki.roots()),
                ..ClientOpts::default()
            };
            let mut pair = handshake(&store, &opts, "a.test");
            pair.assert_ok();
            assert_eq!(pair.handshake_done_seen, 1, "handshake_done reported once");
            let facts = pair.server.facts().expect("facts").clone();
            assert_eq!(facts.version, version, "{kind:?}");
            assert_eq!(facts.sni.as_deref(), Some("a.test"));
            assert_eq!(facts.alpn.as_deref(), Some("http/1.1"));
            assert!(!facts.resumed);
            assert_eq!(facts.client_cert, ClientCertStatus::NotRequested);
            let suite = facts.cipher_name();
            match (version, kind) {
                (TlsVersion::Tls13, _) => assert!(suite.starts_with("TLS13_"), "{suite}"),
                (TlsVersion::Tls12, KeyKind::Ecdsa) => {
                    assert!(suite.starts_with("TLS_ECDHE_ECDSA_"), "{suite}")
                }
                (TlsVersion::Tls12, KeyKind::Rsa) => {
                    assert!(suite.starts_with("TLS_ECDHE_RSA_"), "{suite}")
                }
            }
            assert_eq!(pair.served_cert(), Some(leaf.der.clone()));
            exchange_data(&mut pair);
        }
    }
}

#[test]
fn tls13_only_listener_refuses_a_tls12_client() {
    let pki = Pki::new("v13");
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let mut l = listener();
    l.min_version = TlsVersion::Tls13;
    let store = CertStore::load(&one_listener(vec![spec("a", &leaf, false)], l)).expect("store");
    let opts = ClientOpts {
        version: Some(TlsVersion::Tls12),
        ..ClientOpts::default()
    };
    let pair = handshake(&store, &opts, "a.test");
    let err = pair.server_err.clone().expect("refused");
    assert_eq!(err.kind(), TlsErrorKind::Handshake, "{err}");
    assert!(pair.client_err.is_some());
}

#[test]
fn sni_selects_among_three_certificates_wildcard_and_default() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let b = pki.leaf("b", &["b.test"], KeyKind::Rsa);
    let w = pki.leaf("w", &["*.w.test"], KeyKind::Ecdsa);
    let d = pki.leaf("d", &["d.test"], KeyKind::Ecdsa);
    let certs = vec![
        spec("a", &a, false),
        spec("b", &b, false),
        spec("w", &w, false),
        spec("d", &d, true),
    ];
    let store = CertStore::load(&one_listener(certs.clone(), listener())).expect("store");
    let served = |name: &str, sni: bool| {
        let opts = ClientOpts {
            sni,
            ..ClientOpts::default()
        };
        let pair = handshake(&store, &opts, name);
        pair.assert_ok();
        (
            pair.served_cert().expect("a certificate"),
            pair.server.facts().cloned(),
        )
    };
    assert_eq!(served("a.test", true).0, a.der);
    assert_eq!(served("b.test", true).0, b.der);
    let (cert, facts) = served("B.Test", true);
    assert_eq!(cert, b.der, "names compare case-insensitively");
    assert_eq!(facts.expect("facts").sni.as_deref(), Some("b.test"));
    assert_eq!(served("x.w.test", true).0, w.der);
    assert_eq!(served("X.W.TEST", true).0, w.der);
    // A wildcard covers one label only.
    assert_eq!(served("y.x.w.test", true).0, d.der);
    assert_eq!(served("w.test", true).0, d.der);
    // No SNI, and an unknown name: the default.
    let (cert, facts) = served("a.test", false);
    assert_eq!(cert, d.der);
    assert_eq!(facts.expect("facts").sni, None);
    assert_eq!(served("unknown.test", true).0, d.der);

    // Without a default, an unknown name is refused with unrecognized_name (and no SNI too).
    let mut no_default = certs;
    no_default[3].default = false;
    let store = CertStore::load(&one_listener(no_default, listener())).expect("store");
    for (name, sni) in [("unknown.test", true), ("a.test", false)] {
        let opts = ClientOpts {
            sni,
            ..ClientOpts::default()
        };
        let pair = handshake(&store, &opts, name);
        let err = pair.server_err.clone().expect("refused");
        assert_eq!(err.kind(), TlsErrorKind::UnknownServerName);
        let expected_name = if sni { name } else { "" };
        assert_eq!(
            err,
            TlsError::UnknownServerName {
                name: expected_name.into()
            }
        );
        assert_eq!(
            pair.client_err,
            Some(rustls::Error::AlertReceived(
                AlertDescription::UnrecognisedName
            )),
            "the client is told why"
        );
    }
    // Names known to this store still work.
    assert!(
        handshake(&store, &ClientOpts::default(), "a.test")
            .server_err
            .is_none()
    );
}

#[test]
fn names_override_and_dual_ecdsa_rsa_certificates() {
    let pki = Pki::new("dual");
    let ec = pki.leaf("ec", &["api.test"], KeyKind::Ecdsa);
    let rsa = pki.leaf("rsa", &["api.test"], KeyKind::Rsa);
    // The certificate says api.test; the override serves it for other.test only.
    let mut over = spec("over", &ec, false);
    over.names = names(&["other.test"]);
    let store = CertStore::load(&one_listener(
        vec![over, spec("rsa", &rsa, false)],
        listener(),
    ))
    .expect("store");
    let pair = handshake(&store, &ClientOpts::default(), "other.test");
    assert_eq!(pair.served_cert(), Some(ec.der.clone()));

    // Both keys for one name: an ECDSA-capable client gets ECDSA, an RSA-only one RSA.
    let store = CertStore::load(&one_listener(
        vec![spec("ec", &ec, false), spec("rsa", &rsa, false)],
        listener(),
    ))
    .expect("store");
    let pair = handshake(&store, &ClientOpts::default(), "api.test");
    assert_eq!(pair.served_cert(), Some(ec.der.clone()));
    let opts = ClientOpts {
        version: Some(TlsVersion::Tls12),
        suites: Some(vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]),
        ..ClientOpts::default()
    };
    let pair = handshake(&store, &opts, "api.test");
    pair.assert_ok();
    assert_eq!(pair.served_cert(), Some(rsa.der.clone()));
}

#[test]
fn alpn_h2_is_refused_http11_selected() {
    let pki = Pki::new("alpn");
    let (store, _) = simple_store(&pki);
    let with = |alpn: Vec<&'static str>| {
        handshake(
            &store,
            &ClientOpts {
                alpn,
                ..ClientOpts::default()
            },
            "a.test",
        )
    };
    let pair = with(vec!["h2"]);
    assert_eq!(pair.server_err, Some(TlsError::NoSharedAlpn));
    assert_eq!(
        pair.client_err,
        Some(rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol
        ))
    );
    let pair = with(vec!["h2", "http/1.1"]);
    pair.assert_ok();
    assert_eq!(
        pair.server.facts().expect("facts").alpn.as_deref(),
        Some("http/1.1")
    );
    let pair = with(vec![]);
    pair.assert_ok();
    assert_eq!(pair.server.facts().expect("facts").alpn, None);

    // alpn = off: no protocol selected, h2-only clients pass (and will speak HTTP/1.1 or fail).
    let leaf = pki.leaf("off", &["a.test"], KeyKind::Ecdsa);
    let mut l = listener();
    l.alpn = Alpn::Off;
    let store = CertStore::load(&one_listener(vec![spec("a", &leaf, true)], l)).expect("store");
    let pair = handshake(
        &store,
        &ClientOpts {
            alpn: vec!["h2"],
            ..ClientOpts::default()
        },
        "a.test",
    );
    pair.assert_ok();
    assert_eq!(pair.server.facts().expect("facts").alpn, None);
}

/// Reads the session tickets the server sent after the handshake.
fn finish_with_tickets(pair: &mut Pair) {
    pair.assert_ok();
    // One more round: TLS 1.3 tickets arrive after the client's Finished.
    pair.client.writer().write_all(b"x").expect("write");
    pair.run();
    pair.assert_ok();
}

#[test]
fn sessions_resume_across_configs_sharing_the_ticketer() {
    let pki = Pki::new("resume");
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let config = one_listener(vec![spec("a", &leaf, true)], listener());
    let first = CertStore::load(&config).expect("store");
    // What a second worker's config, or a reload, is: a distinct ServerConfig.
    let second = first.reload(&config).expect("reload");
    let first_tls = first.listener(0).expect("l0");
    let second_tls = second.listener(0).expect("l0");
    assert!(!Arc::ptr_eq(first_tls.config(), second_tls.config()));
    assert!(first.shares_resumption(&second, 0));
    // A store loaded on its own shares nothing.
    let stranger = CertStore::load(&config).expect("store");
    assert!(!first.shares_resumption(&stranger, 0));

    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        let client = client_config(&ClientOpts {
            version: Some(version),
            ..ClientOpts::default()
        });
        let mut pair = Pair::new(connect(&client, "a.test"), first_tls.accept());
        pair.run();
        finish_with_tickets(&mut pair);
        assert!(!pair.server.facts().expect("facts").resumed);

        let mut pair = Pair::new(connect(&client, "a.test"), second_tls.accept());
        pair.run();
        pair.assert_ok();
        let facts = pair.server.facts().expect("facts");
        assert!(
            facts.resumed,
            "{version:?}: the ticket from config 1 resumes on config 2"
        );
        assert_eq!(facts.version, version);
        finish_with_tickets(&mut pair);

        // The same client against an unrelated store: a full handshake.
        let mut pair = Pair::new(
            connect(&client, "a.test"),
            stranger.listener(0).expect("l0").accept(),
        );
        pair.run();
        pair.assert_ok();
        assert!(
            !pair.server.facts().expect("facts").resumed,
            "{version:?}: resumed with a foreign ticketer"
        );
    }
}

#[test]
fn a_client_auth_policy_change_drops_resumption() {
    let pki = Pki::new("resume-policy");
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let open = one_listener(vec![spec("a", &leaf, true)], listener());
    let mut strict_listener = listener();
    strict_listener.client_auth = ClientAuth::Require;
    strict_listener.client_ca = Some(pki.ca_path.clone());
    let strict = one_listener(vec![spec("a", &leaf, true)], strict_listener);
    let store = CertStore::load(&open).expect("store");
    let tightened = store.reload(&strict).expect("reload");
    assert!(!store.shares_resumption(&tightened, 0));
    assert!(tightened.shares_resumption(&tightened.reload(&strict).expect("again"), 0));
}

#[test]
fn mutual_tls_request_and_require() {
    let pki = Pki::new("mtls");
    let other_ca = Pki::new("mtls-other");
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let good = pki.client_leaf("alice", "alice");
    let foreign = other_ca.client_leaf("mallory", "mallory");
    let store_for = |mode: ClientAuth| {
        let mut l = listener();
        l.client_auth = mode;
        l.client_ca = Some(pki.ca_path.clone());
        CertStore::load(&one_listener(vec![spec("a", &leaf, true)], l)).expect("store")
    };
    let with_cert = |c: Option<&Leaf>| ClientOpts {
        client_cert: c.map(|l| (l.cert.clone(), l.key.clone())),
        ..ClientOpts::default()
    };

    let request = store_for(ClientAuth::Request);
    let pair = handshake(&request, &with_cert(None), "a.test");
    pair.assert_ok();
    assert_eq!(
        pair.server.facts().expect("facts").client_cert,
        ClientCertStatus::None
    );
    let pair = handshake(&request, &with_cert(Some(&good)), "a.test");
    pair.assert_ok();
    assert_eq!(
        pair.server.facts().expect("facts").client_cert,
        ClientCertStatus::Valid
    );
    let pair = handshake(&request, &with_cert(Some(&foreign)), "a.test");
    pair.assert_ok();
    match &pair.server.facts().expect("facts").client_cert {
        ClientCertStatus::Invalid { reason } => {
            assert!(reason.contains("unknown issuer"), "{reason}")
        }
        other => panic!("a foreign certificate is {other:?}"),
    }

    let require = store_for(ClientAuth::Require);
    let pair = handshake(&require, &with_cert(None), "a.test");
    let err = pair
        .server_err
        .clone()
        .expect("refused without a certificate");
    assert_eq!(err.kind(), TlsErrorKind::Certificate, "{err}");
    let pair = handshake(&require, &with_cert(Some(&foreign)), "a.test");
    let err = pair
        .server_err
        .clone()
        .expect("refused with a foreign certificate");
    assert_eq!(err.kind(), TlsErrorKind::Certificate, "{err}");
    assert!(err.to_string().contains("unknown issuer"), "{err}");
    assert!(pair.client_err.is_some(), "the client got the alert");
    let pair = handshake(&require, &with_cert(Some(&good)), "a.test");
    pair.assert_ok();
    assert_eq!(
        pair.server.facts().expect("facts").client_cert,
        ClientCertStatus::Valid
    );
}

#[test]
fn plaintext_http_and_non_tls_bytes_are_told_apart() {
    let pki = Pki::new("plain");
    let (store, _) = simple_store(&pki);
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /x HTTP/1.0\r\n",
        b"G",
    ] {
        let mut server = store.listener(0).expect("l0").accept();
        assert_eq!(server.feed(request), Err(TlsError::PlaintextHttp));
        let mut out = Vec::new();
        assert_eq!(
            server.take_ciphertext(&mut out),
            0,
            "no TLS alert to an HTTP client"
        );
        // Later calls keep failing the same way.
        assert_eq!(server.feed(b"more"), Err(TlsError::PlaintextHttp));
        assert_eq!(server.seal(b"x"), Err(TlsError::Closed));
    }
    assert!(PLAINTEXT_HTTP_RESPONSE.starts_with(b"HTTP/1.1 400 "));
    let text = String::from_utf8_lossy(PLAINTEXT_HTTP_RESPONSE);
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{text}"
    );

    let mut server = store.listener(0).expect("l0").accept();
    assert_eq!(
        server.feed(&[0, 1, 2]),
        Err(TlsError::NotTls { first_byte: 0 })
    );
    let mut server = store.listener(0).expect("l0").accept();
    // An SSLv2-style hello.
    assert_eq!(
        server.feed(&[0x80, 0x2e, 0x01]),
        Err(TlsError::NotTls { first_byte: 0x80 })
    );
}

/// The client's first flight (the ClientHello record).
fn client_hello() -> Vec<u8> {
    let config = client_config(&ClientOpts::default());
    let mut client = connect(&config, "a.test");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write");
    }
    out
}

#[test]
fn truncated_and_garbage_client_hellos() {
    let pki = Pki::new("garbage");
    let (store, _) = simple_store(&pki);
    let hello = client_hello();
    assert_eq!(hello[0], 0x16);

    // Truncated: every prefix is "need more", and the rest completes it.
    for cut in [1, 4, 5, 6, hello.len() / 2, hello.len() - 1] {
        let mut server = store.listener(0).expect("l0").accept();
        let p = server.feed(&hello[..cut]).expect("prefix");
        assert_eq!(p.consumed, cut);
        assert!(server.is_handshaking());
        let mut out = Vec::new();
        assert_eq!(
            server.take_ciphertext(&mut out),
            0,
            "nothing sent for a partial hello"
        );
        server.feed(&hello[cut..]).expect("rest");
        assert!(
            server.take_ciphertext(&mut out) > 0,
            "ServerHello after the rest"
        );
    }

    // Garbage inside a well-framed handshake record: refused with an alert.
    let mut garbage = hello.clone();
    for (i, b) in garbage.iter_mut().enumerate().skip(9) {
        *b = (i as u8).wrapping_mul(31);
    }
    let mut server = store.listener(0).expect("l0").accept();
    let err = server.feed(&garbage).expect_err("garbage refused");
    assert!(
        matches!(
            err.kind(),
            TlsErrorKind::BadRecord | TlsErrorKind::Handshake
        ),
        "{err:?}"
    );
    let mut out = Vec::new();
    server.take_ciphertext(&mut out);
    assert_eq!(out.first(), Some(&0x15), "a fatal alert goes back: {out:?}");

    // Not a ClientHello at all (a Finished-type handshake message).
    let mut server = store.listener(0).expect("l0").accept();
    let err = server
        .feed(&[0x16, 3, 3, 0, 4, 20, 0, 0, 0])
        .expect_err("refused");
    assert!(
        matches!(
            err.kind(),
            TlsErrorKind::BadRecord | TlsErrorKind::Handshake
        ),
        "{err:?}"
    );

    // A handshake record longer than TLS allows.
    let mut server = store.listener(0).expect("l0").accept();
    let mut huge = vec![0x16, 3, 3, 0x48, 0x01];
    huge.extend(std::iter::repeat_n(1u8, 0x4801));
    let err = server.feed(&huge).expect_err("oversized refused");
    assert_eq!(err.kind(), TlsErrorKind::OversizedRecord, "{err:?}");
}

#[test]
fn oversized_and_corrupt_records_after_the_handshake() {
    let pki = Pki::new("records");
    let (store, _) = simple_store(&pki);
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let opts = ClientOpts {
            version: Some(version),
            ..ClientOpts::default()
        };
        let mut pair = handshake(&store, &opts, "a.test");
        pair.assert_ok();
        let mut huge = vec![0x17, 3, 3, 0xff, 0xff];
        huge.extend(std::iter::repeat_n(0u8, 0xffff));
        let err = pair.server.feed(&huge).expect_err("oversized");
        assert_eq!(
            err.kind(),
            TlsErrorKind::OversizedRecord,
            "{version:?}: {err:?}"
        );
        let mut out = Vec::new();
        assert!(
            pair.server.take_ciphertext(&mut out) > 0,
            "an alert is sent"
        );

        let mut pair = handshake(&store, &opts, "a.test");
        let err = pair
            .server
            .feed(&[
                0x17, 3, 3, 0, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
            ])
            .expect_err("bad MAC");
        assert_eq!(err.kind(), TlsErrorKind::BadRecord, "{version:?}: {err:?}");
    }
}

#[test]
fn plaintext_is_bounded_and_fed_back_pressure_works() {
    let pki = Pki::new("bound");
    let (store, _) = simple_store(&pki);
    let limits = TlsLimits {
        max_plaintext: 4096,
        max_unsent: 64 * 1024,
    };
    let tls = store.listener(0).expect("l0").clone().with_limits(limits);
    let config = client_config(&ClientOpts::default());
    let mut pair = Pair::new(connect(&config, "a.test"), tls.accept());
    pair.run();
    pair.assert_ok();

    // 1 MiB from the client, fed without taking plaintext: feed stops consuming.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    pair.client.set_buffer_limit(None);
    pair.client.writer().write_all(&data).expect("write");
    let mut wire = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut wire).expect("write_tls");
    }
    let p = pair.server.feed(&wire).expect("feed");
    assert!(
        p.consumed < wire.len(),
        "backpressure: only {} of {} consumed",
        p.consumed,
        wire.len()
    );
    assert!(p.plaintext >= 4096);
    // Bounded: the limit plus at most one read's worth of records.
    assert!(
        p.plaintext <= 4096 + 18 * 1024 + 512,
        "{} bytes buffered",
        p.plaintext
    );
    // Fed again without taking: nothing more is consumed.
    assert_eq!(
        pair.server
            .feed(&wire[p.consumed..])
            .expect("again")
            .consumed,
        0
    );

    let mut got = Vec::new();
    let mut at = p.consumed;
    while at < wire.len() {
        let p = pair.server.feed(&wire[at..]).expect("feed");
        at += p.consumed;
        let took = pair.server.take_plaintext(&mut got);
        assert!(p.consumed > 0 || took > 0, "stalled at {at}");
    }
    assert_eq!(got, data);

    // The send side: sealing past max_unsent fails and queues nothing.
    pair.server
        .seal(&vec![1u8; 60 * 1024])
        .expect("under the limit");
    let err = pair.server.seal(&vec![2u8; 8 * 1024]).expect_err("over");
    assert_eq!(err.kind(), TlsErrorKind::SendQueueFull);
    let mut out = Vec::new();
    pair.server.take_ciphertext(&mut out);
    pair.feed_client(&out);
    assert_eq!(
        pair.at_client.len(),
        60 * 1024,
        "the refused seal queued nothing"
    );
    pair.server
        .seal(&vec![2u8; 8 * 1024])
        .expect("room again once taken");
    // One write bigger than the bound is taken whole when nothing else is held (a message
    // of a function or the frames relay: it was once dropped here).
    let mut out = Vec::new();
    pair.server.take_ciphertext(&mut out);
    pair.server
        .seal(&vec![3u8; 200 * 1024])
        .expect("a single big write");
}

#[test]
fn close_notify_both_ways() {
    let pki = Pki::new("close");
    let (store, _) = simple_store(&pki);
    // Server closes.
    let mut pair = handshake(&store, &ClientOpts::default(), "a.test");
    pair.assert_ok();
    pair.server.seal(b"bye").expect("seal");
    pair.server.close_notify();
    assert!(pair.server.wants_write());
    assert_eq!(pair.server.seal(b"late"), Err(TlsError::Closed));
    pair.run();
    assert_eq!(pair.at_client, b"bye");
    let state = pair.client.process_new_packets().expect("client state");
    assert!(state.peer_has_closed(), "the client saw close_notify");

    // Client closes; what follows its close_notify is ignored.
    let mut pair = handshake(&store, &ClientOpts::default(), "a.test");
    pair.client.writer().write_all(b"last").expect("write");
    pair.client.send_close_notify();
    let mut wire = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut wire).expect("write_tls");
    }
    wire.extend_from_slice(b"trailing junk after close_notify");
    let p = pair.server.feed(&wire).expect("feed");
    assert!(p.peer_closed);
    assert_eq!(p.consumed, wire.len());
    assert!(pair.server.peer_closed());
    let mut got = Vec::new();
    pair.server.take_plaintext(&mut got);
    assert_eq!(got, b"last");
    assert!(pair.server.feed(b"more").expect("after close").peer_closed);

    // After the server's close_notify, a malformed record from the client is dropped unread
    // (rustls would send a fatal alert after its close_notify, which it asserts against).
    let mut pair = handshake(&store, &ClientOpts::default(), "a.test");
    pair.assert_ok();
    pair.server.close_notify();
    let garbage = [0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5];
    let p = pair.server.feed(&garbage).expect("dropped, not an error");
    assert_eq!(p.consumed, garbage.len());
    let mut got = Vec::new();
    pair.server.take_plaintext(&mut got);
    assert!(got.is_empty());

    // Closed before the client's hello: over, nothing to send, nothing accepted later
    // (found by the tls fuzz target: a later handshake used to accept seals).
    let mut server = store.listener(0).expect("l0").accept();
    server.close_notify();
    let mut out = Vec::new();
    assert_eq!(server.take_ciphertext(&mut out), 0);
    assert_eq!(server.feed(&client_hello()), Err(TlsError::Closed));
    assert_eq!(server.seal(b"x"), Err(TlsError::Closed));
    assert!(!server.is_handshaking());
}

/// TLS 1.2 record protection by hand (AES-128-GCM), to play a client rustls has no API for.
pub(crate) mod tls12_gcm {
    use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    pub(crate) fn seal(key: &[u8], iv: &[u8], seq: u64, typ: u8, plaintext: &[u8]) -> Vec<u8> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("key"));
        let mut explicit = [0u8; 8];
        explicit.copy_from_slice(&iv[4..12]);
        for (e, s) in explicit.iter_mut().zip(seq.to_be_bytes()) {
            *e ^= s;
        }
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&iv[..4]);
        nonce[4..].copy_from_slice(&explicit);
        let mut aad = seq.to_be_bytes().to_vec();
        aad.extend_from_slice(&[typ, 3, 3]);
        aad.extend_from_slice(&(plaintext.len() as u16).to_be_bytes());
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("seal");
        let mut record = vec![typ, 3, 3];
        record.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
        record.extend_from_slice(&explicit);
        record.extend_from_slice(&body);
        record
    }

    /// Opens one record (`salt` = the 4 implicit nonce bytes); returns (type, plaintext).
    pub(crate) fn open(key: &[u8], salt: &[u8], seq: u64, record: &[u8]) -> (u8, Vec<u8>) {
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("key"));
        let typ = record[0];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(salt);
        nonce[4..].copy_from_slice(&record[5..13]);
        let mut body = record[13..].to_vec();
        let mut aad = seq.to_be_bytes().to_vec();
        aad.extend_from_slice(&[typ, 3, 3]);
        aad.extend_from_slice(&((body.len() - 16) as u16).to_be_bytes());
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("open");
        (typ, plain.to_vec())
    }
}

#[test]
fn tls12_renegotiation_is_refused() {
    let pki = Pki::new("reneg");
    let (store, _) = simple_store(&pki);
    let opts = ClientOpts {
        version: Some(TlsVersion::Tls12),
        suites: Some(vec![CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
        secrets: true,
        ..ClientOpts::default()
    };
    let pair = handshake(&store, &opts, "a.test");
    pair.assert_ok();
    let Pair {
        client, mut server, ..
    } = pair;
    let secrets = client.dangerous_extract_secrets().expect("client secrets");
    let (
        mut tx_seq,
        rustls::ConnectionTrafficSecrets::Aes128Gcm {
            key: tx_key,
            iv: tx_iv,
        },
    ) = secrets.tx
    else {
        panic!("AES-128-GCM expected");
    };
    let (
        rx_seq,
        rustls::ConnectionTrafficSecrets::Aes128Gcm {
            key: rx_key,
            iv: rx_iv,
        },
    ) = secrets.rx
    else {
        panic!("AES-128-GCM expected");
    };
    // A real ClientHello handshake message (the record header stripped).
    let hello = client_hello();
    let message = &hello[5..];

    let record = tls12_gcm::seal(tx_key.as_ref(), tx_iv.as_ref(), tx_seq, 0x16, message);
    tx_seq += 1;
    let p = server
        .feed(&record)
        .expect("a first attempt is refused softly");
    assert_eq!(p.consumed, record.len());
    let mut out = Vec::new();
    server.take_ciphertext(&mut out);
    assert_eq!(out[0], 0x15, "an alert record");
    let (typ, alert) = tls12_gcm::open(rx_key.as_ref(), &rx_iv.as_ref()[..4], rx_seq, &out);
    assert_eq!(typ, 0x15);
    assert_eq!(alert, [1, 100], "warning no_renegotiation");

    let record = tls12_gcm::seal(tx_key.as_ref(), tx_iv.as_ref(), tx_seq, 0x16, message);
    assert_eq!(server.feed(&record), Err(TlsError::Renegotiation));
}
