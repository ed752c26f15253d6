//! The side of outbound calls: the root certificates every `https://` acquirer and
//! webhook URL is verified against (the system's store plus `tls.extra_ca_file`), and
//! the per-core connector built on them.
//!
//! Verification is rustls' WebPKI verifier with the URL's host (a name or an IP address)
//! as the expected identity, inside the handshake: nothing is written to a server whose
//! certificate fails. There is deliberately no way to turn it off. Each core builds its
//! own `ClientConfig`, so each keeps its own TLS session cache and resumes sessions with
//! the servers it calls without sharing a lock with another core.

use super::files::{load_certificates, EXTRA_CA_CERTIFICATES_MAX};
use super::provider;
use super::server::ALPN_HTTP_1_1;
use futures_rustls::TlsConnector;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// The roots of every outbound TLS connection, shared read-only by the cores.
#[derive(Clone, Debug)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
}

/// Where the roots came from, for the start-up log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootCounts {
    pub system: usize,
    /// Certificates of the system's store that rustls could not use (skipped).
    pub system_unusable: usize,
    pub extra: usize,
}

impl ClientTls {
    /// No roots at all: every verification fails. For a process that calls no
    /// `https://` URL, which then need not read the system's store.
    pub fn without_roots() -> ClientTls {
        ClientTls {
            roots: Arc::new(RootCertStore::empty()),
        }
    }

    /// The system's roots (as `rustls-native-certs` finds them, `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` included) plus those of `extra_ca_file`. A bad extra file is an
    /// error; an unreadable system store only leaves fewer roots.
    pub fn load(extra_ca_file: Option<&Path>) -> Result<(ClientTls, RootCounts), String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (system, system_unusable) = roots.add_parsable_certificates(native.certs);
        let mut counts = RootCounts {
            system,
            system_unusable,
            extra: 0,
        };
        if let Some(path) = extra_ca_file {
            counts.extra = add_extra_roots(&mut roots, path)?;
        }
        let tls = ClientTls {
            roots: Arc::new(roots),
        };
        Ok((tls, counts))
    }

    /// A connector for one core, with its own session cache. Call it on that core.
    pub fn core_connector(&self) -> TlsConnector {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

/// Checks `tls.extra_ca_file`: a PEM file of CA certificates, each usable as a root.
pub fn check_extra_roots(path: &Path) -> Result<usize, String> {
    add_extra_roots(&mut RootCertStore::empty(), path)
}

fn add_extra_roots(roots: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let certificates = load_certificates(path, EXTRA_CA_CERTIFICATES_MAX)?;
    let count = certificates.len();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| {
            format!(
                "{} holds a certificate that is not a usable CA: {e}",
                path.display()
            )
        })?;
    }
    Ok(count)
}
