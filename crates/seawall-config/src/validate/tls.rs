//! `server.tls`, `server.http_redirect` and an upstream's `tls = { ... }`: the files are read and
//! checked here (a certificate and its key must belong together), so `seawall check` and a reload
//! report a bad file at the key that names it. Relative paths are relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{defaults, Ctx};
use crate::model::{CertificateFiles, ServerTls, TlsVersion, UpstreamTls};
use crate::raw::{RawCertificate, RawServerTls, RawUpstreamTls, Text};
use crate::tls::{load_certificate, read_certificates, valid_server_name};

/// A path from the file, relative to the file's folder.
fn path(cx: &Ctx<'_>, value: &Text) -> PathBuf {
    let written = Path::new(value.get_ref());
    match Path::new(cx.file).parent() {
        Some(dir) if written.is_relative() => dir.join(written),
        _ => written.to_path_buf(),
    }
}

/// `server.tls`.
pub(super) fn server_tls(cx: &mut Ctx<'_>, raw: &RawServerTls) -> ServerTls {
    let mut certificates = Vec::new();
    match &raw.certificates {
        Some(list) if !list.get_ref().is_empty() => {
            for (i, entry) in list.get_ref().iter().enumerate() {
                let key = format!("server.tls.certificates[{i}]");
                if let Some(files) = certificate(cx, entry.get_ref(), &key, true) {
                    certificates.push(files);
                }
            }
        }
        other => {
            let span = other.as_ref().map_or(0..0, |l| l.span());
            cx.error(
                span,
                "server.tls.certificates",
                "TLS needs at least one certificate: certificates = [{ cert = \"site.pem\", key = \"site.key\" }]",
            );
        }
    }
    let min_version = match raw.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "1.2")) => TlsVersion::Tls12,
        Some((_, "1.3")) => TlsVersion::Tls13,
        Some((v, other)) => {
            let message = format!("expected \"1.2\" or \"1.3\", got {other:?}");
            cx.error(v.span(), "server.tls.min_version", message);
            TlsVersion::Tls12
        }
    };
    let handshake_timeout = cx.duration(
        raw.handshake_timeout.as_ref(),
        "server.tls.handshake_timeout",
        defaults::TLS_HANDSHAKE_TIMEOUT,
    );
    let session_cache = cx.count(
        raw.session_cache.as_ref(),
        "server.tls.session_cache",
        defaults::TLS_SESSION_CACHE,
        0,
        1_000_000,
    ) as usize;
    ServerTls {
        certificates,
        min_version,
        handshake_timeout,
        session_tickets: raw.session_tickets.unwrap_or(true),
        session_cache,
    }
}

/// A certificate and its key, read and checked; `server` when it is served to clients (it must
/// then name the hosts it serves).
fn certificate(
    cx: &mut Ctx<'_>,
    raw: &RawCertificate,
    key: &str,
    server: bool,
) -> Option<CertificateFiles> {
    let mut names = Vec::new();
    for (j, name) in raw.names.iter().flatten().enumerate() {
        if valid_server_name(name.get_ref()) {
            names.push(name.get_ref().to_ascii_lowercase());
        } else {
            let message = format!(
                "{:?} is not a DNS name (or \"*.\" and one, for a wildcard)",
                name.get_ref()
            );
            cx.error(name.span(), &format!("{key}.names[{j}]"), message);
        }
    }
    let files = CertificateFiles { cert: path(cx, &raw.cert), key: path(cx, &raw.key), names };
    // A client certificate needs no name: any name will do for the check.
    let check_names = if server { files.names.clone() } else { vec!["client".to_string()] };
    match load_certificate(&files.cert, &files.key, &check_names) {
        Ok(_) => Some(files),
        Err(message) => {
            cx.error(raw.cert.span(), key, message);
            None
        }
    }
}

/// `server.http_redirect`: only with TLS, and not on the TLS listener's own address.
pub(super) fn http_redirect(
    cx: &mut Ctx<'_>,
    raw: Option<&Text>,
    listen: SocketAddr,
    tls: bool,
) -> Option<SocketAddr> {
    let value = raw?;
    let addr = cx.address(value.get_ref(), value.span(), "server.http_redirect")?;
    if !tls {
        let message = "redirects to https:// need server.tls on server.listen";
        cx.error(value.span(), "server.http_redirect", message);
        return None;
    }
    if addr == listen && addr.port() != 0 {
        let message = "must differ from server.listen (it is the plain-HTTP listener)";
        cx.error(value.span(), "server.http_redirect", message);
        return None;
    }
    Some(addr)
}

/// An upstream's `tls = { ... }`.
pub(super) fn upstream_tls(cx: &mut Ctx<'_>, raw: &RawUpstreamTls, key: &str) -> UpstreamTls {
    let server_name = raw.server_name.as_ref().and_then(|n| {
        let name = n.get_ref().trim();
        let ok = valid_server_name(name) && !name.starts_with("*.")
            || name.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            let message = format!("{name:?} is not a DNS name or an IP address");
            cx.error(n.span(), &format!("{key}.server_name"), message);
        }
        ok.then(|| name.to_ascii_lowercase())
    });
    let ca_file = raw.ca_file.as_ref().and_then(|f| {
        let file = path(cx, f);
        match read_certificates(&file) {
            Ok(_) => Some(file),
            Err(message) => {
                cx.error(f.span(), &format!("{key}.ca_file"), message);
                None
            }
        }
    });
    let client_certificate = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(cert), Some(k)) => {
            let raw = RawCertificate { cert: cert.clone(), key: k.clone(), names: None };
            certificate(cx, &raw, &format!("{key}.client_cert"), false)
        }
        (Some(v), None) | (None, Some(v)) => {
            let message = "client_cert and client_key go together";
            cx.error(v.span(), key, message);
            None
        }
    };
    UpstreamTls { server_name, ca_file, client_certificate }
}
