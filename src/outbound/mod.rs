//! Outbound HTTP/1.1: the client payd uses to call other services (the acquirer and
//! merchants' webhook receivers), on the core's own glommio executor, over plain TCP or
//! TLS as the URL's scheme says (`tls`: the server's certificate is verified against
//! the URL's host in the handshake; a failure is `OutboundError::Tls`).
//!
//! One `Client` talks to one origin through a bounded pool of keep-alive connections.
//! A request takes a slot of the pool (waiting in a bounded queue when every slot is
//! busy), takes an idle connection or opens one, writes the request in one write, and
//! reads one response (`response`: httparse, Content-Length or chunked, a size limit).
//! A connection goes back to the pool only after a complete, clean exchange; a broken,
//! half-read or surplus-byte connection is dropped, which closes it. Idle connections
//! are used in turn, oldest first, so requests spread over the pool.
//!
//! The client sets no deadline of its own for an exchange: the caller bounds each
//! request (glommio's `timeout`), and a request dropped midway drops its connection.
//! Names resolve once, lazily, on glommio's blocking pool, so a slow resolver never
//! stalls the executor; IP literals need no resolution at all.
//!
//! Nothing here knows what the requests mean: the layers that call it build the paths,
//! headers and bodies, and interpret the answers.

mod pool;
pub mod response;
pub mod url;

pub use pool::{Client, ClientSettings, PoolStats};
pub use response::Response;
pub use url::{HttpUrl, UrlError};

use std::fmt;

/// A request: method, path below the client's base path, extra headers, body.
/// `Host`, `Content-Length` and `User-Agent` are written by the client.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Starts with `/`; appended to the URL's base path.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Why a request got no response. Each of these is worth a retry for an idempotent
/// request, except where the caller knows better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundError {
    /// The host name did not resolve.
    Resolve,
    /// No connection: refused, unreachable or timed out.
    Connect,
    /// The TLS handshake failed: above all a certificate that does not verify for the
    /// URL's host (unknown issuer, wrong name, expired), or no protocol in common.
    Tls,
    /// The connection broke before a whole response arrived.
    Broken,
    /// The bytes were not an HTTP/1.1 response we can frame.
    Malformed,
    /// The response was over the client's `response_bytes_max`.
    TooLarge,
    /// Every connection was busy and the waiting queue full.
    PoolBusy,
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutboundError::Resolve => "the host name did not resolve",
            OutboundError::Connect => "could not connect",
            OutboundError::Tls => "the TLS handshake failed (certificate or protocol)",
            OutboundError::Broken => "the connection broke before a whole response",
            OutboundError::Malformed => "the response was not valid HTTP/1.1",
            OutboundError::TooLarge => "the response was over the size limit",
            OutboundError::PoolBusy => "every pooled connection was busy and the queue full",
        })
    }
}

impl std::error::Error for OutboundError {}

#[cfg(test)]
mod tests;
