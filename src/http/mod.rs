//! HTTP/1.1 on httparse: request heads and bodies out of a connection's bytes, responses
//! into its output buffer.
//!
//! This layer knows bytes and the protocol rules of API.md section 2 (limits, framing,
//! request-smuggling defences); it knows nothing of payments. The connection loop in
//! `server` feeds it bytes and gets back complete requests or a protocol error.

pub mod chunked;
pub mod framing;
pub mod request;
pub mod response;
pub mod websocket;

pub use framing::{frame_request, BodyDecoder, FrameOutcome, FramingLimits};
pub use request::{
    parse_request, BodyFraming, Method, ParseOutcome, ProtocolError, RequestHead, UpgradeHeaders,
};
pub use response::{ConnectionHeader, Response, ResponseHeader};
