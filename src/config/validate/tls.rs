//! `[listeners.tls]`: every certificate and key file loaded and checked now,
//! so `fulcrum check` (and a reload) catches an unreadable file, a missing
//! key or a key that is not the certificate's, each at the file name in the
//! config that causes it.

use std::path::Path;

use serde_spanned::Spanned;

use crate::config::Sink;
use crate::config::model::{CertificateFiles, ListenerTls};
use crate::config::schema::TlsSpec;
use crate::tls;

/// The listener's TLS settings with its certificates loaded, or `None`
/// after recording what is wrong.
pub(super) fn listener_tls(spec: &Spanned<TlsSpec>, base_dir: &Path, sink: &mut Sink) -> Option<ListenerTls> {
    let t = spec.get_ref();
    if t.certificates.get_ref().is_empty() {
        sink.error(
            Some(t.certificates.span()),
            "at least one certificate is needed, like certificates = [ { cert = \"a.pem\", key = \"a.key\" } ]",
        );
        return None;
    }
    let mut files = Vec::with_capacity(t.certificates.get_ref().len());
    let mut loaded = Vec::with_capacity(files.capacity());
    let mut complete = true;
    for (i, c) in t.certificates.get_ref().iter().enumerate() {
        let (Some(cert), Some(key)) = (file(&c.cert, base_dir, sink), file(&c.key, base_dir, sink)) else {
            complete = false;
            continue;
        };
        match tls::load_certificate(&cert, &key) {
            Ok(certificate) if i > 0 && certificate.names().is_empty() => {
                sink.error(
                    Some(c.cert.span()),
                    format!(
                        "the certificate in {} names no DNS host (subjectAltName), so no client can select it; \
                         only the first certificate serves clients without a matching name",
                        cert.display()
                    ),
                );
                complete = false;
            }
            Ok(certificate) => loaded.push(certificate),
            Err(e) => {
                let at = if e.is_about_key() { &c.key } else { &c.cert };
                sink.error(Some(at.span()), e.to_string());
                complete = false;
            }
        }
        files.push(CertificateFiles { cert, key });
    }
    if !complete {
        return None;
    }
    match tls::server_config(&loaded) {
        Ok(server_config) => Some(ListenerTls {
            certificates: files,
            redirect_http_from: t.redirect_http_from.as_ref().map(|r| r.get_ref().0),
            server_config,
        }),
        Err(e) => {
            sink.error(Some(spec.span()), e.to_string());
            None
        }
    }
}

/// A file named in the config, relative paths taken from `base_dir`.
fn file(name: &Spanned<String>, base_dir: &Path, sink: &mut Sink) -> Option<std::path::PathBuf> {
    if name.get_ref().is_empty() {
        sink.error(Some(name.span()), "a file name cannot be empty");
        return None;
    }
    Some(base_dir.join(name.get_ref()))
}
