//! Which certificate a client gets: the one for the exact name it asked for (SNI), else one for
//! `*.` and the name's parent (a wildcard covers one label), else the first configured — as
//! nginx serves its default server's certificate. The set is swapped whole when certificates are
//! reloaded; handshakes under way keep the certificate they were given.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use seawall_config::tls::LoadedCertificate;

/// Certificates by the names they serve.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// A store of `certs`; the first is the default. A name listed by two certificates goes to
    /// the first. `None` when there is no certificate.
    pub fn new(certs: &[LoadedCertificate]) -> Option<CertStore> {
        let default = Arc::clone(&certs.first()?.key);
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for cert in certs {
            for name in &cert.names {
                let table = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                table.or_insert_with(|| Arc::clone(&cert.key));
            }
        }
        Some(CertStore { exact, wildcard, default })
    }

    /// The certificate for `name` (already lower-case, as rustls gives it), or the default.
    pub fn find(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else { return &self.default };
        if let Some(cert) = self.exact.get(name) {
            return cert;
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        parent.and_then(|p| self.wildcard.get(p)).unwrap_or(&self.default)
    }
}

/// The resolver rustls asks during each handshake.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> Self {
        SniResolver { store: ArcSwap::from_pointee(store) }
    }

    /// Serves `store` to the handshakes that start from now on.
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(|n| n.trim_end_matches('.'));
        let store = self.store.load();
        // rustls hands the name over lower-cased (it is a validated DNS name); the lookup
        // lower-cases again only if a client's name reached us otherwise.
        match name {
            Some(n) if n.bytes().any(|b| b.is_ascii_uppercase()) => {
                Some(Arc::clone(store.find(Some(&n.to_ascii_lowercase()))))
            }
            n => Some(Arc::clone(store.find(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(tag: &str, names: &[&str]) -> LoadedCertificate {
        let params = rcgen::CertificateParams::new(vec![tag.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        LoadedCertificate {
            key: Arc::new(CertifiedKey::new(vec![c.der().clone()], signing)),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn leaf(c: &CertifiedKey) -> &[u8] {
        c.cert[0].as_ref()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let first = cert("a", &["shop.example.com"]);
        let wild = cert("b", &["*.example.com", "api.example.org"]);
        let store = CertStore::new(&[first.clone(), wild.clone()]).unwrap();
        let got = |n: Option<&str>| leaf(store.find(n)).to_vec();
        assert_eq!(got(Some("shop.example.com")), leaf(&first.key));
        assert_eq!(got(Some("api.example.com")), leaf(&wild.key));
        assert_eq!(got(Some("api.example.org")), leaf(&wild.key));
        // A wildcard covers one label only; unknown names and no name get the default.
        assert_eq!(got(Some("a.b.example.com")), leaf(&first.key));
        assert_eq!(got(Some("example.com")), leaf(&first.key));
        assert_eq!(got(Some("other.test")), leaf(&first.key));
        assert_eq!(got(None), leaf(&first.key));
    }

    #[test]
    fn a_name_listed_twice_goes_to_the_first_certificate() {
        let one = cert("a", &["x.test"]);
        let two = cert("b", &["x.test"]);
        let store = CertStore::new(&[one.clone(), two]).unwrap();
        assert_eq!(leaf(store.find(Some("x.test"))), leaf(&one.key));
        assert!(CertStore::new(&[]).is_none());
    }
}
