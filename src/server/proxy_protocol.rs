//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies them): an
//! L4 balancer in front writes the real client's address before the first
//! byte of HTTP (or TLS). On a listener with `proxy_protocol = true` every
//! connection must start with one; the address it carries becomes the
//! client's for everything after (X-Forwarded-For, X-Real-IP, ip_hash,
//! rate-limit keys, per-IP limits, access logs).
//!
//! The header is read with `peek` and then consumed exactly, so the bytes
//! after it stay in the socket for whoever reads next (hyper or rustls) and
//! no buffer has to be handed over.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's figure).
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// Longest v2 header we accept: addresses plus room for TLVs (which we skip).
const V2_MAX: usize = V2_FIXED + 1024;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The original client (source) address.
    Proxied(SocketAddr),
    /// A connection the proxy made itself (health check, v2 LOCAL) or an
    /// unknown family (v1 UNKNOWN, v2 UNSPEC/UNIX): keep the peer address.
    Local,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    BadV2(&'static str),
}

/// Parses the start of a connection. `Ok(None)`: a valid prefix that needs
/// more bytes; `Ok(Some((header, len)))`: a header of `len` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == V2_SIGNATURE[0] && !buf.starts_with(b"PROXY") {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(ParseError::NotProxy);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(ParseError::NotProxy);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ParseError::BadV1("no CRLF within 107 bytes"));
        }
        // Only printable ASCII may come before the CRLF.
        if window
            .iter()
            .any(|&b| !(b == b' ' || b.is_ascii_graphic() || b == b'\r'))
        {
            return Err(ParseError::BadV1("not printable text"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ParseError::BadV1("not text"))?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next().ok_or(ParseError::BadV1("missing fields"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(ParseError::BadV1("extra fields"));
            }
            let (ip, dst): (IpAddr, IpAddr) = match family {
                "TCP4" => (
                    IpAddr::V4(src.parse().map_err(|_| ParseError::BadV1("bad IPv4 source"))?),
                    IpAddr::V4(dst.parse().map_err(|_| ParseError::BadV1("bad IPv4 destination"))?),
                ),
                _ => (
                    IpAddr::V6(src.parse().map_err(|_| ParseError::BadV1("bad IPv6 source"))?),
                    IpAddr::V6(dst.parse().map_err(|_| ParseError::BadV1("bad IPv6 destination"))?),
                ),
            };
            let _ = (dst, parse_port(dport)?);
            Header::Proxied(SocketAddr::new(ip, parse_port(sport)?))
        }
        _ => return Err(ParseError::BadV1("unknown protocol family")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_port(s: &str) -> Result<u16, ParseError> {
    // No sign, no leading zeros beyond "0" itself, as the spec asks.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(ParseError::BadV1("bad port"));
    }
    s.parse().map_err(|_| ParseError::BadV1("bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ParseError::BadV2("version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ParseError::BadV2("unknown command")),
    };
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED + len;
    if total > V2_MAX {
        return Err(ParseError::BadV2("header too long"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[V2_FIXED..total];
    if local {
        return Ok(Some((Header::Local, total)));
    }
    let header = match family {
        // TCP or UDP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 | 0x12 => {
            let a = body.get(..12).ok_or(ParseError::BadV2("IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Header::Proxied(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        // Over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 | 0x22 => {
            let a = body.get(..36).ok_or(ParseError::BadV2("IPv6 addresses cut short"))?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            Header::Proxied(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(src)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, or UNIX sockets: nothing usable as a client IP.
        0x00 | 0x31 | 0x32 => Header::Local,
        _ => return Err(ParseError::BadV2("unknown address family")),
    };
    Ok(Some((header, total)))
}

/// Reads the header at the start of `stream` within `timeout`, consuming
/// exactly its bytes. Errors close the connection.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> io::Result<Header> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY protocol header in time"))?
}

async fn read_header(stream: &mut TcpStream) -> io::Result<Header> {
    let mut buf = vec![0u8; V2_MAX];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match parse(&buf[..n]) {
            Ok(Some((header, len))) => {
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(header);
            }
            Ok(None) => {
                // A header split over packets (rare: senders write it in
                // one go). Peeking again returns at once, so wait a little
                // for more bytes instead of spinning.
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen = n;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_source() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(h), Ok(Some((Header::Proxied(addr("192.0.2.7:56324")), 45))));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n";
        assert_eq!(
            parse(h),
            Ok(Some((Header::Proxied(addr("[2001:db8::1]:4000")), h.len())))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Header::Local, 15))));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn v1_prefixes_wait_and_garbage_fails() {
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
        for bad in [
            &b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY \xff\xfe\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_families_and_commands() {
        let mut v4 = vec![10, 0, 0, 9, 10, 0, 0, 1];
        v4.extend_from_slice(&4321u16.to_be_bytes());
        v4.extend_from_slice(&80u16.to_be_bytes());
        let h = v2(1, 0x11, &v4);
        assert_eq!(parse(&h), Ok(Some((Header::Proxied(addr("10.0.0.9:4321")), 28))));
        // TLVs after the addresses are skipped with them.
        let mut with_tlv = v4.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
        let h = v2(1, 0x11, &with_tlv);
        assert_eq!(parse(&h), Ok(Some((Header::Proxied(addr("10.0.0.9:4321")), h.len()))));

        let mut v6 = Ipv6Addr::LOCALHOST.octets().to_vec();
        v6.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        v6.extend_from_slice(&9u16.to_be_bytes());
        v6.extend_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &v6)).unwrap().unwrap().0,
            Header::Proxied(addr("[::1]:9"))
        );

        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((Header::Local, 16))));
        assert_eq!(parse(&v2(0, 0x11, &v4)).unwrap().unwrap().0, Header::Local);
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().unwrap().0, Header::Local);
    }

    #[test]
    fn v2_truncated_and_garbage() {
        let h = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(
            parse(&v2(1, 0x11, &[1, 2, 3])).is_err(),
            "addresses shorter than the family needs"
        );
        assert!(parse(&v2(1, 0x21, &[0; 12])).is_err());
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err(), "unknown command");
        assert!(parse(&v2(1, 0x99, &[0; 12])).is_err(), "unknown family");
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX\n"), Err(ParseError::NotProxy));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err(), "a 64 KiB header is refused up front");
    }

    proptest! {
        #[test]
        fn never_panics_and_never_claims_more_than_it_has(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, len))) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn v1_round_trips(a in any::<[u8; 4]>(), port in any::<u16>(), dport in any::<u16>()) {
            let ip = Ipv4Addr::from(a);
            let line = format!("PROXY TCP4 {ip} 127.0.0.1 {port} {dport}\r\n");
            prop_assert_eq!(
                parse(line.as_bytes()),
                Ok(Some((Header::Proxied(SocketAddr::new(IpAddr::V4(ip), port)), line.len())))
            );
        }
    }
}
