//! TLS and HTTP/2 for tests: a throwaway CA that issues certificates at test
//! time (rcgen), rustls clients that trust it, HTTP/1.1 and HTTP/2 over any
//! stream, and the external tools (curl, openssl, h2load) some tests drive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Resp;

/// A certificate authority made for one test; its certificate is the only
/// root the test clients trust.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

/// A certificate issued by a [`TestCa`], written out as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Fulcrum test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate as `ca.pem` in `dir` (for curl's `--cacert`).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write ca.pem");
        path
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) with a
    /// fresh P-256 key (PKCS#8), written as `{stem}.pem` and `{stem}.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        self.issue_with_key(dir, stem, names, &key, &key.serialize_pem())
    }

    /// Like [`TestCa::issue`] for an existing key, written as `key_pem`
    /// (any PEM form of the same key).
    pub fn issue_with_key(&self, dir: &Path, stem: &str, names: &[&str], key: &KeyPair, key_pem: &str) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, stem);
        let cert = params.signed_by(key, &self.issuer).expect("sign the leaf");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        // The chain: leaf, then the CA (clients may or may not need it).
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.pem)).expect("write the certificate");
        std::fs::write(&key_path, key_pem).expect("write the key");
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA, offers `alpn` and speaks `versions`.
    pub fn client(&self, alpn: &[&str], versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("trust the test CA");
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS 1.2 + 1.3 client offering `alpn`.
    pub fn default_client(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        self.client(alpn, rustls::ALL_VERSIONS)
    }
}

/// A TLS connection to `addr`. With `sni` the client asks for that name
/// (and checks the certificate against it); without, it sends no SNI and
/// checks the certificate against 127.0.0.1.
pub async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).context("server name")?,
        // rustls sends no SNI for an IP address.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true).context("nodelay")?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .context("TLS handshake")
}

/// The leaf certificate the server presented.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server sent a certificate")
        .clone()
        .into_owned()
}

/// One HTTP/1.1 request on `io` (which it consumes), read to the end.
pub async fn http1_get<I>(io: I, path: &str, host: &str) -> anyhow::Result<Resp>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(req).await.context("no response")?;
    let resp = collect(response).await;
    driver.abort();
    resp
}

/// An HTTP/2 client connection with a driver task.
pub struct H2 {
    pub sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H2 {
    /// HTTP/2 over `io` (already TLS with ALPN h2, or plain for h2c) with
    /// hyper's default windows.
    pub async fn handshake<I>(io: I) -> anyhow::Result<H2>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        H2::handshake_with(io, |_| {}).await
    }

    /// Like [`H2::handshake`], with the client builder adjusted by `tune`.
    pub async fn handshake_with<I>(
        io: I,
        tune: impl FnOnce(&mut hyper::client::conn::http2::Builder<TokioExecutor>),
    ) -> anyhow::Result<H2>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        tune(&mut builder);
        let (sender, conn) = builder.handshake(TokioIo::new(io)).await.context("h2 handshake")?;
        Ok(H2 {
            sender,
            driver: tokio::spawn(conn),
        })
    }

    /// `GET path` on a new stream, read to the end.
    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        let response = self.head(path).await?;
        collect(response).await
    }

    /// `GET path` on a new stream; the body is left unread.
    pub async fn head(&self, path: &str) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let req = Request::get(format!("http://localhost{path}")).body(Full::new(Bytes::new()))?;
        let mut sender = self.sender.clone();
        sender.ready().await.context("connection not usable")?;
        Ok(sender.send_request(req).await?)
    }
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<Resp> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.context("response body")?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `status` is the one expected; panics with the body otherwise.
pub fn assert_status(resp: &Resp, status: StatusCode) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
}

/// The external program `name`, if installed. Tests that need one skip
/// without it, except under CI (`CI` set), where a missing one is a failure:
/// the CI machine has curl, openssl and h2load, and a check that silently
/// skipped there would prove nothing.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is needed under CI but not installed"
        );
        eprintln!("skipping: {name} is not installed");
    }
    found
}
