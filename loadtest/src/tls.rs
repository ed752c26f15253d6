//! TLS for a run against payd's HTTPS listener: the CA to trust and the connector, with
//! session resumption off so every new connection pays a full handshake (the worst case
//! `--requests-per-connection` measures).

use futures_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// What every connection of a TLS run shares.
pub struct Tls {
    pub connector: TlsConnector,
    /// The address's IP: the certificate must name it.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

pub fn connector(ca_file: &Path, address: SocketAddr) -> Result<Tls, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("cannot read --tls-ca {}: {e}", ca_file.display()))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|e| format!("--tls-ca {}: {e}", ca_file.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("--tls-ca {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--tls-ca {} holds no certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        name: ServerName::IpAddress(address.ip().into()),
    })
}
