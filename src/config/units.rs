//! Value types users write as strings: durations, sizes, addresses, header
//! names and values, host patterns. Each parses with a message that says
//! what was expected.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

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
                Err(E::custom("durations are strings with a unit, like \"30s\""))
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
    let (digits, mult) = match t.char_indices().last() {
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
        .and_then(|n| n.checked_mul(mult))
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

/// `"50/s"` or `"600/m"`: requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStr(pub f64);

impl<'de> Deserialize<'de> for RateStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || de::Error::custom(format!("invalid rate {text:?}: expected like \"50/s\" or \"600/m\""));
        let (n, per) = text.split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let secs = match per.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if n.is_nan() || n <= 0.0 {
            return Err(bad());
        }
        Ok(RateStr(n / secs))
    }
}

/// Deserializes a string through `FromStr`-like parsing with a custom message.
macro_rules! string_type {
    ($name:ident, $inner:ty, $parse:expr) => {
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&text).map($name).map_err(de::Error::custom)
            }
        }
    };
}

string_type!(ListenAddr, std::net::SocketAddr, |t| t.parse().map_err(|_| format!(
    "invalid address {t:?}: expected IP:port, like \"0.0.0.0:8080\" or \"[::1]:8080\""
)));

string_type!(ServerAddr, String, parse_server_address);

pub fn parse_server_address(t: &str) -> Result<String, String> {
    let bad =
        || format!("invalid server address {t:?}: expected host:port, like \"10.0.0.1:3000\" or \"app.internal:3000\"");
    if t.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(t.to_string());
    }
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
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

string_type!(HeaderNameStr, http::HeaderName, |t| http::HeaderName::from_bytes(
    t.as_bytes()
)
.map_err(|_| format!("invalid header name {t:?}")));

string_type!(HeaderValueStr, http::HeaderValue, |t| http::HeaderValue::from_str(t)
    .map_err(|_| format!("invalid header value {t:?}")));

string_type!(HostPattern, super::model::HostMatch, parse_host_pattern);

pub fn parse_host_pattern(t: &str) -> Result<super::model::HostMatch, String> {
    let bad = || format!("invalid host {t:?}: expected a name like \"api.example.com\" or \"*.example.com\"");
    let lower = t.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if !ok {
        return Err(bad());
    }
    Ok(if wild {
        super::model::HostMatch::Wildcard(format!(".{name}"))
    } else {
        super::model::HostMatch::Exact(name.to_string())
    })
}

// `"200-399"` or `"200"`.
string_type!(StatusRange, (u16, u16), |t| {
    let bad = || format!("invalid status range {t:?}: expected like \"200-399\" or \"200\"");
    let (lo, hi) = t.split_once('-').unwrap_or((t, t));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
});

// `client_ip | header:NAME | cookie:NAME | path | query:NAME` (which kinds
// are allowed depends on the key; checked by the caller).
string_type!(KeySpec, (String, Option<String>), |t| {
    let (kind, name) = match t.split_once(':') {
        Some((k, n)) if !n.is_empty() => (k, Some(n.to_string())),
        Some(_) => return Err(format!("invalid key {t:?}: a name must follow the colon")),
        None => (t, None),
    };
    Ok((kind.to_string(), name))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "30", "s", "3x", "-1s", "1.5s", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "k", "12x", "-1", "1.5M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_addresses_and_hosts() {
        assert!(parse_server_address("127.0.0.1:9001").is_ok());
        assert!(parse_server_address("[::1]:9001").is_ok());
        assert!(parse_server_address("app2.internal:3000").is_ok());
        assert!(parse_server_address("api_gateway_1:80").is_ok());
        for bad in ["app", "app:", "app:99999", ":80", "a b:80"] {
            assert!(parse_server_address(bad).is_err(), "{bad}");
        }
        use super::super::model::HostMatch;
        assert_eq!(
            parse_host_pattern("API.example.com"),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("*.example.com"),
            Ok(HostMatch::Wildcard(".example.com".into()))
        );
        assert!(parse_host_pattern("a.*.com").is_err());
        assert!(parse_host_pattern("").is_err());
    }
}
