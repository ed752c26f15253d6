//! TLS (API.md section 8) for both directions, on rustls with the ring provider:
//! `[server.tls]` turns every core's listener into HTTPS only, and `https://` acquirer and
//! webhook URLs are called over TLS verified against the system's roots plus
//! `tls.extra_ca_file`.
//!
//! - `files`: certificates and keys from PEM files, with errors that never quote a key.
//! - `server`: the listener's identity, the per-core acceptors, the SIGHUP reload.
//! - `client`: the roots of outbound calls and the per-core connectors.
//! - `stream`: plain TCP or TLS behind one `AsyncRead + AsyncWrite` type.
//!
//! The handshakes and records run through futures-rustls over glommio's `TcpStream`, on
//! the core that owns the connection. rustls speaks TLS 1.2 and 1.3 only, so 1.0 and 1.1
//! are refused by construction.

mod client;
mod files;
mod server;
mod stream;

pub use client::{check_extra_roots, ClientTls, RootCounts};
pub use files::{load_identity, IdentityError, PEM_FILE_BYTES_MAX};
pub use futures_rustls::TlsConnector;
pub use server::{CoreAcceptor, ServerTls, ALPN_HTTP_1_1};
pub use stream::Stream;

/// The crypto of every TLS connection payd makes or accepts.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
