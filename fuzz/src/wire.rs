//! `wire`: the control protocol's framing and decoding (`wsedge_command::wire`), which the
//! dataplane's control socket and the control process run on bytes from any local peer.
//!
//! - Framing: the input read as a stream of frames through a reader that returns a few bytes
//!   at a time and sometimes `Interrupted`, under four limits; each `read_frame` result (a
//!   body, `Closed`, `Truncated` with its counts, `TooLarge`) is the one a direct reading of
//!   the bytes gives, and no call allocates more than the limit (a length over it is refused
//!   before anything is allocated: the allocator is watched).
//! - Decoding: every body read goes through `decode_request` and `decode_response`; an
//!   accepted envelope has the current version and re-encodes to the same value, and a
//!   refusal's kind and id are those the JSON shows (not JSON: bad request and no id;
//!   another version: unsupported, with the id).
//! - Encoding: a request and a response built from the input with `arbitrary` (every
//!   variant, any strings and bytes) go through `send` and `read_frame` and decode to the
//!   same envelope (`decode(encode(x)) == x`); the `type` on the wire is `Request::kind`.

use std::collections::BTreeMap;
use std::io::{self, Read};

use arbitrary::Unstructured;
use serde_json::Value;
use wsedge_command::wire::{
    Applied, CertInfo, ConfigText, Connection, DaemonStatus, DataplaneStatus, Envelope, ErrorKind,
    FunctionRow, GenerationStatus, LimitsView, ListEntryView, ListView, MAX_FRAME, OriginHealth,
    PROTOCOL_VERSION, Percentiles, PoolHealth, Request, Response, RouteRow, StatsReport, Status,
    Upgraded, WireError, WorkerStats, WorkerStatus, decode_request, decode_response, read_frame,
    send,
};

use crate::alloc::largest_allocation;

/// The wire checks (see the module doc). Input: `[selector, stream...]`: bits 0-1 pick the
/// frame limit, the rest seed the reader's pace.
pub fn wire(data: &[u8]) {
    let [selector, stream @ ..] = data else {
        return;
    };
    let max = [MAX_FRAME, 0, 16, 1024][usize::from(selector & 3)];
    for body in read_frames(stream, max, *selector) {
        check_request_body(&body);
        check_response_body(&body);
    }
    let mut u = Unstructured::new(stream);
    if let Ok(id) = u.arbitrary::<u64>() {
        if let Ok(request) = arbitrary_request(&mut u) {
            round_trip_request(id, request);
        }
        if let Ok(response) = arbitrary_response(&mut u) {
            round_trip_response(id, response);
        }
    }
}

/// Gives at most a few bytes per call, and sometimes `Interrupted` instead.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    rng: u32,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rng = self.rng.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let r = self.rng >> 16;
        if r.is_multiple_of(7) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (1 + r as usize % 300)
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What reading the next frame of `rest` must give, read directly off the bytes: the body,
/// or the error (as text: `WireError` has no `PartialEq`).
fn expected_frame(rest: &[u8], max: usize) -> Result<&[u8], String> {
    let Some((len_bytes, body)) = rest.split_first_chunk::<4>() else {
        return Err(if rest.is_empty() {
            WireError::Closed.to_string()
        } else {
            WireError::Truncated {
                got: rest.len(),
                want: 4,
            }
            .to_string()
        });
    };
    let len = u32::from_be_bytes(*len_bytes) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max }.to_string());
    }
    body.get(..len).ok_or_else(|| {
        WireError::Truncated {
            got: rest.len(),
            want: len + 4,
        }
        .to_string()
    })
}

/// Reads frames off `stream` until an error, checking each result; returns the bodies.
fn read_frames(stream: &[u8], max: usize, seed: u8) -> Vec<Vec<u8>> {
    let mut reader = Trickle {
        data: stream,
        pos: 0,
        rng: u32::from(seed),
    };
    let mut bodies = Vec::new();
    loop {
        let expected = expected_frame(&stream[reader.pos..], max);
        let (got, largest) = largest_allocation(|| read_frame(&mut reader, max));
        assert!(
            largest <= max,
            "read_frame allocated {largest} bytes under a limit of {max}"
        );
        match (got, expected) {
            (Ok(body), Ok(want)) => {
                assert_eq!(body, want, "frame body");
                bodies.push(body);
            }
            (Err(e), Err(want)) => {
                assert_eq!(e.to_string(), want, "frame error");
                return bodies;
            }
            (got, want) => panic!("read_frame gave {got:?}, the bytes say {want:?}"),
        }
    }
}

fn check_request_body(body: &[u8]) {
    let value = serde_json::from_slice::<Value>(body).ok();
    match decode_request(body) {
        Ok(envelope) => {
            assert_eq!(envelope.version, PROTOCOL_VERSION);
            let again = serde_json::to_vec(&envelope).expect("encode");
            let decoded = decode_request(&again).expect("a re-encoded request decodes");
            assert_eq!(decoded, envelope, "re-encoded request decodes differently");
        }
        Err(e) => {
            let Some(value) = value else {
                assert_eq!((e.id, e.kind), (None, ErrorKind::BadRequest), "not JSON");
                return;
            };
            assert_eq!(e.id, value.get("id").and_then(Value::as_u64), "error id");
            let version = value.get("version").and_then(Value::as_u64);
            let kind = match version {
                Some(v) if v != u64::from(PROTOCOL_VERSION) => ErrorKind::UnsupportedVersion,
                _ => ErrorKind::BadRequest,
            };
            assert_eq!(e.kind, kind, "error kind for version {version:?}");
            assert!(!e.message.is_empty());
        }
    }
}

fn check_response_body(body: &[u8]) {
    match decode_response(body) {
        Ok(envelope) => {
            assert_eq!(envelope.version, PROTOCOL_VERSION);
            let again = serde_json::to_vec(&envelope).expect("encode");
            let decoded = decode_response(&again).expect("a re-encoded response decodes");
            assert_eq!(decoded, envelope, "re-encoded response decodes differently");
        }
        Err(WireError::Malformed(_)) => {}
        Err(WireError::Version(v)) => assert_ne!(v, PROTOCOL_VERSION),
        Err(e) => panic!("decode_response gave {e:?}"),
    }
}

/// Reads back the one frame `send` wrote.
fn read_back(buf: &[u8]) -> Vec<u8> {
    let body = read_frame(&mut &buf[..], MAX_FRAME).expect("read back what was sent");
    assert_eq!(buf.len(), body.len() + 4, "one frame");
    body
}

fn round_trip_request(id: u64, request: Request) {
    let envelope = Envelope::new(id, request);
    let mut buf = Vec::new();
    send(&mut buf, &envelope).expect("send into a Vec");
    let body = read_back(&buf);
    let value: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(value["body"]["type"], envelope.body.kind(), "type tag");
    let decoded = decode_request(&body).map_err(|e| e.message);
    assert_eq!(decoded, Ok(envelope), "decode(encode(request))");
}

fn round_trip_response(id: u64, response: Response) {
    let envelope = Envelope::new(id, response);
    let mut buf = Vec::new();
    send(&mut buf, &envelope).expect("send into a Vec");
    let decoded = decode_response(&read_back(&buf)).map_err(|e| e.to_string());
    assert_eq!(decoded, Ok(envelope), "decode(encode(response))");
}

// ---------------------------------------------------------------------------------------------
// Arbitrary requests and responses (the command crate does not derive `Arbitrary`)
// ---------------------------------------------------------------------------------------------

/// The variant number of a request: the exhaustive match makes a new variant a compile
/// error here until [`arbitrary_request`] builds it.
fn request_variant(r: &Request) -> u8 {
    match r {
        Request::Status => 0,
        Request::Stats => 1,
        Request::Connections { .. } => 2,
        Request::Kill { .. } => 3,
        Request::ApplyConfig { .. } => 4,
        Request::ConfigShow => 5,
        Request::RoutesList => 6,
        Request::LimitsGet { .. } => 7,
        Request::Drain { .. } => 8,
        Request::Publish { .. } => 9,
        Request::Presence { .. } => 10,
        Request::ListsShow { .. } => 11,
        Request::Reload => 12,
        Request::OriginAdd { .. } => 13,
        Request::OriginRemove { .. } => 14,
        Request::ListAdd { .. } => 15,
        Request::ListRemove { .. } => 16,
        Request::LimitsSet { .. } => 17,
        Request::Certs => 18,
        Request::CertsReload => 19,
        Request::OriginsHealth => 20,
        Request::FunctionsList => 21,
        Request::FunctionDeploy { .. } => 22,
        Request::Upgrade { .. } => 23,
    }
}

fn arbitrary_request(u: &mut Unstructured<'_>) -> arbitrary::Result<Request> {
    let variant = u.int_in_range(0..=23u8)?;
    let request = match variant {
        0 => Request::Status,
        1 => Request::Stats,
        2 => Request::Connections {
            route: u.arbitrary()?,
            limit: u.arbitrary()?,
        },
        3 => Request::Kill { id: conn_id(u)? },
        4 => Request::ApplyConfig {
            toml: u.arbitrary()?,
            source: u.arbitrary()?,
        },
        5 => Request::ConfigShow,
        6 => Request::RoutesList,
        7 => Request::LimitsGet {
            route: u.arbitrary()?,
        },
        8 => Request::Drain {
            timeout_ms: u.arbitrary()?,
            over_ms: u.arbitrary()?,
        },
        9 => Request::Publish {
            channel: u.arbitrary()?,
            message: u.arbitrary()?,
        },
        10 => Request::Presence {
            channel: u.arbitrary()?,
        },
        11 => Request::ListsShow {
            name: u.arbitrary()?,
        },
        12 => Request::Reload,
        13 => Request::OriginAdd {
            route: u.arbitrary()?,
            addr: u.arbitrary()?,
        },
        14 => Request::OriginRemove {
            route: u.arbitrary()?,
            addr: u.arbitrary()?,
        },
        15 => Request::ListAdd {
            name: u.arbitrary()?,
            cidr: u.arbitrary()?,
            expires: u.arbitrary()?,
        },
        16 => Request::ListRemove {
            name: u.arbitrary()?,
            cidr: u.arbitrary()?,
        },
        17 => Request::LimitsSet {
            key: u.arbitrary()?,
            value: u.arbitrary()?,
            route: u.arbitrary()?,
        },
        18 => Request::Certs,
        19 => Request::CertsReload,
        20 => Request::OriginsHealth,
        21 => Request::FunctionsList,
        22 => Request::FunctionDeploy {
            route: u.arbitrary()?,
            script: u.arbitrary()?,
        },
        _ => Request::Upgrade {
            binary: u.arbitrary()?,
        },
    };
    assert_eq!(request_variant(&request), variant);
    Ok(request)
}

/// Every error kind (`Unknown` included: it is how a newer peer's kind arrives).
const ERROR_KINDS: [ErrorKind; 13] = [
    ErrorKind::BadRequest,
    ErrorKind::FrameTooLarge,
    ErrorKind::UnsupportedVersion,
    ErrorKind::PermissionDenied,
    ErrorKind::InvalidConfig,
    ErrorKind::NotFound,
    ErrorKind::Unavailable,
    ErrorKind::NotSupported,
    ErrorKind::Busy,
    ErrorKind::UpgradeFailed,
    ErrorKind::UpgradeRefused,
    ErrorKind::Internal,
    ErrorKind::Unknown,
];

/// As [`request_variant`], for responses.
fn response_variant(r: &Response) -> u8 {
    match r {
        Response::Status(_) => 0,
        Response::Stats(_) => 1,
        Response::Connections { .. } => 2,
        Response::Killed { .. } => 3,
        Response::Applied(_) => 4,
        Response::Config(_) => 5,
        Response::Routes { .. } => 6,
        Response::Limits(_) => 7,
        Response::Draining { .. } => 8,
        Response::Published { .. } => 9,
        Response::Presence { .. } => 10,
        Response::Lists { .. } => 11,
        Response::Error { .. } => 12,
        Response::Origins { .. } => 13,
        Response::Certs { .. } => 14,
        Response::CertsReloaded { .. } => 15,
        Response::Functions { .. } => 16,
        Response::Upgraded(_) => 17,
    }
}

fn worker_stats(u: &mut Unstructured<'_>) -> arbitrary::Result<WorkerStats> {
    let percentiles = if u.arbitrary()? {
        Some(Percentiles {
            count: u.arbitrary()?,
            p50_us: u.arbitrary()?,
            p90_us: u.arbitrary()?,
            p99_us: u.arbitrary()?,
            max_us: u.arbitrary()?,
        })
    } else {
        None
    };
    Ok(WorkerStats {
        worker: u.arbitrary()?,
        config_version: u.arbitrary()?,
        live: u.arbitrary()?,
        accepted: u.arbitrary()?,
        upgraded: u.arbitrary()?,
        plain_http: u.arbitrary()?,
        accept_errors: u.arbitrary()?,
        bytes_from_clients: u.arbitrary()?,
        bytes_to_clients: u.arbitrary()?,
        closed: u.arbitrary::<BTreeMap<String, u64>>()?,
        handshake_latency: percentiles,
        messages_from_clients: u.arbitrary()?,
        messages_from_origins: u.arbitrary()?,
        close_codes_seen: u.arbitrary()?,
        close_codes_sent: u.arbitrary()?,
        splice_fallbacks: u.arbitrary()?,
        ring_buffers: u.arbitrary()?,
        ring_buffers_held: u.arbitrary()?,
        handshakes_in_progress: u.arbitrary()?,
        reads_spilled: u.arbitrary()?,
        reads_starved: u.arbitrary()?,
        reads_rationed: u.arbitrary()?,
        tls_handshakes: u.arbitrary()?,
        tls_resumed: u.arbitrary()?,
        tls_errors: u.arbitrary::<BTreeMap<String, u64>>()?,
        ktls_handoffs: u.arbitrary()?,
        ktls_failures: u.arbitrary()?,
        ktls_control_records: u.arbitrary()?,
    })
}

fn arbitrary_response(u: &mut Unstructured<'_>) -> arbitrary::Result<Response> {
    let variant = u.int_in_range(0..=17u8)?;
    let response = match variant {
        0 => {
            let dataplane = if u.arbitrary()? {
                let workers = (0..u.int_in_range(0..=3)?)
                    .map(|_| {
                        Ok(WorkerStatus {
                            index: u.arbitrary()?,
                            config_version: u.arbitrary()?,
                            live: u.arbitrary()?,
                            accepting: u.arbitrary()?,
                        })
                    })
                    .collect::<arbitrary::Result<_>>()?;
                Some(DataplaneStatus {
                    pid: u.arbitrary()?,
                    build: u.arbitrary()?,
                    uptime_ms: u.arbitrary()?,
                    config_version: u.arbitrary()?,
                    config_hash: u.arbitrary()?,
                    config_source: u.arbitrary()?,
                    workers,
                    generation: u.arbitrary()?,
                    old_generations: (0..u.int_in_range(0..=2)?)
                        .map(|_| {
                            Ok(GenerationStatus {
                                generation: u.arbitrary()?,
                                pid: u.arbitrary()?,
                                build: u.arbitrary()?,
                                live: u.arbitrary()?,
                            })
                        })
                        .collect::<arbitrary::Result<_>>()?,
                })
            } else {
                None
            };
            let daemon = if u.arbitrary()? {
                Some(DaemonStatus {
                    pid: u.arbitrary()?,
                    uptime_ms: u.arbitrary()?,
                    config_file: u.arbitrary()?,
                    desired_hash: u.arbitrary()?,
                    dataplane_socket: u.arbitrary()?,
                    dataplane_reachable: u.arbitrary()?,
                    in_sync: u.arbitrary()?,
                    last_error: u.arbitrary()?,
                    fleet: None,
                })
            } else {
                None
            };
            Response::Status(Status { dataplane, daemon })
        }
        1 => {
            let workers = (0..u.int_in_range(0..=2)?)
                .map(|_| worker_stats(u))
                .collect::<arbitrary::Result<_>>()?;
            Response::Stats(StatsReport {
                workers,
                total: worker_stats(u)?,
                functions: function_rows(u)?,
            })
        }
        2 => {
            let connections = (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(Connection {
                        id: conn_id(u)?,
                        worker: u.arbitrary()?,
                        client: u.arbitrary()?,
                        route: u.arbitrary()?,
                        origin: u.arbitrary()?,
                        age_ms: u.arbitrary()?,
                        bytes_from_client: u.arbitrary()?,
                        bytes_to_client: u.arbitrary()?,
                        state: u.arbitrary()?,
                    })
                })
                .collect::<arbitrary::Result<_>>()?;
            Response::Connections { connections }
        }
        3 => Response::Killed { id: conn_id(u)? },
        4 => Response::Applied(Applied {
            version: u.arbitrary()?,
            hash: u.arbitrary()?,
            source: u.arbitrary()?,
            pushed: u.arbitrary()?,
            workers_confirmed: u.arbitrary()?,
            restart_required: u.arbitrary()?,
        }),
        5 => Response::Config(ConfigText {
            version: u.arbitrary()?,
            hash: u.arbitrary()?,
            source: u.arbitrary()?,
            toml: u.arbitrary()?,
        }),
        6 => {
            let routes = (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(RouteRow {
                        name: u.arbitrary()?,
                        sni: u.arbitrary()?,
                        host: u.arbitrary()?,
                        path_prefix: u.arbitrary()?,
                        origins: u.arbitrary()?,
                        relay: u.arbitrary()?,
                    })
                })
                .collect::<arbitrary::Result<_>>()?;
            Response::Routes { routes }
        }
        7 => Response::Limits(LimitsView {
            route: u.arbitrary()?,
            limits: u.arbitrary()?,
        }),
        8 => Response::Draining {
            workers: u.arbitrary()?,
            live: u.arbitrary()?,
        },
        9 => Response::Published {
            channel: u.arbitrary()?,
            delivered: u.arbitrary()?,
        },
        10 => Response::Presence {
            channel: u.arbitrary()?,
            subscribers: u.arbitrary()?,
            hosts: (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    Ok(wsedge_command::wire::HostPresence {
                        host: u.arbitrary()?,
                        subscribers: u.arbitrary()?,
                    })
                })
                .collect::<arbitrary::Result<_>>()?,
        },
        11 => {
            let lists = (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    let entries = u
                        .arbitrary::<Vec<(String, Option<u64>)>>()?
                        .into_iter()
                        .map(|(cidr, expires)| ListEntryView { cidr, expires })
                        .collect();
                    Ok(ListView {
                        name: u.arbitrary()?,
                        entries,
                    })
                })
                .collect::<arbitrary::Result<_>>()?;
            Response::Lists { lists }
        }
        13 => {
            let pools = (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    let origins = (0..u.int_in_range(0..=2)?)
                        .map(|_| {
                            Ok(OriginHealth {
                                addr: u.arbitrary()?,
                                state: u.arbitrary()?,
                                why: u.arbitrary()?,
                                since_ms: u.arbitrary()?,
                                last_check: u.arbitrary()?,
                                last_check_ago_ms: u.arbitrary()?,
                                checks: u.arbitrary()?,
                                checks_failed: u.arbitrary()?,
                                ejections: u.arbitrary()?,
                                transitions: u.arbitrary()?,
                                slow_start_pct: u.arbitrary()?,
                            })
                        })
                        .collect::<arbitrary::Result<_>>()?;
                    Ok(PoolHealth {
                        route: u.arbitrary()?,
                        balance: u.arbitrary()?,
                        check: u.arbitrary()?,
                        watched: u.arbitrary()?,
                        origins,
                    })
                })
                .collect::<arbitrary::Result<_>>()?;
            Response::Origins { pools }
        }
        14 => Response::Certs {
            certificates: cert_views(u)?,
        },
        15 => Response::CertsReloaded {
            certificates: cert_views(u)?,
            workers_confirmed: u.arbitrary()?,
        },
        16 => Response::Functions {
            functions: function_rows(u)?,
        },
        17 => Response::Upgraded(Upgraded {
            pid: u.arbitrary()?,
            generation: u.arbitrary()?,
            build: u.arbitrary()?,
            old_pid: u.arbitrary()?,
            old_generation: u.arbitrary()?,
            old_live: u.arbitrary()?,
            drain_window_ms: u.arbitrary()?,
        }),
        _ => Response::Error {
            kind: *u.choose(&ERROR_KINDS)?,
            message: u.arbitrary()?,
        },
    };
    assert_eq!(response_variant(&response), variant);
    Ok(response)
}

fn cert_views(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<CertInfo>> {
    (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(CertInfo {
                id: u.arbitrary()?,
                cert_file: u.arbitrary::<String>()?.into(),
                names: u.arbitrary()?,
                default: u.arbitrary()?,
                subject: u.arbitrary()?,
                issuer: u.arbitrary()?,
                not_before: u.arbitrary()?,
                not_after: u.arbitrary()?,
                key_type: u.arbitrary()?,
                chain_len: u.arbitrary()?,
            })
        })
        .collect()
}

/// A few JavaScript function rows.
fn function_rows(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<FunctionRow>> {
    (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(FunctionRow {
                name: u.arbitrary()?,
                version: u.arbitrary()?,
                sockets: u.arbitrary()?,
                invocations: u.arbitrary()?,
                errors: u.arbitrary()?,
                interrupts: u.arbitrary()?,
                cpu_us: u.arbitrary()?,
                memory_bytes: u.arbitrary()?,
                restarts: u.arbitrary()?,
            })
        })
        .collect()
}

/// A connection id as the wire carries it (worker, slot, 24-bit generation).
fn conn_id(u: &mut Unstructured<'_>) -> arbitrary::Result<wsedge_command::ConnectionId> {
    Ok(wsedge_command::ConnectionId::new(
        usize::from(u.arbitrary::<u8>()?),
        u.arbitrary::<u32>()? as usize,
        u.arbitrary()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation watch sees a large allocation, so the framing check can fail.
    #[test]
    fn allocation_watch_sees_allocations() {
        let (v, largest) = largest_allocation(|| vec![0u8; 12345]);
        assert_eq!((v.len(), largest), (12345, 12345));
        let (_, none) = largest_allocation(|| 1 + 1);
        assert_eq!(none, 0);
    }
}
