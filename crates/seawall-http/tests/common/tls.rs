//! Certificates made by the tests (a CA of their own, leaves signed by it, written as PEM files
//! in a temporary folder), TLS clients with a chosen name and ALPN, and an HTTPS origin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::engines::{Client, Engine};

/// A certificate authority made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub dir: PathBuf,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

static DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TestCa {
    pub fn new(tag: &str) -> TestCa {
        let n = DIRS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("seawall-tls-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("seawall test CA {tag}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa { cert, key, dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf for `names` (DNS names or IP addresses), written as `<file>.pem` / `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client trusting this CA only, offering `alpn`.
    pub fn client(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `tls = { ... }` of `[server]` serving `leaves` (the first is the default).
pub fn server_tls(leaves: &[&Leaf], extra: &str) -> String {
    let certs: Vec<String> =
        leaves.iter().map(|l| format!("{{ cert = {:?}, key = {:?} }}", l.cert, l.key)).collect();
    format!("tls = {{ certificates = [{}]{extra} }}", certs.join(", "))
}

/// A TLS connection to `addr` asking for `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp).await
}

/// A hyper client over a new TLS connection: HTTP/2 when `engine` is `H2c` (ALPN `h2`), else
/// HTTP/1.1 (ALPN `http/1.1`).
pub async fn tls_client(engine: Engine, addr: SocketAddr, ca: &TestCa, name: &str) -> Client {
    let alpn = if engine == Engine::H2c { "h2" } else { "http/1.1" };
    let stream = tls_connect(addr, name, &ca.client(&[alpn])).await.unwrap();
    let negotiated = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    assert_eq!(negotiated.as_deref(), Some(alpn.as_bytes()), "ALPN");
    Client::over(engine, stream).await
}

/// A TLS acceptor serving `leaf`; with `clients`, it requires a client certificate signed by
/// that CA.
pub fn tls_acceptor(leaf: &Leaf, clients: Option<&TestCa>) -> tokio_rustls::TlsAcceptor {
    let chain = rustls::pki_types::pem::PemObject::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .unwrap();
    let key =
        <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_file(
            &leaf.key,
        )
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS origin serving `leaf`, answering every request with 200 and the path it got; with
/// `clients`, it requires a client certificate signed by that CA.
pub async fn https_origin(leaf: &Leaf, clients: Option<&TestCa>) -> SocketAddr {
    let acceptor = tls_acceptor(leaf, clients);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("tls origin saw {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
