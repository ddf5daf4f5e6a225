//! `server.tls`, `server.http_redirect` and an upstream's `tls` as a user writes them: files are
//! read when the configuration is checked, and a bad file is reported at the key naming it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use seawall_config::*;

/// A folder with a self-signed certificate for `names` (`site.pem`, `site.key`) and the key of
/// another one (`other.key`).
fn files(tag: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-config-tls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("site.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("site.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("other.key"), rcgen::KeyPair::generate().unwrap().serialize_pem())
        .unwrap();
    dir
}

fn server(tls: &str, extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:8443\"\n{tls}\n{extra}\n")
}

fn errors(src: &str) -> Vec<ConfigError> {
    parse(src, "t.toml").unwrap_err().0
}

fn pair(dir: &Path, cert: &str, key: &str) -> String {
    format!("{{ cert = {:?}, key = {:?} }}", dir.join(cert), dir.join(key))
}

#[test]
fn the_documented_contract_is_read_as_written() {
    let dir = files("contract", &["shop.test", "*.shop.test"]);
    let src = server(
        &format!(
            "tls = {{ certificates = [{}], min_version = \"1.3\", handshake_timeout = \"5s\", session_tickets = false, session_cache = 100 }}",
            pair(&dir, "site.pem", "site.key")
        ),
        "http_redirect = \"127.0.0.1:8080\"",
    );
    let c = parse(&src, "t.toml").unwrap();
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, dir.join("site.pem"));
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(5));
    assert!(!tls.session_tickets);
    assert_eq!(tls.session_cache, 100);
    assert_eq!(c.server.http_redirect, Some("127.0.0.1:8080".parse().unwrap()));
    // Defaults.
    let c = parse(
        &server(
            &format!("tls = {{ certificates = [{}] }}", pair(&dir, "site.pem", "site.key")),
            "",
        ),
        "t.toml",
    )
    .unwrap();
    let tls = c.server.tls.unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert!(tls.session_tickets);
    assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(10));
    assert!(c.server.http_redirect.is_none());
    assert_eq!(parse(&server("", ""), "t.toml").unwrap().server.tls, None);
}

#[test]
fn certificate_paths_are_relative_to_the_config_file() {
    let dir = files("relative", &["shop.test"]);
    let config = dir.join("seawall.toml");
    std::fs::write(
        &config,
        server("tls = { certificates = [{ cert = \"site.pem\", key = \"site.key\" }] }", ""),
    )
    .unwrap();
    let c = load(&config).unwrap();
    assert_eq!(c.server.tls.unwrap().certificates[0].key, dir.join("site.key"));
}

#[test]
fn bad_certificate_files_are_reported_at_their_key() {
    let dir = files("bad", &["shop.test"]);
    let cases = [
        (pair(&dir, "missing.pem", "site.key"), "cannot read"),
        (pair(&dir, "site.key", "site.key"), "no PEM certificate"),
        (pair(&dir, "site.pem", "site.pem"), "no PEM private key"),
        (pair(&dir, "site.pem", "other.key"), "does not belong to the certificate"),
    ];
    for (entry, expected) in cases {
        let src = server(&format!("tls = {{ certificates = [\n  {entry}] }}"), "");
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "server.tls.certificates[0]");
        assert_eq!((e[0].line, e[0].column), (4, 12), "{}", e[0]);
        assert!(e[0].message.contains(expected), "{}: {}", expected, e[0]);
    }
    let e = errors(&server("tls = { certificates = [] }", ""));
    assert_eq!(e[0].key, "server.tls.certificates");
    let e = errors(&server(
        &format!(
            "tls = {{ certificates = [{{ cert = {:?}, key = {:?}, names = [\"bad name\"] }}] }}",
            dir.join("site.pem"),
            dir.join("site.key")
        ),
        "",
    ));
    assert_eq!(e[0].key, "server.tls.certificates[0].names[0]");
    let e = errors(&server(
        &format!(
            "tls = {{ certificates = [{}], min_version = \"1.1\" }}",
            pair(&dir, "site.pem", "site.key")
        ),
        "",
    ));
    assert_eq!(e[0].key, "server.tls.min_version");
}

#[test]
fn a_certificate_without_a_dns_name_needs_names() {
    let dir = files("noname", &["127.0.0.1"]);
    let e = errors(&server(
        &format!("tls = {{ certificates = [{}] }}", pair(&dir, "site.pem", "site.key")),
        "",
    ));
    assert!(e[0].message.contains("names"), "{}", e[0]);
    let with_names = format!(
        "tls = {{ certificates = [{{ cert = {:?}, key = {:?}, names = [\"Local.Test\"] }}] }}",
        dir.join("site.pem"),
        dir.join("site.key")
    );
    let c = parse(&server(&with_names, ""), "t.toml").unwrap();
    assert_eq!(c.server.tls.unwrap().certificates[0].names, ["local.test"]);
}

#[test]
fn a_redirect_listener_needs_tls() {
    let e = errors(&server("", "http_redirect = \"127.0.0.1:8080\""));
    assert_eq!(e[0].key, "server.http_redirect");
    assert!(e[0].message.contains("server.tls"), "{}", e[0]);
}

#[test]
fn upstream_tls_is_checked() {
    let dir = files("upstream", &["api.internal"]);
    let up = |tls: &str| {
        format!("[upstreams.api]\nservers = [\"api.internal:443\"]\ntls = {{ {tls} }}\n")
    };
    let ok = up(&format!(
        "server_name = \"api.internal\", ca_file = {:?}, client_cert = {:?}, client_key = {:?}",
        dir.join("site.pem"),
        dir.join("site.pem"),
        dir.join("site.key")
    ));
    // "api.internal" does not resolve: a server written by IP keeps the test offline.
    let ok = ok.replace("api.internal:443", "127.0.0.1:443");
    let c = parse(&ok, "t.toml").unwrap();
    let tls = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    assert_eq!(tls.ca_file.as_deref(), Some(dir.join("site.pem").as_path()));
    assert!(tls.client_certificate.is_some());
    let bare = up("").replace("api.internal:443", "127.0.0.1:443");
    assert_eq!(parse(&bare, "t.toml").unwrap().upstreams[0].tls.as_ref().unwrap().ca_file, None);
    for (tls, key, expected) in [
        (
            format!("ca_file = {:?}", dir.join("none.pem")),
            "upstreams.api.tls.ca_file",
            "cannot read",
        ),
        (format!("client_cert = {:?}", dir.join("site.pem")), "upstreams.api.tls", "go together"),
        (
            format!(
                "client_cert = {:?}, client_key = {:?}",
                dir.join("site.pem"),
                dir.join("other.key")
            ),
            "upstreams.api.tls.client_cert",
            "does not belong",
        ),
        (
            "server_name = \"not a name\"".to_string(),
            "upstreams.api.tls.server_name",
            "not a DNS name",
        ),
    ] {
        let e = errors(&up(&tls).replace("api.internal:443", "127.0.0.1:443"));
        assert_eq!(e[0].key, key, "{}", e[0]);
        assert!(e[0].message.contains(expected), "{}", e[0]);
    }
}
