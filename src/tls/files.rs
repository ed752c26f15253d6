//! Certificates and keys read from PEM files: the listener's chain and key, and the extra
//! roots of outbound calls. Every error says what is wrong with the file, never what is
//! in it: a key file's bytes are a secret, so no message quotes them.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// A certificate chain or a key this large is a wrong path (a log, a disk image), not a
/// PEM file: reading stops here.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// Certificates of one chain at most; real chains have two to four.
pub const CHAIN_CERTIFICATES_MAX: usize = 16;
/// Certificates of `tls.extra_ca_file` at most (a whole system bundle has about 150).
pub const EXTRA_CA_CERTIFICATES_MAX: usize = 1024;

/// Which of the listener's two files is at fault, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    Certificate(String),
    /// A key that does not match the certificate is the key's fault: the certificate
    /// is what clients were told to expect.
    Key(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Certificate(message) => write!(f, "certificate file: {message}"),
            IdentityError::Key(message) => write!(f, "key file: {message}"),
        }
    }
}

impl std::error::Error for IdentityError {}

/// Reads a whole PEM file, at most `PEM_FILE_BYTES_MAX`.
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{} is larger than {PEM_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of a PEM file, in order: at least one, at most `count_max`.
pub fn load_certificates(
    path: &Path,
    count_max: usize,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem_file(path)?;
    let mut certificates = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let certificate = item
            .map_err(|_| format!("{} is not a valid PEM file of certificates", path.display()))?;
        if certificates.len() == count_max {
            return Err(format!(
                "{} holds more than {count_max} certificates",
                path.display()
            ));
        }
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem_file(path)?;
    // The parser's own error could quote a line of the file: it is not passed on.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

/// The listener's chain and key, checked to belong together.
pub fn load_identity(
    certificate_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, IdentityError> {
    let chain = load_certificates(certificate_path, CHAIN_CERTIFICATES_MAX)
        .map_err(IdentityError::Certificate)?;
    let key = load_private_key(key_path).map_err(IdentityError::Key)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|_| {
        IdentityError::Key(format!(
            "{} holds a private key of a kind TLS cannot use",
            key_path.display()
        ))
    })?;
    let identity = CertifiedKey::new(chain, signing_key);
    match identity.keys_match() {
        // A key whose public half the provider cannot tell is taken, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(identity)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(IdentityError::Key(format!(
                "the key in {} does not match the certificate in {}",
                key_path.display(),
                certificate_path.display()
            )))
        }
        Err(_) => Err(IdentityError::Certificate(format!(
            "{} does not start with a certificate TLS can read",
            certificate_path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A self-signed certificate for 127.0.0.1 and its key, as PEM text.
    fn identity_pem() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_certificate_and_its_key_load_and_another_key_is_the_keys_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity_pem();
        let (_, other_key) = identity_pem();
        let cert = write(dir.path(), "cert.pem", &cert);
        let key = write(dir.path(), "key.pem", &key);
        let other_key = write(dir.path(), "other.pem", &other_key);
        let provider = crate::tls::provider();
        assert!(load_identity(&cert, &key, &provider).is_ok());
        let error = load_identity(&cert, &other_key, &provider).unwrap_err();
        assert!(
            matches!(&error, IdentityError::Key(message) if message.contains("does not match")),
            "{error}"
        );
        let swapped = load_identity(&key, &cert, &provider).unwrap_err();
        assert!(
            matches!(swapped, IdentityError::Certificate(_)),
            "{swapped}"
        );
    }

    #[test]
    fn key_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret_line = "c2VjcmV0LWtleS1tYXRlcmlhbA";
        let broken =
            format!("-----BEGIN PRIVATE KEY-----\n{secret_line}!\n-----END PRIVATE KEY-----\n");
        let path = write(dir.path(), "key.pem", &broken);
        let error = load_private_key(&path).unwrap_err();
        assert!(!error.contains(secret_line), "{error}");
        assert!(error.contains("key.pem"), "the file is named: {error}");
    }

    #[test]
    fn files_and_chains_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = identity_pem();
        let huge = write(
            dir.path(),
            "huge.pem",
            &"#".repeat(PEM_FILE_BYTES_MAX as usize + 1),
        );
        let error = load_certificates(&huge, CHAIN_CERTIFICATES_MAX).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
        let longest = write(dir.path(), "16.pem", &cert.repeat(CHAIN_CERTIFICATES_MAX));
        assert_eq!(
            load_certificates(&longest, CHAIN_CERTIFICATES_MAX)
                .unwrap()
                .len(),
            CHAIN_CERTIFICATES_MAX
        );
        let too_long = write(
            dir.path(),
            "17.pem",
            &cert.repeat(CHAIN_CERTIFICATES_MAX + 1),
        );
        let error = load_certificates(&too_long, CHAIN_CERTIFICATES_MAX).unwrap_err();
        assert!(error.contains("more than 16"), "{error}");
        let empty = write(dir.path(), "empty.pem", "");
        assert!(load_certificates(&empty, CHAIN_CERTIFICATES_MAX)
            .unwrap_err()
            .contains("no PEM certificate"));
    }
}
