//! TLS termination: certificates loaded from PEM files, chosen by SNI, and
//! the rustls server configuration a TLS listener accepts connections with.
//!
//! Loading is split in two so that every problem can be reported where the
//! config file names it: [`load_certificate`] reads and checks one
//! certificate/key pair, [`server_config`] turns a listener's pairs into the
//! acceptor's configuration. Both run while a config is validated, so a
//! config that loads is a config whose certificates work; a reload builds
//! fresh ones and a broken file leaves the running ones in place.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateFiles;

/// ALPN protocols offered, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS 1.2 sessions kept for resumption by session id, per listener (TLS
/// 1.3 and ticket-capable 1.2 clients resume from tickets, which need no
/// server memory).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// One certificate chain with its private key, checked to belong together.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName, lower-case; wildcards
    /// (`*.example.com`) included as written.
    names: Vec<String>,
}

impl Certificate {
    /// The DNS names this certificate is chosen for by SNI.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why a certificate/key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read certificate file {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("invalid certificate in {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("cannot read key file {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no private key in {}: expected an unencrypted PEM key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("unusable private key in {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

impl CertificateError {
    /// Whether the key file (rather than the certificate file) is at fault.
    pub fn is_about_key(&self) -> bool {
        matches!(
            self,
            CertificateError::ReadKey { .. }
                | CertificateError::NoKey { .. }
                | CertificateError::BadKey { .. }
                | CertificateError::KeyMismatch { .. }
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8,
/// PKCS#1 RSA or SEC1 EC) and checks that the key is the leaf's.
pub fn load_certificate(cert_path: &Path, key_path: &Path) -> Result<Certificate, CertificateError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| CertificateError::ReadCert {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let bad_cert = |reason: String| CertificateError::BadCertificate {
        path: cert_path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CertificateError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    };
    let names = {
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| bad_cert(format!("{e:?}")))?;
        parsed.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect()
    };

    let key_pem = std::fs::read(key_path).map_err(|source| CertificateError::ReadKey {
        path: key_path.to_path_buf(),
        source,
    })?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(CertificateError::NoKey {
                path: key_path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(CertificateError::BadKey {
                path: key_path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertificateError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        },
        other => CertificateError::BadKey {
            path: key_path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    Ok(Certificate {
        key: Arc::new(key),
        names,
    })
}

/// Why a listener's TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The configuration a TLS listener accepts with: TLS 1.2 and 1.3 with
/// ring's default (modern, AEAD-only) cipher suites, the certificate chosen
/// by SNI (the first one for clients that send no SNI or an unknown name),
/// ALPN `h2` then `http/1.1`, and session resumption by tickets (keys
/// rotated every 6 hours) and by session id.
pub fn server_config(certificates: &[Certificate]) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(certificates).ok_or(TlsError::NoCertificates)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Reads a listener's certificate files afresh and builds its acceptor
/// configuration: for whoever holds a config (a reload) and wants the
/// certificates re-read; on error it keeps the configuration it has.
/// Config validation does the same file by file, to place each error.
pub fn acceptor_config(files: &[CertificateFiles]) -> Result<Arc<ServerConfig>, TlsError> {
    let certificates = files
        .iter()
        .map(|f| load_certificate(&f.cert, &f.key))
        .collect::<Result<Vec<_>, _>>()?;
    server_config(&certificates)
}

/// Picks a certificate by the name the client asked for: an exact name,
/// then a wildcard covering it, then the default. Earlier certificates win
/// a name that several carry.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certificates: &[Certificate]) -> Option<Self> {
        let default = certificates.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certificates {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_string()).or_insert_with(|| cert.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        // A wildcard covers exactly one label (RFC 6125 §6.4.3).
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands the SNI over lower-cased.
        Some(self.pick(client_hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], der, &provider()).unwrap();
        Certificate {
            key: Arc::new(certified),
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let certs = [
            cert_for(&["default.test"]),
            cert_for(&["a.test", "*.wild.test"]),
            cert_for(&["b.test", "a.test"]),
        ];
        let resolver = SniResolver::new(&certs).unwrap();
        let is = |picked: &Arc<CertifiedKey>, i: usize| Arc::ptr_eq(picked, &certs[i].key);
        assert!(is(resolver.pick(None), 0));
        assert!(is(resolver.pick(Some("unknown.test")), 0));
        assert!(
            is(resolver.pick(Some("a.test")), 1),
            "the first certificate with a name wins"
        );
        assert!(is(resolver.pick(Some("b.test")), 2));
        assert!(is(resolver.pick(Some("x.wild.test")), 1));
        assert!(
            is(resolver.pick(Some("wild.test")), 0),
            "a wildcard needs one more label"
        );
        assert!(
            is(resolver.pick(Some("y.x.wild.test")), 0),
            "a wildcard covers one label only"
        );
    }

    #[test]
    fn no_certificates_is_an_error() {
        assert!(matches!(server_config(&[]), Err(TlsError::NoCertificates)));
    }

    #[test]
    fn acceptor_config_reads_the_files_and_reports_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let write = |stem: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![format!("{stem}.test")])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let files = CertificateFiles {
                cert: dir.path().join(format!("{stem}.pem")),
                key: dir.path().join(format!("{stem}.key")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        };
        let (a, b) = (write("a"), write("b"));
        let config = acceptor_config(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(config.alpn_protocols, [ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]);
        let crossed = CertificateFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let err = acceptor_config(&[a, crossed]).unwrap_err();
        assert!(
            matches!(err, TlsError::Certificate(CertificateError::KeyMismatch { .. })),
            "{err}"
        );
    }
}
