//! A blocking client of a control socket (the CLI's, and the control process's towards the
//! dataplane): one request at a time, each answered before the next, with timeouts.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::framing::{MAX_FRAME, WireError, decode_response, read_frame, send};
use super::messages::{Envelope, Request, Response};

/// A blocking client connection to a control socket (the dataplane's or the control
/// process's), with read and write timeouts.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`; every later read and write waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, WireError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client { stream, next_id: 1 })
    }

    /// A client over a stream already connected to a control server (the link between two
    /// dataplane generations after an upgrade).
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Client, WireError> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client { stream, next_id: 1 })
    }

    /// Changes the read timeout (e.g. for a request that waits on workers).
    pub fn set_read_timeout(&self, timeout: Duration) -> Result<(), WireError> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends `request` and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = send(&mut self.stream, &Envelope::new(id, request)) {
            // A server that refuses a peer answers at once and closes, so writing the request
            // can fail while its answer already waits to be read: prefer the answer.
            let peer_gone = matches!(&e, WireError::Io(io) if matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ));
            if !peer_gone {
                return Err(e);
            }
            return match read_frame(&mut self.stream, MAX_FRAME) {
                Ok(body) => Ok(decode_response(&body)?.body),
                Err(_) => Err(e),
            };
        }
        let body = read_frame(&mut self.stream, MAX_FRAME)?;
        let envelope = decode_response(&body)?;
        // id 0: the server could not read our id (it answers an undecodable request).
        if envelope.id != id && envelope.id != 0 {
            return Err(WireError::IdMismatch {
                got: envelope.id,
                want: id,
            });
        }
        Ok(envelope.body)
    }
}
