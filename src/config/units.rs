//! Value types users write as strings: durations, sizes, rates, addresses,
//! header names and values, host patterns, status ranges and keys. Each
//! parses with a message that says what was expected.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::model::{AccessLog, HashKey, HostMatch, LimitKey};

/// A type read from a TOML string by a parser that explains its failures.
trait FromConfigStr: Sized {
    /// What the value looks like, for serde's "expected ..." messages.
    const EXPECTING: &'static str;
    fn from_config_str(text: &str) -> Result<Self, String>;
}

/// Deserializes `T` from a string; any other TOML type is a type error.
struct StrVisitor<T>(PhantomData<T>);

impl<T: FromConfigStr> Visitor<'_> for StrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_config_str(v).map_err(E::custom)
    }
}

macro_rules! deserialize_from_str {
    ($($name:ident),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(StrVisitor::<Self>(PhantomData))
            }
        }
    )*};
}

deserialize_from_str!(
    ListenAddr,
    ServerAddr,
    ResolverAddr,
    HeaderNameStr,
    HeaderValueStr,
    HostPattern,
    StatusRange,
    HashKeySpec,
    LimitKeySpec,
    AccessLogStr,
);

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or a sum like `"1m30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h), like \"250ms\" or \"30s\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationStr, E> {
                parse_duration(v).map(DurationStr).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<DurationStr, E> {
                Err(E::custom(
                    "durations are strings like \"30s\" (a number and a unit: ms, s, m, h)",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"512"`, `"16k"`, `"100M"`, `"1G"` (1024-based), or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeStr(pub u64);

pub fn parse_size(text: &str) -> Result<u64, String> {
    let err = || format!("invalid size {text:?}: expected bytes, optionally with k, M or G, like \"16k\" or \"100M\"");
    let t = text.trim();
    let (digits, multiplier) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(err)
}

impl<'de> Deserialize<'de> for SizeStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"16k\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeStr, E> {
                parse_size(v).map(SizeStr).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeStr, E> {
                u64::try_from(v)
                    .map(SizeStr)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"50/s"`, `"600/m"` or `"1000/h"`, held as requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStr(pub f64);

pub fn parse_rate(text: &str) -> Result<f64, String> {
    let err = || format!("invalid rate {text:?}: expected a number per s, m or h, like \"50/s\" or \"600/m\"");
    let (count, per) = text.split_once('/').ok_or_else(err)?;
    let count: f64 = count.trim().parse().map_err(|_| err())?;
    let seconds = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    if !count.is_finite() || count <= 0.0 {
        return Err(err());
    }
    Ok(count / seconds)
}

impl<'de> Deserialize<'de> for RateStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rate(&text).map(RateStr).map_err(de::Error::custom)
    }
}

/// A socket address to listen on: `IP:port` or `[IPv6]:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromConfigStr for ListenAddr {
    const EXPECTING: &'static str = "an address like \"0.0.0.0:8080\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        t.parse()
            .map(ListenAddr)
            .map_err(|_| format!("invalid address {t:?}: expected IP:port, like \"0.0.0.0:8080\" or \"[::1]:8080\""))
    }
}

/// A DNS server to ask: `IP`, `IP:port` or `[IPv6]:port` (port 53 if omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverAddr(pub SocketAddr);

impl FromConfigStr for ResolverAddr {
    const EXPECTING: &'static str = "a DNS server address like \"10.0.0.2:53\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        let addr = t
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| t.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
        match addr {
            Some(addr) if addr.port() != 0 => Ok(ResolverAddr(addr)),
            _ => Err(format!(
                "invalid resolver {t:?}: expected an IP address with an optional port, like \"10.0.0.2\" or \"127.0.0.1:5353\""
            )),
        }
    }
}

/// A server's `host:port`, the host an IP or a DNS name; kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr(pub String);

impl FromConfigStr for ServerAddr {
    const EXPECTING: &'static str = "a server address like \"10.0.0.1:3000\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        parse_server_address(t).map(ServerAddr)
    }
}

pub fn parse_server_address(t: &str) -> Result<String, String> {
    let bad =
        || format!("invalid server address {t:?}: expected host:port, like \"10.0.0.1:3000\" or \"app.internal:3000\"");
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(bad())
        } else {
            Ok(t.to_string())
        };
    }
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            // `_` is not valid DNS, but Docker and Compose service names
            // (`api_gateway_1`) use it and resolve fine.
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !host_ok {
        return Err(bad());
    }
    Ok(t.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNameStr(pub HeaderName);

impl FromConfigStr for HeaderNameStr {
    const EXPECTING: &'static str = "a header name";
    fn from_config_str(t: &str) -> Result<Self, String> {
        HeaderName::from_bytes(t.as_bytes())
            .map(HeaderNameStr)
            .map_err(|_| format!("invalid header name {t:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueStr(pub HeaderValue);

impl FromConfigStr for HeaderValueStr {
    const EXPECTING: &'static str = "a header value";
    fn from_config_str(t: &str) -> Result<Self, String> {
        HeaderValue::from_str(t)
            .map(HeaderValueStr)
            .map_err(|_| format!("invalid header value {t:?}"))
    }
}

/// `{ "Name" = "value", ... }` in file order; a bad name is reported at the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMapSpec(pub Vec<(HeaderName, HeaderValue)>);

impl<'de> Deserialize<'de> for HeaderMapSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderMapSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderMapSpec, A::Error> {
                let mut headers = Vec::new();
                while let Some((name, value)) = map.next_entry::<HeaderNameStr, HeaderValueStr>()? {
                    headers.push((name.0, value.0));
                }
                Ok(HeaderMapSpec(headers))
            }
        }
        d.deserialize_map(V)
    }
}

/// `api.example.com` or `*.example.com`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(pub HostMatch);

impl FromConfigStr for HostPattern {
    const EXPECTING: &'static str = "a host like \"api.example.com\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        parse_host_pattern(t).map(HostPattern)
    }
}

pub fn parse_host_pattern(t: &str) -> Result<HostMatch, String> {
    let bad = || format!("invalid host {t:?}: expected a name like \"api.example.com\" or \"*.example.com\"");
    let lower = t.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(bad());
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// `"200-399"` or `"200"`: an inclusive range of statuses within 100-599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub (u16, u16));

impl FromConfigStr for StatusRange {
    const EXPECTING: &'static str = "a status range like \"200-399\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid status range {t:?}: expected statuses within 100-599, like \"200-399\" or \"200\"");
        let (low, high) = t.split_once('-').unwrap_or((t, t));
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(bad());
        }
        Ok(StatusRange((low, high)))
    }
}

/// `hash_key`: `client_ip | header:NAME | cookie:NAME | path | query:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashKeySpec(pub HashKey);

impl FromConfigStr for HashKeySpec {
    const EXPECTING: &'static str = "a key like \"cookie:session\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid hash_key {t:?}: expected client_ip, header:NAME, cookie:NAME, path or query:NAME");
        let key = match t.split_once(':') {
            None if t == "client_ip" => HashKey::ClientIp,
            None if t == "path" => HashKey::Path,
            Some(("header", name)) => HashKey::Header(header_name(t, name)?),
            Some(("cookie", name)) => HashKey::Cookie(cookie_name(t, name)?),
            Some(("query", name)) if !name.is_empty() => HashKey::Query(name.to_string()),
            _ => return Err(bad()),
        };
        Ok(HashKeySpec(key))
    }
}

/// A rate limit's `key`: `client_ip | header:NAME | cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKeySpec(pub LimitKey);

impl FromConfigStr for LimitKeySpec {
    const EXPECTING: &'static str = "a key like \"client_ip\"";
    fn from_config_str(t: &str) -> Result<Self, String> {
        let key = match t.split_once(':') {
            None if t == "client_ip" => LimitKey::ClientIp,
            Some(("header", name)) => LimitKey::Header(header_name(t, name)?),
            Some(("cookie", name)) => LimitKey::Cookie(cookie_name(t, name)?),
            _ => {
                return Err(format!(
                    "invalid rate limit key {t:?}: expected client_ip, header:NAME or cookie:NAME"
                ));
            }
        };
        Ok(LimitKeySpec(key))
    }
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?} in {key:?}"))
}

/// A cookie name must be an RFC 6265 token.
pub fn cookie_name(key: &str, name: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("invalid cookie name {name:?} in {key:?}"));
    }
    Ok(name.to_string())
}

/// `access_log`: `"off"`, `"stdout"` or a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogStr(pub AccessLog);

impl FromConfigStr for AccessLogStr {
    const EXPECTING: &'static str = "\"off\", \"stdout\" or a file path";
    fn from_config_str(t: &str) -> Result<Self, String> {
        Ok(AccessLogStr(match t {
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            "" => return Err("access_log cannot be empty: expected \"off\", \"stdout\" or a file path".to_string()),
            path => AccessLog::File(PathBuf::from(path)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: FromConfigStr>(t: &str) -> Result<T, String> {
        T::from_config_str(t)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "30",
            "s",
            "3x",
            "-1s",
            "1.5s",
            "ms",
            "30 s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "k", "12x", "-1", "1.5M", "99999999999999999999G", "16 k"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        for bad in ["50", "50/d", "0/s", "-1/s", "inf/s", "NaN/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_and_server_addresses() {
        assert!(parse::<ListenAddr>("0.0.0.0:8080").is_ok());
        assert!(parse::<ListenAddr>("[::1]:8080").is_ok());
        assert!(parse::<ListenAddr>("localhost:8080").is_err());
        assert!(parse::<ListenAddr>("0.0.0.0").is_err());
        assert_eq!(parse::<ResolverAddr>("10.0.0.2").map(|r| r.0.port()), Ok(53));
        assert!(parse::<ResolverAddr>("127.0.0.1:5353").is_ok());
        assert!(parse::<ResolverAddr>("[::1]:5353").is_ok());
        for bad in ["dns.internal:53", "127.0.0.1:0", "", "10.0.0.2:"] {
            assert!(parse::<ResolverAddr>(bad).is_err(), "{bad}");
        }
        assert!(parse_server_address("127.0.0.1:9001").is_ok());
        assert!(parse_server_address("[::1]:9001").is_ok());
        assert!(parse_server_address("app2.internal:3000").is_ok());
        assert!(parse_server_address("api_gateway_1:80").is_ok());
        for bad in [
            "app",
            "app:",
            "app:99999",
            ":80",
            "a b:80",
            "app:0",
            "127.0.0.1:0",
            "::1:80",
            "a..b:80",
        ] {
            assert!(parse_server_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns_are_lower_cased() {
        assert_eq!(
            parse_host_pattern("API.example.com"),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("*.Example.com"),
            Ok(HostMatch::Wildcard(".example.com".into()))
        );
        for bad in ["", "*", "*.", "a.*.com", "api.example.com:8080", "a b.com", "a..b"] {
            assert!(parse_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse::<StatusRange>("200-399"), Ok(StatusRange((200, 399))));
        assert_eq!(parse::<StatusRange>("204"), Ok(StatusRange((204, 204))));
        for bad in ["", "399-200", "99", "600", "200-", "ok"] {
            assert!(parse::<StatusRange>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_and_limit_keys() {
        assert_eq!(parse::<HashKeySpec>("client_ip"), Ok(HashKeySpec(HashKey::ClientIp)));
        assert_eq!(parse::<HashKeySpec>("path"), Ok(HashKeySpec(HashKey::Path)));
        assert_eq!(
            parse::<HashKeySpec>("header:X-User"),
            Ok(HashKeySpec(HashKey::Header(HeaderName::from_static("x-user"))))
        );
        assert_eq!(
            parse::<HashKeySpec>("cookie:session"),
            Ok(HashKeySpec(HashKey::Cookie("session".into())))
        );
        assert_eq!(
            parse::<HashKeySpec>("query:id"),
            Ok(HashKeySpec(HashKey::Query("id".into())))
        );
        for bad in [
            "",
            "ip",
            "header:",
            "header:a b",
            "cookie:",
            "cookie:a;b",
            "query:",
            "path:x",
        ] {
            assert!(parse::<HashKeySpec>(bad).is_err(), "{bad}");
        }
        assert_eq!(parse::<LimitKeySpec>("client_ip"), Ok(LimitKeySpec(LimitKey::ClientIp)));
        assert!(parse::<LimitKeySpec>("cookie:sid").is_ok());
        for bad in ["path", "query:id", "header:", "client_ip:x"] {
            assert!(parse::<LimitKeySpec>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_and_access_log() {
        assert!(parse::<HeaderNameStr>("X-Env").is_ok());
        assert!(parse::<HeaderNameStr>("X Env").is_err());
        assert!(parse::<HeaderValueStr>("max-age=31536000").is_ok());
        assert!(parse::<HeaderValueStr>("a\nb").is_err());
        assert_eq!(parse::<AccessLogStr>("off"), Ok(AccessLogStr(AccessLog::Off)));
        assert_eq!(parse::<AccessLogStr>("stdout"), Ok(AccessLogStr(AccessLog::Stdout)));
        assert_eq!(
            parse::<AccessLogStr>("/var/log/fulcrum.log"),
            Ok(AccessLogStr(AccessLog::File("/var/log/fulcrum.log".into())))
        );
        assert!(parse::<AccessLogStr>("").is_err());
    }
}
