//! TLS termination: certificates by SNI, protocol versions, ALPN, session
//! resumption, the handshake timeout, the http → https redirect listener,
//! and `fulcrum check` on broken certificate files. Certificates come from a
//! CA made at test time.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use rustls::HandshakeKind;
use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use support::tls::{H2, Issued, TestCa, assert_status, connect, http1_get, peer_leaf, tool};
use support::{Config, Fulcrum, backends, get_with};

/// A TLS listener `web` with `certs` (in order) in front of `upstream`.
fn config(upstream: std::net::SocketAddr, certs: &[&Issued], tls_extra: &str) -> String {
    let certificates: Vec<String> = certs
        .iter()
        .map(|c| format!("{{ cert = {:?}, key = {:?} }}", c.cert, c.key))
        .collect();
    Config::app(&[upstream])
        .global("workers = 2")
        .listener(r#"request_header_timeout = "1s""#)
        .listener("[listeners.tls]")
        .listener(&format!("certificates = [ {} ]", certificates.join(", ")))
        .listener(tls_extra)
        .toml()
}

/// The CA, a default certificate (valid for 127.0.0.1, so a client without
/// SNI can verify it) and one each for `a.test` and `b.test`.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
    default: Issued,
    a: Issued,
    b: Issued,
}

fn pki() -> Pki {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let default = ca.issue(dir.path(), "default", &["default.test", "127.0.0.1"]);
    let a = ca.issue(dir.path(), "a", &["a.test"]);
    let b = ca.issue(dir.path(), "b", &["b.test", "*.b.test"]);
    Pki { ca, dir, default, a, b }
}

#[tokio::test]
async fn each_sni_name_gets_its_certificate_and_no_sni_gets_the_first() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a, &pki.b], ""));
    let addr = lb.addr("web");
    let client = pki.ca.default_client(&["http/1.1"]);
    for (sni, expected) in [
        (Some("a.test"), &pki.a),
        (Some("b.test"), &pki.b),
        (Some("x.b.test"), &pki.b),
        (Some("default.test"), &pki.default),
        (None, &pki.default),
    ] {
        let stream = connect(addr, sni, client.clone())
            .await
            .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e:#}"));
        assert!(
            peer_leaf(&stream) == expected.der,
            "SNI {sni:?} got the wrong certificate"
        );
        let resp = http1_get(stream, "/", sni.unwrap_or("127.0.0.1")).await.unwrap();
        assert_status(&resp, StatusCode::OK);
        assert_eq!(resp.text(), "app\n");
    }
    // A name no certificate carries gets the default, which the client
    // rightly refuses.
    let unknown = connect(addr, Some("unknown.test"), client).await;
    assert!(unknown.is_err(), "unknown.test was served a certificate valid for it");
}

#[tokio::test]
async fn upstream_sees_https_as_the_forwarded_proto() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a], ""));
    let stream = connect(lb.addr("web"), Some("a.test"), pki.ca.default_client(&[]))
        .await
        .unwrap();
    let resp = http1_get(stream, "/echo", "a.test").await.unwrap();
    assert_status(&resp, StatusCode::OK);
    let echo = resp.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-host"], "a.test", "{echo}");
}

#[tokio::test]
async fn alpn_chooses_h2_when_offered_and_http11_otherwise() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a], ""));
    let addr = lb.addr("web");

    let stream = connect(addr, Some("a.test"), pki.ca.default_client(&["h2", "http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = H2::handshake(stream).await.unwrap();
    let resp = h2.get("/echo").await.unwrap();
    assert_status(&resp, StatusCode::OK);
    let echo = resp.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert_eq!(echo["headers"]["host"], "localhost", ":authority becomes Host: {echo}");
    assert_eq!(echo["headers"]["x-forwarded-host"], "localhost", "{echo}");

    for offered in [&["http/1.1"][..], &[]] {
        let stream = connect(addr, Some("a.test"), pki.ca.default_client(offered))
            .await
            .unwrap();
        let expected = if offered.is_empty() {
            None
        } else {
            Some(&b"http/1.1"[..])
        };
        assert_eq!(stream.get_ref().1.alpn_protocol(), expected);
        let resp = http1_get(stream, "/", "a.test").await.unwrap();
        assert_eq!(resp.text(), "app\n");
    }
}

#[tokio::test]
async fn tls_12_and_13_are_spoken() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a], ""));
    for version in [&TLS12, &TLS13] {
        let stream = connect(lb.addr("web"), Some("a.test"), pki.ca.client(&[], &[version]))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#}", version.version));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        let resp = http1_get(stream, "/", "a.test").await.unwrap();
        assert_eq!(resp.text(), "app\n");
    }
}

/// A TLS 1.1 ClientHello: record and hello version 0x0302, two cipher
/// suites of that era. rustls clients cannot speak TLS 1.1, so it is written
/// by hand. It carries a signature_algorithms extension (which TLS 1.1
/// clients need not send) so that the version, and nothing else, is what the
/// server can object to.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    // Extensions: signature_algorithms (13) = [ecdsa_secp256r1_sha256, rsa_pkcs1_sha256].
    hello.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8]; // ClientHello
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn tls_11_is_refused_with_a_protocol_version_alert() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default], ""));
    let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
    stream.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after refusing")
        .ok();
    // An alert record (21), fatal (2), protocol_version (70).
    assert!(
        answer.len() >= 7 && answer[0] == 21 && answer[5] == 2 && answer[6] == 70,
        "expected a protocol_version alert, got {answer:02x?}"
    );
    assert_eq!(b[0].stats.connections.load(std::sync::atomic::Ordering::Relaxed), 0);

    // The same with a real TLS 1.1 client. OpenSSL 3 itself refuses TLS 1.1
    // at its default security level, so that is lowered: the refusal must
    // come from the server, and `-tls1_2` with the same settings succeeds.
    let Some(openssl) = tool("openssl") else { return };
    let addr = lb.addr("web").to_string();
    let s_client = |version: &str| {
        let out = std::process::Command::new(&openssl)
            .args(["s_client", "-connect", &addr, version, "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // OpenSSL's TLS 1.1 hello has no signature_algorithms, which rustls
    // answers with a handshake_failure alert before it looks at the version:
    // either way the alert comes from the server and no session is made.
    let (ok, log) = s_client("-tls1_1");
    assert!(
        !ok && log.contains("SSL alert number") && log.contains("Cipher is (NONE)"),
        "TLS 1.1 was not refused by the server:\n{log}"
    );
    let (ok, log) = s_client("-tls1_2");
    assert!(ok && log.contains("TLSv1.2"), "TLS 1.2 failed:\n{log}");
}

#[tokio::test]
async fn sessions_resume_by_ticket_and_by_session_id() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a], ""));
    let addr = lb.addr("web");
    let tickets13 = pki.ca.client(&[], &[&TLS13]);
    let tickets12 = pki.ca.client(&[], &[&TLS12]);
    let mut ids12 = (*pki.ca.client(&[], &[&TLS12])).clone();
    ids12.resumption = ids12
        .resumption
        .clone()
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    for (what, client) in [
        ("TLS 1.3 ticket", tickets13),
        ("TLS 1.2 ticket", tickets12),
        ("TLS 1.2 session id", std::sync::Arc::new(ids12)),
    ] {
        // Several connections: with two workers they land on either, and
        // every one after the first must resume.
        for i in 0..4 {
            let stream = connect(addr, Some("a.test"), client.clone()).await.unwrap();
            let kind = stream.get_ref().1.handshake_kind();
            let expected = if i == 0 {
                HandshakeKind::Full
            } else {
                HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(expected), "{what}, connection {i}");
            // A request reads the TLS 1.3 tickets the server sends after the handshake.
            let resp = http1_get(stream, "/", "a.test").await.unwrap();
            assert_eq!(resp.text(), "app\n");
        }
    }
}

#[tokio::test]
async fn silent_client_is_dropped_at_request_header_timeout() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default], ""));
    let mut stream = TcpStream::connect(lb.addr("web")).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client was not dropped: {closed:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "dropped before the 1s timeout: {took:?}"
    );
}

#[tokio::test]
async fn redirect_listener_sends_plain_http_to_https_with_308() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(
        b[0].addr,
        &[&pki.default, &pki.a],
        r#"redirect_http_from = "127.0.0.1:0""#,
    ));
    let https_port = lb.addr("web").port();
    let from = lb.addr("web-redirect");
    let resp = get_with(from, "/echo?q=1", &[("host", "a.test:8080")]).await;
    assert_eq!(resp.status, StatusCode::PERMANENT_REDIRECT);
    let location = format!("https://a.test:{https_port}/echo?q=1");
    assert_eq!(resp.header("location"), Some(location.as_str()));

    let resp = support::raw_exchange(from, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400"), "{resp}");
    assert_eq!(
        b[0].stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a redirect never reaches the upstream"
    );

    // Following it arrives on the TLS listener.
    let stream = connect(lb.addr("web"), Some("a.test"), pki.ca.default_client(&[]))
        .await
        .unwrap();
    let resp = http1_get(stream, "/echo?q=1", "a.test").await.unwrap();
    assert_status(&resp, StatusCode::OK);
    assert_eq!(resp.json()["path"], "/echo?q=1");
}

#[tokio::test]
async fn curl_gets_h2_over_tls_with_the_right_certificate() {
    let Some(curl) = tool("curl") else { return };
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a, &pki.b], ""));
    let port = lb.addr("web").port();
    let ca = pki.ca.write_ca(pki.dir.path());
    for (host, version_flag, expected_version) in [
        ("a.test", "--http2", "2"),
        ("b.test", "--http2", "2"),
        ("a.test", "--http1.1", "1.1"),
    ] {
        let out = tokio::process::Command::new(&curl)
            .args(["--silent", "--show-error", "--max-time", "20", version_flag, "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["--write-out", "\n%{http_code} %{http_version} %{ssl_verify_result}"])
            .arg(format!("https://{host}:{port}/"))
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {host} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout,
            format!("app\n\n200 {expected_version} 0"),
            "curl {host} {version_flag}"
        );
    }
}

#[tokio::test]
async fn curl_follows_the_redirect_from_http_to_h2_over_tls() {
    let Some(curl) = tool("curl") else { return };
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(
        b[0].addr,
        &[&pki.default, &pki.a],
        r#"redirect_http_from = "127.0.0.1:0""#,
    ));
    let (https, http) = (lb.addr("web").port(), lb.addr("web-redirect").port());
    let ca = pki.ca.write_ca(pki.dir.path());
    let out = tokio::process::Command::new(&curl)
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--location",
            "--http2",
            "--cacert",
        ])
        .arg(&ca)
        .args(["--resolve", &format!("a.test:{http}:127.0.0.1")])
        .args(["--resolve", &format!("a.test:{https}:127.0.0.1")])
        .args([
            "--write-out",
            "\n%{http_code} %{http_version} %{num_redirects} %{url_effective}",
        ])
        .arg(format!("http://a.test:{http}/echo?q=1"))
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, summary) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(summary, format!("200 2 1 https://a.test:{https}/echo?q=1"));
    let echo: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(echo["path"], "/echo?q=1", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
}

/// Runs `fulcrum check` on `toml` in `dir`; returns (exit code, stderr).
fn check(dir: &Path, toml: &str) -> (i32, String) {
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_points_at_the_broken_certificate_or_key() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue(dir.path(), "good", &["good.test"]);
    let other = ca.issue(dir.path(), "other", &["other.test"]);
    std::fs::write(dir.path().join("empty.key"), "no key here\n").unwrap();
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let toml = |cert: &str, key: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\n\
             certificates = [ {{ cert = \"{cert}\", key = \"{key}\" }} ]\n\
             [[routes]]\nupstream = \"app\"\n[upstreams.app]\nservers = [ {{ address = \"127.0.0.1:9\" }} ]\n"
        )
    };
    // Paths relative to the config file's directory.
    let (code, err) = check(dir.path(), &toml("good.pem", "good.key"));
    assert_eq!(code, 0, "{err}");
    assert!(good.cert.exists() && other.key.exists());

    let cert_at = "fulcrum.toml:5:27: listeners[0].tls.certificates[0].cert";
    let key_col = |cert: &str| 37 + cert.len();
    let cases = [
        (
            "absent.pem",
            "good.key",
            cert_at.to_string(),
            "cannot read certificate file",
        ),
        ("junk.pem", "good.key", cert_at.to_string(), "invalid certificate"),
        ("good.key", "good.key", cert_at.to_string(), "no PEM certificate"),
        (
            "good.pem",
            "absent.key",
            format!(
                "fulcrum.toml:5:{}: listeners[0].tls.certificates[0].key",
                key_col("good.pem")
            ),
            "cannot read key file",
        ),
        (
            "good.pem",
            "empty.key",
            format!(
                "fulcrum.toml:5:{}: listeners[0].tls.certificates[0].key",
                key_col("good.pem")
            ),
            "no private key",
        ),
        (
            "good.pem",
            "other.key",
            format!(
                "fulcrum.toml:5:{}: listeners[0].tls.certificates[0].key",
                key_col("good.pem")
            ),
            "does not belong to the certificate",
        ),
    ];
    for (cert, key, at, needle) in cases {
        let (code, err) = check(dir.path(), &toml(cert, key));
        let err = err.replace(&format!("{}/", dir.path().display()), "");
        assert_eq!(code, 1, "cert {cert}, key {key}: {err}");
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(needle)),
            "cert {cert}, key {key}: expected `{at}: ...{needle}...` in:\n{err}"
        );
    }
}

#[tokio::test]
async fn rsa_and_ec_keys_in_every_pem_form_work() {
    let Some(openssl) = tool("openssl") else { return };
    let b = backends(&["app"]).await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let openssl_key = |args: &[&str], out: &str| {
        let path = dir.path().join(out);
        let status = std::process::Command::new(&openssl)
            .args(args)
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
        std::fs::read_to_string(path).unwrap()
    };
    // PKCS#1 "RSA PRIVATE KEY" and SEC1 "EC PRIVATE KEY", converted from
    // PKCS#8 keys openssl made; rcgen signs certificates for them.
    let rsa8 = openssl_key(
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "rsa8.pem",
    );
    let ec8 = openssl_key(
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "ec8.pem",
    );
    let rsa1 = openssl_key(
        &[
            "pkey",
            "-in",
            &dir.path().join("rsa8.pem").to_string_lossy(),
            "-traditional",
        ],
        "rsa1.pem",
    );
    let ec1 = openssl_key(&["ec", "-in", &dir.path().join("ec8.pem").to_string_lossy()], "ec1.pem");
    assert!(rsa1.contains("BEGIN RSA PRIVATE KEY") && ec1.contains("BEGIN EC PRIVATE KEY"));
    let rsa_key = rcgen::KeyPair::from_pem(&rsa8).unwrap();
    let ec_key = rcgen::KeyPair::from_pem(&ec8).unwrap();
    let p256 = rcgen::KeyPair::generate().unwrap();
    let certs = [
        ca.issue_with_key(dir.path(), "rsa-pkcs1", &["rsa1.test", "127.0.0.1"], &rsa_key, &rsa1),
        ca.issue_with_key(dir.path(), "rsa-pkcs8", &["rsa8.test"], &rsa_key, &rsa8),
        ca.issue_with_key(dir.path(), "ec-sec1", &["ec1.test"], &ec_key, &ec1),
        ca.issue_with_key(dir.path(), "ec-pkcs8", &["ec8.test"], &p256, &p256.serialize_pem()),
    ];
    let lb = Fulcrum::start(&config(b[0].addr, &certs.iter().collect::<Vec<_>>(), ""));
    for (name, cert) in ["rsa1.test", "rsa8.test", "ec1.test", "ec8.test"]
        .into_iter()
        .zip(&certs)
    {
        for version in [&TLS12, &TLS13] {
            let stream = connect(lb.addr("web"), Some(name), ca.client(&[], &[version]))
                .await
                .unwrap_or_else(|e| panic!("{name} {:?}: {e:#}", version.version));
            assert!(peer_leaf(&stream) == cert.der, "{name}: wrong certificate");
            assert_eq!(http1_get(stream, "/", name).await.unwrap().text(), "app\n");
        }
    }
}

#[tokio::test]
async fn reload_serves_new_certificates_and_keeps_the_old_ones_when_broken() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let lb = Fulcrum::start(&config(b[0].addr, &[&pki.default, &pki.a], ""));
    let addr = lb.addr("web");
    let client = pki.ca.default_client(&[]);
    let leaf_for = |sni: &'static str| {
        let client = client.clone();
        async move { connect(addr, Some(sni), client).await.map(|s| peer_leaf(&s)) }
    };
    assert!(leaf_for("a.test").await.unwrap() == pki.a.der);

    // A renewed certificate for a.test, and b.test added: served after a reload.
    let renewed = pki.ca.issue(pki.dir.path(), "a-renewed", &["a.test"]);
    lb.write_config(&config(b[0].addr, &[&pki.default, &renewed, &pki.b], ""));
    lb.signal("HUP");
    support::wait_until_async("the renewed certificate to be served", Duration::from_secs(10), || {
        let leaf = leaf_for("a.test");
        let renewed = renewed.der.clone();
        async move { leaf.await.is_ok_and(|l| l == renewed) }
    })
    .await;
    assert!(leaf_for("b.test").await.unwrap() == pki.b.der);

    // A key that is not the certificate's: the reload fails, the running
    // certificates keep serving, and the listener was never interrupted.
    let broken = Issued {
        cert: pki.b.cert.clone(),
        key: pki.a.key.clone(),
        der: pki.b.der.clone(),
    };
    lb.write_config(&config(b[0].addr, &[&pki.default, &renewed, &broken], ""));
    lb.signal("HUP");
    support::wait_until("the failed reload to be logged", Duration::from_secs(10), || {
        lb.logs().contains("reload failed")
    })
    .await;
    let logs = lb.logs();
    assert!(logs.contains("does not belong to the certificate"), "{logs}");
    assert!(leaf_for("a.test").await.unwrap() == renewed.der);
    assert!(leaf_for("b.test").await.unwrap() == pki.b.der);
    let stream = connect(addr, Some("b.test"), client.clone()).await.unwrap();
    assert_eq!(http1_get(stream, "/", "b.test").await.unwrap().text(), "app\n");
}

#[tokio::test]
async fn proxy_protocol_header_comes_before_the_tls_handshake() {
    let b = backends(&["app"]).await;
    let pki = pki();
    let toml = config(b[0].addr, &[&pki.default, &pki.a], "").replace(
        "request_header_timeout = \"1s\"",
        "request_header_timeout = \"1s\"\nproxy_protocol = true",
    );
    let lb = Fulcrum::start(&toml);
    let mut tcp = TcpStream::connect(lb.addr("web")).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(pki.ca.default_client(&[]))
        .connect(name, tcp)
        .await
        .expect("TLS after the PROXY header");
    let resp = http1_get(stream, "/echo", "a.test").await.unwrap();
    let echo = resp.json();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.7", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
}
