//! `bridge`: the edge terminates the client's WebSocket and opens its own to the route's
//! target (its own key, checked on the 101), then joins the two with the `frames` relay (the
//! place for per-message limits and graceful closes). The client gets the edge's 101 only once
//! the target accepted; a target that cannot be reached or refuses is a 502.

use std::net::IpAddr;

use super::{BridgeSpec, FnAction, FnCx, FunctionRequest, FunctionSession, PeerEvent};
use crate::handshake::error_response;
use crate::session::CloseReason;
use crate::upgrade::bridge_request;

/// One client of a `bridge` route, until it is joined to its peer.
#[derive(Debug)]
pub struct Bridge {
    spec: BridgeSpec,
    peer: IpAddr,
}

impl Bridge {
    pub fn new(
        spec: &BridgeSpec,
        _client_accept: [u8; 28],
        request: &FunctionRequest<'_>,
    ) -> Bridge {
        Bridge {
            spec: spec.clone(),
            peer: request.peer,
        }
    }
}

impl FunctionSession for Bridge {
    fn on_start(&mut self, cx: &mut FnCx<'_>) {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&cx.random.to_ne_bytes());
        key[8..].copy_from_slice(
            &cx.random
                .rotate_left(29)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_ne_bytes(),
        );
        let (head, accept) = bridge_request(&self.spec.host, &self.spec.path, key, self.peer);
        cx.actions.push(FnAction::OpenPeer {
            addr: self.spec.addr,
            head,
            accept,
            tls: None,
        });
    }

    fn on_client(&mut self, _data: &mut [u8], _cx: &mut FnCx<'_>) {
        // Never called: the client is read by the relay once joined.
    }

    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        cx.finish(CloseReason::ClientGone);
    }

    fn on_peer_event(&mut self, event: PeerEvent, cx: &mut FnCx<'_>) {
        match event {
            PeerEvent::Open => {
                cx.actions.push(FnAction::Upgrade { protocol: None });
                cx.actions.push(FnAction::JoinPeer);
            }
            PeerEvent::Failed { reason } => {
                let status = if reason == CloseReason::OriginHandshakeTimeout {
                    504
                } else {
                    502
                };
                cx.actions.push(FnAction::Respond {
                    status,
                    response: error_response(status).to_vec(),
                    reason,
                });
            }
            PeerEvent::Closed { .. } => cx.finish(CloseReason::OriginClosed),
        }
    }

    fn on_shutdown(&mut self, _code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        cx.finish(reason);
    }
}
