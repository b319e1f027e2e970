//! kTLS hand-off: the extracted keys must protect records exactly as the peer's rustls does,
//! checked with the AEAD itself. The kernel half runs only where the kernel has TLS.

use std::io::Write as _;

use aws_lc_rs::aead::{AES_128_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::CipherSuite;

use super::server::tls12_gcm;
use super::*;
use crate::ktls::{self, CryptoInfo, TLS_CIPHER_AES_GCM_128, TLS_CIPHER_CHACHA20_POLY1305};

fn aead(info: &CryptoInfo) -> LessSafeKey {
    let alg = match info.cipher_type {
        TLS_CIPHER_AES_GCM_128 => &AES_128_GCM,
        TLS_CIPHER_CHACHA20_POLY1305 => &CHACHA20_POLY1305,
        other => panic!("cipher {other} not covered by this test"),
    };
    LessSafeKey::new(UnboundKey::new(alg, &info.key).expect("key"))
}

/// Opens a TLS 1.3 record as the kernel would with `info` (sequence `seq`).
fn open13(info: &CryptoInfo, seq: u64, record: &[u8]) -> (u8, Vec<u8>) {
    let mut body = record[5..].to_vec();
    let plain = aead(info)
        .open_in_place(
            Nonce::assume_unique_for_key(info.nonce_for(seq)),
            Aad::from(&record[..5]),
            &mut body,
        )
        .expect("the extracted rx key opens the client's record");
    let mut inner = plain.to_vec();
    while inner.last() == Some(&0) {
        inner.pop();
    }
    let typ = inner.pop().expect("content type");
    (typ, inner)
}

/// Seals a TLS 1.3 application-data record as the kernel would.
fn seal13(info: &CryptoInfo, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut body = data.to_vec();
    body.push(0x17);
    let len = (body.len() + 16) as u16;
    let mut header = vec![0x17, 3, 3];
    header.extend_from_slice(&len.to_be_bytes());
    aead(info)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(info.nonce_for(seq)),
            Aad::from(&header[..]),
            &mut body,
        )
        .expect("seal");
    header.extend_from_slice(&body);
    header
}

/// Seals a TLS 1.2 AES-GCM record as the kernel would (explicit nonce from `nonce_for`).
fn seal12(info: &CryptoInfo, seq: u64, data: &[u8]) -> Vec<u8> {
    let nonce = info.nonce_for(seq);
    let mut aad = seq.to_be_bytes().to_vec();
    aad.extend_from_slice(&[0x17, 3, 3]);
    aad.extend_from_slice(&(data.len() as u16).to_be_bytes());
    let mut body = data.to_vec();
    aead(info)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("seal");
    let mut record = vec![0x17, 3, 3];
    record.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    record.extend_from_slice(&nonce[4..]);
    record.extend_from_slice(&body);
    record
}

/// A finished handshake with everything flushed (TLS 1.3 tickets included).
fn ready_pair(version: TlsVersion, suite: CipherSuite) -> (Pair, Pki) {
    let pki = Pki::new("ktls");
    let (store, _) = simple_store(&pki);
    let opts = ClientOpts {
        version: Some(version),
        suites: Some(vec![suite]),
        ..ClientOpts::default()
    };
    let mut pair = handshake(&store, &opts, "a.test");
    pair.assert_ok();
    pair.client.writer().write_all(b"warm-up").expect("write");
    pair.run();
    assert_eq!(pair.at_server, b"warm-up");
    assert!(
        pair.server.ktls_ready(),
        "nothing pending after the warm-up"
    );
    (pair, pki)
}

#[test]
fn tls13_extracted_keys_protect_records_like_rustls() {
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let (mut pair, _pki) = ready_pair(TlsVersion::Tls13, suite);
        // A client record the server has not read: it is what the kernel would receive.
        pair.client
            .writer()
            .write_all(b"to the kernel")
            .expect("write");
        let mut wire = Vec::new();
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).expect("write_tls");
        }
        let Pair {
            mut client, server, ..
        } = pair;
        let handoff = server.into_ktls().expect("hand-off");
        assert_eq!(handoff.version, TlsVersion::Tls13);
        assert_eq!(handoff.rx.version, ktls::TLS_1_3_VERSION);
        let rx_seq = u64::from_be_bytes(handoff.rx.rec_seq);
        assert_eq!(rx_seq, 1, "{suite:?}: one record (the warm-up) was read");
        let (typ, data) = open13(&handoff.rx, rx_seq, &wire);
        assert_eq!(
            (typ, data.as_slice()),
            (0x17, &b"to the kernel"[..]),
            "{suite:?}"
        );

        // What the kernel would send, read by the client's rustls.
        let tx_seq = u64::from_be_bytes(handoff.tx.rec_seq);
        let record = seal13(&handoff.tx, tx_seq, b"from the kernel");
        client.read_tls(&mut &record[..]).expect("read_tls");
        client
            .process_new_packets()
            .expect("the client accepts the kernel's record");
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
        assert_eq!(got, b"from the kernel", "{suite:?}");
        // And the next one (sequence numbers advance).
        let record = seal13(&handoff.tx, tx_seq + 1, b"again");
        client.read_tls(&mut &record[..]).expect("read_tls");
        client.process_new_packets().expect("second record");
    }
}

#[test]
fn tls12_extracted_keys_protect_records_like_rustls() {
    let (mut pair, _pki) = ready_pair(
        TlsVersion::Tls12,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    );
    pair.client
        .writer()
        .write_all(b"to the kernel")
        .expect("write");
    let mut wire = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut wire).expect("write_tls");
    }
    let Pair {
        mut client, server, ..
    } = pair;
    let handoff = server.into_ktls().expect("hand-off");
    assert_eq!(handoff.rx.version, ktls::TLS_1_2_VERSION);
    assert_eq!(handoff.rx.cipher_type, TLS_CIPHER_AES_GCM_128);
    assert_eq!(
        (
            handoff.rx.iv.len(),
            handoff.rx.key.len(),
            handoff.rx.salt.len()
        ),
        (8, 16, 4),
        "tls12_crypto_info_aes_gcm_128's parts"
    );
    let rx_seq = u64::from_be_bytes(handoff.rx.rec_seq);
    let (typ, data) = tls12_gcm::open(&handoff.rx.key, &handoff.rx.salt, rx_seq, &wire);
    assert_eq!((typ, data.as_slice()), (0x17, &b"to the kernel"[..]));

    let tx_seq = u64::from_be_bytes(handoff.tx.rec_seq);
    for (k, text) in [&b"from the kernel"[..], b"and more"].iter().enumerate() {
        let record = seal12(&handoff.tx, tx_seq + k as u64, text);
        client.read_tls(&mut &record[..]).expect("read_tls");
        client
            .process_new_packets()
            .expect("the client accepts the kernel's record");
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut got);
        assert_eq!(got, *text);
    }
}

#[test]
fn hand_off_waits_for_a_record_boundary_and_an_empty_queue() {
    let (mut pair, _pki) = ready_pair(TlsVersion::Tls13, CipherSuite::TLS13_AES_128_GCM_SHA256);
    pair.client.writer().write_all(b"split").expect("write");
    let mut wire = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut wire).expect("write_tls");
    }
    pair.server.feed(&wire[..3]).expect("partial record");
    assert!(!pair.server.ktls_ready(), "half a record was read");
    pair.server.feed(&wire[3..]).expect("rest");
    assert!(!pair.server.ktls_ready(), "plaintext waits");
    let mut got = Vec::new();
    pair.server.take_plaintext(&mut got);
    assert!(pair.server.ktls_ready());
    pair.server.seal(b"queued").expect("seal");
    assert!(!pair.server.ktls_ready(), "ciphertext waits to be sent");
    let mut out = Vec::new();
    pair.server.take_ciphertext(&mut out);
    assert!(pair.server.ktls_ready());

    // Before the handshake: refused.
    let pki = Pki::new("ktls-early");
    let (store, _) = simple_store(&pki);
    let server = store.listener(0).expect("l0").accept();
    assert!(!server.ktls_ready());
    assert!(server.into_ktls().is_err());
}

#[test]
fn constants_match_libc() {
    assert_eq!(ktls::TLS_1_2_VERSION, libc::TLS_1_2_VERSION);
    assert_eq!(ktls::TLS_1_3_VERSION, libc::TLS_1_3_VERSION);
    assert_eq!(ktls::TLS_CIPHER_AES_GCM_128, libc::TLS_CIPHER_AES_GCM_128);
    assert_eq!(ktls::TLS_CIPHER_AES_GCM_256, libc::TLS_CIPHER_AES_GCM_256);
    assert_eq!(
        ktls::TLS_CIPHER_CHACHA20_POLY1305,
        libc::TLS_CIPHER_CHACHA20_POLY1305
    );
}

/// The kernel half: a real socket handed to the kernel after a user-space handshake, through
/// the ring crate's setsockopt calls. Runs only where the kernel takes TLS keys
/// (`wsedge_ring::ktls::support`: `tls` in `/proc/sys/net/ipv4/tcp_available_ulp`, confirmed
/// on a loopback socket).
#[test]
fn kernel_hand_off_over_a_real_socket() {
    if let Err(why) = wsedge_ring::ktls::support() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: kernel TLS hand-off (setsockopt TCP_ULP \"tls\", TLS_TX, TLS_RX).\n\
             This kernel has {why}\n\
             (kernel built without CONFIG_TLS, or `modprobe tls` not run). Key extraction is\n\
             tested above against the AEAD; the kernel itself is not exercised here.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }
    kernel::run();
}

mod kernel {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use std::os::fd::AsRawFd;

    use wsedge_ring::ktls::Crypto;

    use super::*;

    fn kernel(info: &CryptoInfo) -> Crypto {
        Crypto::new(
            info.version,
            info.cipher_type,
            &info.iv,
            &info.key,
            &info.salt,
            info.rec_seq,
        )
        .expect("parts fit linux/tls.h")
    }

    pub(super) fn run() {
        let pki = Pki::new("ktls-kernel");
        let (store, _) = simple_store(&pki);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = client_config(&ClientOpts {
            version: Some(TlsVersion::Tls13),
            suites: Some(vec![CipherSuite::TLS13_AES_128_GCM_SHA256]),
            ..ClientOpts::default()
        });
        let client = std::thread::spawn(move || {
            let mut conn = connect(&config, "a.test");
            let mut sock = TcpStream::connect(addr).expect("connect");
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut buf = [0u8; 15];
            tls.read_exact(&mut buf).expect("read from the kernel");
            assert_eq!(&buf, b"from the kernel");
            tls.write_all(b"to the kernel").expect("write");
            tls.flush().expect("flush");
        });
        let (mut sock, _) = listener.accept().expect("accept");
        let mut server = store.listener(0).expect("l0").accept();
        let mut buf = vec![0u8; 16 * 1024];
        while server.is_handshaking() || !server.ktls_ready() {
            let mut out = Vec::new();
            server.take_ciphertext(&mut out);
            sock.write_all(&out).expect("write");
            if !server.is_handshaking() && server.ktls_ready() {
                break;
            }
            let n = sock.read(&mut buf).expect("read");
            assert!(n > 0, "client left during the handshake");
            server.feed(&buf[..n]).expect("feed");
        }
        let handoff = server.into_ktls().expect("hand-off");
        wsedge_ring::ktls::install(sock.as_raw_fd(), &kernel(&handoff.tx), &kernel(&handoff.rx))
            .expect("TCP_ULP tls, TLS_TX, TLS_RX");
        sock.write_all(b"from the kernel")
            .expect("plain write, kernel encrypts");
        let mut got = [0u8; 13];
        sock.read_exact(&mut got)
            .expect("plain read, kernel decrypts");
        assert_eq!(&got, b"to the kernel");
        client.join().expect("client");
    }
}
