//! One access-log line, written as JSON or as Apache/nginx "combined" plus
//! Fulcrum's fields. Pure: a `Line` of borrowed values in, bytes appended
//! to a caller's buffer out; no allocation of its own.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one line says about one request.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// When the request was received.
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: &'a str,
    /// Path and query, as the client sent them (before any rewrite).
    pub target: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    /// Response body bytes passed to the client connection.
    pub body_bytes: u64,
    /// From receiving the request to the end of its response body.
    pub duration: Duration,
    /// The address of the server that answered (or was tried last).
    pub upstream: Option<&'a str>,
    /// Time to the response head from that server, connect included.
    pub upstream_time: Option<Duration>,
    pub retries: u32,
    pub request_id: &'a [u8],
    pub route: Option<&'a str>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// Appends `line` as one JSON object and a newline.
pub fn json(line: &Line<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_millis(line.time, out);
    out.extend_from_slice(b"\",\"client\":\"");
    let _ = write!(out, "{}", line.client);
    out.extend_from_slice(b"\",\"method\":");
    json_str(line.method.as_bytes(), out);
    out.extend_from_slice(b",\"path\":");
    json_str(line.target.as_bytes(), out);
    out.extend_from_slice(b",\"protocol\":");
    json_str(line.protocol.as_bytes(), out);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":",
        line.status, line.body_bytes
    );
    millis(line.duration, out);
    out.extend_from_slice(b",\"upstream\":");
    json_opt(line.upstream.map(str::as_bytes), out);
    out.extend_from_slice(b",\"upstream_time_ms\":");
    match line.upstream_time {
        Some(t) => millis(t, out),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"retries\":{},\"request_id\":", line.retries);
    json_str(line.request_id, out);
    out.extend_from_slice(b",\"route\":");
    json_opt(line.route.map(str::as_bytes), out);
    out.extend_from_slice(b",\"referer\":");
    json_opt(line.referer, out);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(line.user_agent, out);
    out.extend_from_slice(b"}\n");
}

/// Appends `line` in the combined format, Fulcrum's fields after it, and a
/// newline:
///
/// `client - - [time] "method target protocol" status bytes "referer"
/// "user_agent" duration_s upstream upstream_time_s retries "request_id" "route"`
pub fn combined(line: &Line<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", line.client);
    clf_time(line.time, out);
    out.extend_from_slice(b"] \"");
    clf_escape(line.method.as_bytes(), out);
    out.push(b' ');
    clf_escape(line.target.as_bytes(), out);
    out.push(b' ');
    clf_escape(line.protocol.as_bytes(), out);
    let _ = write!(out, "\" {} {} ", line.status, line.body_bytes);
    clf_quoted(line.referer, out);
    out.push(b' ');
    clf_quoted(line.user_agent, out);
    out.push(b' ');
    seconds(line.duration, out);
    out.push(b' ');
    match line.upstream {
        Some(addr) => clf_escape(addr.as_bytes(), out),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match line.upstream_time {
        Some(t) => seconds(t, out),
        None => out.push(b'-'),
    }
    let _ = write!(out, " {} ", line.retries);
    clf_quoted(Some(line.request_id), out);
    out.push(b' ');
    clf_quoted(line.route.map(str::as_bytes), out);
    out.push(b'\n');
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(d: Duration, out: &mut Vec<u8>) {
    let micros = d.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

/// Seconds with millisecond precision, as nginx's `$request_time`: `0.012`.
fn seconds(d: Duration, out: &mut Vec<u8>) {
    let ms = d.as_millis();
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

fn json_opt(value: Option<&[u8]>, out: &mut Vec<u8>) {
    match value {
        Some(v) => json_str(v, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string (RFC 8259 §7). Bytes that are not UTF-8 (header values may
/// carry any octet) become U+FFFD, so every line is valid JSON.
fn json_str(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let escaped: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => {
                    out.extend_from_slice(&valid[start..i]);
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            out.extend_from_slice(&valid[start..i]);
            out.extend_from_slice(escaped);
            start = i + 1;
        }
        out.extend_from_slice(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

/// `"value"` escaped as nginx does, or `"-"` when absent.
fn clf_quoted(value: Option<&[u8]>, out: &mut Vec<u8>) {
    out.push(b'"');
    match value {
        Some(v) => clf_escape(v, out),
        None => out.push(b'-'),
    }
    out.push(b'"');
}

/// Escapes `"`, `\`, control characters and non-ASCII bytes as `\xHH`
/// (nginx's `escape=default`), so a field can never end its quotes early
/// or split the line.
fn clf_escape(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(b"\\x");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A UTC calendar time, to the millisecond.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Civil {
    fn from(time: SystemTime) -> Civil {
        // Before 1970 only with a broken clock; 1970 is as good as any.
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let days = (secs / 86_400) as i64;
        let of_day = (secs % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millis: since.subsec_millis(),
        }
    }
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01, in the
/// proleptic Gregorian calendar: days are shifted to start at 0000-03-01 so
/// that the leap day ends each 400-year era's years.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2024-05-01T12:00:00.123Z`
fn rfc3339_millis(time: SystemTime, out: &mut Vec<u8>) {
    let c = Civil::from(time);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    );
}

/// `01/May/2024:12:00:00 +0000` (Common Log Format, in UTC).
fn clf_time(time: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::from(time);
    let month = MONTHS[(c.month as usize).clamp(1, 12) - 1];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    fn sample() -> Line<'static> {
        Line {
            time: at(1_700_000_000, 42),
            client: "192.0.2.7".parse().unwrap(),
            method: "GET",
            target: "/api/users?id=7",
            protocol: "HTTP/1.1",
            status: 200,
            body_bytes: 1234,
            duration: Duration::from_micros(12_345),
            upstream: Some("127.0.0.1:9001"),
            upstream_time: Some(Duration::from_micros(9_870)),
            retries: 1,
            request_id: b"abc-123",
            route: Some("api"),
            referer: None,
            user_agent: Some(b"curl/8.5.0"),
        }
    }

    #[test]
    fn calendar_dates_are_right_at_the_edges() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
        assert_eq!(
            Civil::from(at(1_700_000_000, 42)),
            Civil {
                year: 2023,
                month: 11,
                day: 14,
                hour: 22,
                minute: 13,
                second: 20,
                millis: 42
            }
        );
    }

    #[test]
    fn json_line_has_every_field() {
        let mut out = Vec::new();
        json(&sample(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"time\":\"2023-11-14T22:13:20.042Z\",\"client\":\"192.0.2.7\",\"method\":\"GET\",\
             \"path\":\"/api/users?id=7\",\"protocol\":\"HTTP/1.1\",\"status\":200,\"bytes\":1234,\
             \"duration_ms\":12.345,\"upstream\":\"127.0.0.1:9001\",\"upstream_time_ms\":9.870,\
             \"retries\":1,\"request_id\":\"abc-123\",\"route\":\"api\",\"referer\":null,\
             \"user_agent\":\"curl/8.5.0\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["duration_ms"], 12.345);
    }

    #[test]
    fn json_absent_values_are_null() {
        let line = Line {
            upstream: None,
            upstream_time: None,
            route: None,
            user_agent: None,
            ..sample()
        };
        let mut out = Vec::new();
        json(&line, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in ["upstream", "upstream_time_ms", "route", "referer", "user_agent"] {
            assert!(parsed[key].is_null(), "{key}: {parsed}");
        }
    }

    #[test]
    fn combined_line_matches_the_documented_layout() {
        let mut out = Vec::new();
        combined(&sample(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] \"GET /api/users?id=7 HTTP/1.1\" 200 1234 \
             \"-\" \"curl/8.5.0\" 0.012 127.0.0.1:9001 0.009 1 \"abc-123\" \"api\"\n"
        );
        let line = Line {
            upstream: None,
            upstream_time: None,
            route: None,
            ..sample()
        };
        let mut out = Vec::new();
        combined(&line, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(" 0.012 - - 1 \"abc-123\" \"-\"\n"), "{text}");
    }

    #[test]
    fn hostile_values_cannot_break_a_combined_line() {
        let line = Line {
            target: "/a\"b\\c",
            user_agent: Some(b"evil\"\n\x00\xff agent"),
            ..sample()
        };
        let mut out = Vec::new();
        combined(&line, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.contains("\"GET /a\\x22b\\x5Cc HTTP/1.1\""), "{text}");
        assert!(text.contains("\"evil\\x22\\x0A\\x00\\xFF agent\""), "{text}");
    }

    proptest! {
        #[test]
        fn json_lines_always_parse_and_keep_text(
            target in ".*",
            agent in proptest::collection::vec(any::<u8>(), 0..64),
            id in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let line = Line {
                target: &target,
                user_agent: Some(&agent),
                request_id: &id,
                ..sample()
            };
            let mut out = Vec::new();
            json(&line, &mut out);
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(parsed["path"].as_str().unwrap(), target.as_str());
            prop_assert_eq!(parsed["user_agent"].as_str().unwrap(), String::from_utf8_lossy(&agent));
        }

        #[test]
        fn combined_lines_stay_one_printable_line(agent in proptest::collection::vec(any::<u8>(), 0..64)) {
            let line = Line { user_agent: Some(&agent), ..sample() };
            let mut out = Vec::new();
            combined(&line, &mut out);
            let (last, body) = out.split_last().unwrap();
            prop_assert_eq!(*last, b'\n');
            prop_assert!(body.iter().all(|b| (0x20..0x7f).contains(b)));
            // Exactly the quotes of the layout: method line, referer, agent, id, route.
            prop_assert_eq!(body.iter().filter(|b| **b == b'"').count(), 10);
        }
    }
}
