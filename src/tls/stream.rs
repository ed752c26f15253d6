//! A connection's byte stream, plain TCP or TLS over it: one type for the listener's
//! connections and the outbound client's, so the code above reads and writes the same
//! way whichever it got.
//!
//! The plain case costs one match per call over the bare `TcpStream`. TLS buffers what
//! it encrypts: a write may return before its bytes reached the socket, so whoever
//! writes calls `flush` before waiting on the peer (for plain TCP a flush does nothing).
//! Timeouts stay on the TCP stream underneath: a TLS read or write that needs the socket
//! meets the same read and write timeouts as a plain one.

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: the TLS state is some kilobytes, the plain case a few words.
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref().0,
        }
    }

    /// Whether TLS holds what a peek at the socket cannot see: bytes already read from
    /// the socket and decrypted but not yet read from this stream, or the peer's
    /// `close_notify`. rustls stops wanting to read exactly then.
    pub fn holds_input(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(stream) => !stream.get_ref().1.wants_read(),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> glommio::Result<(), ()> {
        self.tcp().set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> glommio::Result<(), ()> {
        self.tcp().set_write_timeout(timeout)
    }

    pub fn set_nodelay(&self, nodelay: bool) -> glommio::Result<(), ()> {
        self.tcp().set_nodelay(nodelay)
    }

    /// Ends the TLS session with a `close_notify` (nothing for plain TCP), then hands
    /// back the TCP stream, still open both ways, for a graceful close.
    pub async fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(mut stream) => {
                stream.get_mut().1.send_close_notify();
                let _ = stream.flush().await;
                match *stream {
                    futures_rustls::TlsStream::Client(stream) => stream.into_inner().0,
                    futures_rustls::TlsStream::Server(stream) => stream.into_inner().0,
                }
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Plain(stream)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_close(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}
