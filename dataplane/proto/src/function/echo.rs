//! `echo`: every message back to its sender, streamed (a piece of a client frame becomes one
//! server frame; nothing is buffered, whatever the message size). The protocol work is
//! [`ServerEndpoint::echo`]'s.

use super::{FnAction, FnCx, FunctionSession};
use crate::chunk::Chunk;
use crate::endpoint::{EndpointConfig, EndpointEvent, Mode, ServerEndpoint};
use crate::session::{CloseReason, Side};

/// One client of an `echo` route.
#[derive(Debug)]
pub struct Echo {
    endpoint: ServerEndpoint,
    events: Vec<EndpointEvent>,
}

impl Echo {
    /// `max_message`: largest client message accepted (1009 over it).
    pub fn new(max_message: u64) -> Echo {
        Echo {
            endpoint: ServerEndpoint::new(EndpointConfig {
                max_message_len: max_message,
                mode: Mode::Streaming,
            }),
            events: Vec::new(),
        }
    }
}

/// Why a function's endpoint finished, from its `Closed` event: the client's close, or its
/// protocol error.
pub(crate) fn closed_reason(event: &EndpointEvent) -> Option<CloseReason> {
    match event {
        EndpointEvent::Closed { error: Some(_), .. } => {
            Some(CloseReason::ProtocolError(Side::Client))
        }
        EndpointEvent::Closed { error: None, .. } => Some(CloseReason::ClientClosed),
        _ => None,
    }
}

impl FunctionSession for Echo {
    fn on_start(&mut self, cx: &mut FnCx<'_>) {
        cx.actions.push(FnAction::Upgrade { protocol: None });
    }

    fn on_client(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        let mut out = Vec::new();
        self.events.clear();
        self.endpoint.echo(data, &mut out, &mut self.events);
        if !out.is_empty() {
            cx.send_client(Chunk::own(out));
        }
        if let Some(reason) = self.events.iter().find_map(closed_reason) {
            cx.finish(reason);
        }
    }

    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        cx.finish(CloseReason::ClientClosed);
    }

    fn on_shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        if let Some(frame) = self.endpoint.close(code, "") {
            cx.send_client(Chunk::own(frame));
        }
        cx.finish(reason);
    }
}
