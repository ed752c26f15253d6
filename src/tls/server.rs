//! The listener's side: the certificate and key of `[server.tls]`, the per-core
//! acceptors built from them, and the reload that swaps them without touching a
//! connection.
//!
//! One `ServerTls` lives for the process. It holds the current identity behind a mutex
//! and a generation number. Each core keeps its own `rustls::ServerConfig` (and so its
//! own session cache: no lock shared between cores on a handshake) and rebuilds it only
//! when the generation moved, which costs one atomic load per accepted connection. A
//! reload reads and checks both files first and changes nothing when they are bad, so a
//! half-written renewal never takes the listener down; connections already open keep
//! the session they negotiated.

use super::files::{load_identity, IdentityError};
use super::provider;
use futures_rustls::TlsAcceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The one protocol the listener speaks over TLS.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The listener's certificate and key, reloadable.
pub struct ServerTls {
    certificate_path: PathBuf,
    key_path: PathBuf,
    identity: Mutex<Arc<CertifiedKey>>,
    /// Bumped after every successful reload, once `identity` holds the new one.
    generation: AtomicU64,
}

impl ServerTls {
    /// Reads and checks both files.
    pub fn load(certificate_path: &Path, key_path: &Path) -> Result<ServerTls, IdentityError> {
        let identity = load_identity(certificate_path, key_path, &provider())?;
        Ok(ServerTls {
            certificate_path: certificate_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            identity: Mutex::new(Arc::new(identity)),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads both files again and, if they are good, makes every core use them for the
    /// connections it accepts from now on. On an error nothing changes. For SIGHUP.
    pub fn reload(&self) -> Result<(), IdentityError> {
        let identity = load_identity(&self.certificate_path, &self.key_path, &provider())?;
        *self.lock() = Arc::new(identity);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A core's acceptor; call it on the core that accepts.
    pub fn core_acceptor(&'static self) -> CoreAcceptor {
        let generation = self.generation.load(Ordering::Acquire);
        CoreAcceptor {
            tls: self,
            current: RefCell::new((generation, self.acceptor())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<CertifiedKey>> {
        // A panic while holding the lock ends the process (fail-stop), so a poisoned
        // lock is never seen by a live server; the value inside is whole either way.
        self.identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acceptor(&self) -> TlsAcceptor {
        let identity = Arc::clone(&self.lock());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneIdentity(identity)));
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// One core's view of the listener's TLS: the acceptor of the current generation.
pub struct CoreAcceptor {
    tls: &'static ServerTls,
    current: RefCell<(u64, TlsAcceptor)>,
}

impl CoreAcceptor {
    /// The acceptor for a connection accepted now, rebuilt after a reload.
    pub fn acceptor(&self) -> TlsAcceptor {
        let generation = self.tls.generation.load(Ordering::Acquire);
        let mut current = self.current.borrow_mut();
        if current.0 != generation {
            *current = (generation, self.tls.acceptor());
        }
        current.1.clone()
    }
}

/// Serves one identity whatever the client asks for: payd has one name per listener.
#[derive(Debug)]
struct OneIdentity(Arc<CertifiedKey>);

impl ResolvesServerCert for OneIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
