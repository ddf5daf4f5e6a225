//! TLS material read from PEM files: a server's certificate chain with its private key (and the
//! names it answers for), a CA bundle an upstream's certificate must chain to, and a client
//! certificate. Shared by validation, whose errors point at the config key, and by the gateway,
//! which reads the files again when they change.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// The DNS names it answers for, lower-case: the configured `names`, else the certificate's
    /// subject alternative names. `*.example.com` is a wildcard for one label.
    pub names: Vec<String>,
}

/// Reads every certificate of a PEM file (a chain: the leaf first, or a CA bundle).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (\"BEGIN CERTIFICATE\")", path.display()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{} holds no PEM private key (\"BEGIN PRIVATE KEY\")", path.display())
        }
        e => format!("{} is not a PEM private key file: {e}", path.display()),
    })
}

/// Reads a certificate chain and its key, checks that they belong together, and finds the names
/// the certificate answers for (`names`, when given, replaces them).
pub fn load_certificate(
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<LoadedCertificate, String> {
    let chain = read_certificates(cert)?;
    let key_der = read_private_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "the private key {} does not belong to the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    let names = if names.is_empty() {
        let leaf = webpki::EndEntityCert::try_from(&certified.cert[0])
            .map_err(|e| format!("{}: cannot read the certificate: {e:?}", cert.display()))?;
        let found: Vec<String> = leaf.valid_dns_names().map(str::to_ascii_lowercase).collect();
        if found.is_empty() {
            return Err(format!(
                "{} names no DNS name (subject alternative name); list the names it serves in `names`",
                cert.display()
            ));
        }
        found
    } else {
        names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    Ok(LoadedCertificate { key: Arc::new(certified), names })
}

/// Whether `name` can be served by a certificate: a DNS name, or `*.` and one.
pub fn valid_server_name(name: &str) -> bool {
    let plain = name.strip_prefix("*.").unwrap_or(name);
    !plain.is_empty()
        && plain.len() <= 253
        && plain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
