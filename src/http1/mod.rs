//! What our two HTTP/1.1 codecs share on the way in: the server codec
//! (`server/h1`, request bodies from clients) and the upstream client
//! (`upstream/h1`, response bodies from servers) decode bodies with the same
//! pieces, so both directions accept exactly the same framing, read field
//! names and the `Connection` field the same way, and build their header
//! maps from the same spares.

pub mod chunked;

use std::cell::RefCell;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, InvalidHeaderName};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::proxy::headers::{self as proxy_headers, hop_by_hop_index};

/// A field name as read off the wire. The names nearly every message
/// carries are found by their length and at most three 8-byte words,
/// lowercased together (a third of what `HeaderName::from_bytes` costs: it
/// lowercases byte by byte into a buffer, then matches the result against
/// every standard name of that length). The forwarding names are found here
/// too, so a request carrying them allocates no name of its own. Any other
/// name goes to `from_bytes`.
pub fn field_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let len = raw.len();
    if !(4..=24).contains(&len) {
        return HeaderName::from_bytes(raw);
    }
    let words = read_words(raw);
    let known: &[(HeaderName, [u64; 3])] = match raw.len() {
        4 => &KNOWN_4,
        6 => &KNOWN_6,
        7 => &KNOWN_7,
        9 => &KNOWN_9,
        10 => &KNOWN_10,
        12 => &KNOWN_12,
        13 => &KNOWN_13,
        14 => &KNOWN_14,
        15 => &KNOWN_15,
        16 => &KNOWN_16,
        17 => &KNOWN_17,
        _ => &[],
    };
    for (name, key) in known {
        if *key == words {
            return Ok(name.clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// `name_words` of a name 4 to 24 bytes long, with whole-word loads
/// instead of its byte loop.
#[inline]
fn read_words(raw: &[u8]) -> [u64; 3] {
    let len = raw.len();
    let load = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or_default());
    if len >= 8 {
        let middle = if len > 16 { lowercase(load(8)) } else { 0 };
        [
            lowercase(load(0)),
            if len > 8 { lowercase(load(len - 8)) } else { 0 },
            middle,
        ]
    } else {
        // Two overlapping 4-byte loads: the bytes in order, zeros above.
        let half = |at: usize| u64::from(u32::from_le_bytes(raw[at..at + 4].try_into().unwrap_or_default()));
        [lowercase(half(0) | half(len - 4) << ((len - 4) * 8)), 0, 0]
    }
}

/// `raw` (4 to 24 bytes) as three words, each byte lowercased: its first
/// eight bytes, its last eight when longer, and bytes 8..16 when longer
/// than 16. Two names of one length have the same words only if they are
/// the same name but for case.
const fn name_words(raw: &[u8]) -> [u64; 3] {
    let len = raw.len();
    let first = word_at(raw, 0, if len < 8 { len } else { 8 });
    let last = if len > 8 { word_at(raw, len - 8, 8) } else { 0 };
    let middle = if len > 16 { word_at(raw, 8, 8) } else { 0 };
    [lowercase(first), lowercase(last), lowercase(middle)]
}

const fn word_at(raw: &[u8], at: usize, len: usize) -> u64 {
    let mut bytes = [0u8; 8];
    let mut i = 0;
    while i < len {
        bytes[i] = raw[at + i];
        i += 1;
    }
    u64::from_le_bytes(bytes)
}

/// Each byte of `word` ASCII-lowercased, all eight at once: a byte gets
/// 0x20 added exactly when it is in `A..=Z` (its top bit clear, at least
/// 0x41 and below 0x5B; the sums below never carry into the next byte).
const fn lowercase(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = ONES * 0x80;
    let low7 = word & !TOPS;
    let at_least_a = low7 + ONES * (0x80 - b'A' as u64);
    let past_z = low7 + ONES * (0x80 - (b'Z' as u64 + 1));
    let upper = at_least_a & !past_z & !word & TOPS;
    word | (upper >> 2)
}

macro_rules! known_names {
    ($($table:ident = [$($name:expr => $text:literal),+ $(,)?];)+) => {$(
        static $table: [(HeaderName, [u64; 3]); [$($text),+].len()] = [$(($name, name_words($text.as_bytes()))),+];
    )+};
}

// Most frequent first within a length; a test checks each text is its name.
known_names! {
    KNOWN_4 = [header::HOST => "host", header::DATE => "date", header::VARY => "vary", header::ETAG => "etag"];
    KNOWN_6 = [
        header::ACCEPT => "accept",
        header::SERVER => "server",
        header::COOKIE => "cookie",
        header::ORIGIN => "origin",
        header::EXPECT => "expect",
    ];
    KNOWN_7 = [header::REFERER => "referer", header::UPGRADE => "upgrade", header::EXPIRES => "expires"];
    KNOWN_9 = [proxy_headers::X_REAL_IP => "x-real-ip"];
    KNOWN_10 = [
        header::CONNECTION => "connection",
        header::USER_AGENT => "user-agent",
        header::SET_COOKIE => "set-cookie",
    ];
    KNOWN_12 = [header::CONTENT_TYPE => "content-type", proxy_headers::X_REQUEST_ID => "x-request-id"];
    KNOWN_13 = [
        header::CACHE_CONTROL => "cache-control",
        header::LAST_MODIFIED => "last-modified",
        header::AUTHORIZATION => "authorization",
        header::ACCEPT_RANGES => "accept-ranges",
        header::IF_NONE_MATCH => "if-none-match",
    ];
    KNOWN_14 = [header::CONTENT_LENGTH => "content-length"];
    KNOWN_15 = [
        header::ACCEPT_ENCODING => "accept-encoding",
        header::ACCEPT_LANGUAGE => "accept-language",
        proxy_headers::X_FORWARDED_FOR => "x-forwarded-for",
    ];
    KNOWN_16 = [header::CONTENT_ENCODING => "content-encoding", proxy_headers::X_FORWARDED_HOST => "x-forwarded-host"];
    KNOWN_17 = [
        header::TRANSFER_ENCODING => "transfer-encoding",
        header::IF_MODIFIED_SINCE => "if-modified-since",
        proxy_headers::X_FORWARDED_PROTO => "x-forwarded-proto",
    ];
}

/// Header maps most spared per worker, and the largest one kept.
const SPARE_MAPS: usize = 32;
const SPARE_MAP_MAX_FIELDS: usize = 64;

thread_local! {
    /// Emptied header maps of finished messages, ready for the next ones.
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map for a message being read, with room for at least
/// `fields`: a spare one when this worker has one. Making a map costs two
/// allocations (and dropping one two frees) per message each way.
pub fn header_map(fields: usize) -> HeaderMap {
    let spare = SPARE.with(|spare| spare.borrow_mut().pop());
    match spare {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives a message's header map back once the message is done with, for
/// `header_map` to hand out again. Fields are dropped now, their memory kept.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_MAX_FIELDS {
        return;
    }
    map.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// What the `Connection` fields of a message said (RFC 9110 §7.6.1).
#[derive(Debug, Default)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Fields it names beyond the fixed hop-by-hop list, which go with the
    /// connection too (rare: allocates only then).
    pub named: Vec<HeaderName>,
}

impl ConnectionOptions {
    /// Adds the options of one `Connection` field.
    pub fn read(&mut self, value: &HeaderValue) {
        // Nearly always one option: no splitting and trimming for it, and
        // a case-blind comparison a word at a time.
        const KEEP_ALIVE: [u64; 3] = name_words(b"keep-alive");
        const CLOSE: [u64; 3] = name_words(b"close");
        let whole = value.as_bytes();
        if whole.len() == 10 && read_words(whole) == KEEP_ALIVE {
            self.keep_alive = true;
            return;
        }
        if whole.len() == 5 && read_words(whole) == CLOSE {
            self.close = true;
            return;
        }
        for option in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if let Ok(named) = field_name(option)
                && hop_by_hop_index(&named).is_none()
            {
                self.named.push(named);
            }
        }
    }
}

/// Counts the `n` bytes one vectored write took of `head_left` bytes of a
/// head, then `body`, then `tail` (the way both codecs write: head, body
/// data, the CRLF after a chunk) off them: `body` and `tail` are advanced
/// past what went, and how much of the head went is returned.
pub fn advance_written(mut n: usize, head_left: usize, body: &mut Bytes, tail: &mut &'static [u8]) -> usize {
    let from_head = n.min(head_left);
    n -= from_head;
    let from_body = n.min(body.len());
    body.advance(from_body);
    n -= from_body;
    *tail = &tail[n.min(tail.len())..];
    from_head
}

/// What one step of decoding a body gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body has ended; what is left in the buffer is not part of it.
    Done,
}

/// Splits up to `left` bytes of body off the front of `buf`, without a
/// copy, and counts them off `left`; `None` when `buf` is empty.
// Inlined: it is on the path of every body.
#[inline(always)]
pub fn split_counted(left: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// Feeds `raw` to `decode` in pieces of `step` bytes, as reads would bring
/// it, until the body ends or `raw` runs out: the body, and how many bytes
/// of `raw` it took (`None` when it never ended).
#[cfg(test)]
pub(crate) fn feed_in_pieces<E>(
    raw: &[u8],
    step: usize,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Decoded, E>,
) -> Result<(Vec<u8>, Option<usize>), E> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Done => return Ok((body, Some(fed - buf.len()))),
            Decoded::NeedMore if fed == raw.len() => return Ok((body, None)),
            Decoded::NeedMore => {
                let n = step.max(1).min(raw.len() - fed);
                buf.extend_from_slice(&raw[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name spelled as clients spell them: lower, upper, and each
    /// word capitalised.
    fn spellings(name: &str) -> [String; 3] {
        let capitalised = name
            .split('-')
            .map(|word| {
                let mut word = word.to_string();
                word[..1].make_ascii_uppercase();
                word
            })
            .collect::<Vec<_>>()
            .join("-");
        [name.to_string(), name.to_ascii_uppercase(), capitalised]
    }

    #[test]
    fn field_names_read_the_same_as_from_bytes() {
        let names = [
            "host",
            "date",
            "vary",
            "etag",
            "accept",
            "server",
            "cookie",
            "origin",
            "expect",
            "referer",
            "upgrade",
            "expires",
            "x-real-ip",
            "connection",
            "user-agent",
            "set-cookie",
            "content-type",
            "x-request-id",
            "cache-control",
            "last-modified",
            "authorization",
            "accept-ranges",
            "if-none-match",
            "content-length",
            "accept-encoding",
            "accept-language",
            "x-forwarded-for",
            "content-encoding",
            "x-forwarded-host",
            "transfer-encoding",
            "if-modified-since",
            "x-forwarded-proto",
            // Not in the short lists: `from_bytes` reads them.
            "te",
            "x-custom",
            "hosts",
            "x-real-ip2",
            "content-lengtx",
            "keep-alive",
            "x-forwarded-port",
            "sec-websocket-key",
            "a",
            "0-9_~!",
        ];
        for name in names {
            for spelled in spellings(name) {
                let read = field_name(spelled.as_bytes()).unwrap();
                assert_eq!(read, HeaderName::from_bytes(spelled.as_bytes()).unwrap(), "{spelled}");
                assert_eq!(read.as_str(), name, "{spelled}");
            }
        }
        for bad in [&b""[..], b"ho st", b"host:", b"x\r", b"c\xc3\xa9"] {
            assert!(field_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_short_list_entry_is_its_name() {
        let tables: [&[(HeaderName, [u64; 3])]; 11] = [
            &KNOWN_4, &KNOWN_6, &KNOWN_7, &KNOWN_9, &KNOWN_10, &KNOWN_12, &KNOWN_13, &KNOWN_14, &KNOWN_15, &KNOWN_16,
            &KNOWN_17,
        ];
        for (name, key) in tables.iter().flat_map(|t| t.iter()) {
            assert_eq!(*key, name_words(name.as_str().as_bytes()), "{name}");
        }
    }

    #[test]
    fn words_are_read_as_the_short_lists_were_made() {
        let mut rng = fastrand::Rng::with_seed(3);
        for len in 4..=24 {
            for _ in 0..200 {
                let raw: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                assert_eq!(read_words(&raw), name_words(&raw), "{raw:?}");
            }
        }
    }

    #[test]
    fn lowercasing_eight_bytes_at_once_is_exact() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut bytes = [b'x'; 8];
                bytes[at] = b;
                let mut want = bytes;
                want.make_ascii_lowercase();
                assert_eq!(
                    lowercase(u64::from_le_bytes(bytes)),
                    u64::from_le_bytes(want),
                    "{b:#x} at {at}"
                );
            }
        }
    }

    #[test]
    fn any_bytes_read_as_from_bytes_reads_them() {
        // Known names with a byte or two changed to anything: near misses,
        // other cases, and invalid bytes must all read as `from_bytes` says.
        let mut rng = fastrand::Rng::with_seed(7);
        let known = [
            "content-length",
            "x-forwarded-proto",
            "host",
            "transfer-encoding",
            "x-request-id",
        ];
        for _ in 0..20_000 {
            let mut raw = known[rng.usize(..known.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..=2) {
                let at = rng.usize(..raw.len());
                raw[at] = match rng.u8(..4) {
                    0 => rng.u8(..),
                    1 => raw[at].to_ascii_uppercase(),
                    2 => raw[at] ^ 0x20,
                    _ => b'-',
                };
            }
            match (field_name(&raw), HeaderName::from_bytes(&raw)) {
                (Ok(read), Ok(want)) => assert_eq!(read, want, "{raw:?}"),
                (Err(_), Err(_)) => {}
                (read, want) => panic!("{raw:?}: {read:?} but from_bytes gives {want:?}"),
            }
        }
    }

    #[test]
    fn spare_header_maps_come_back_empty_with_room() {
        let mut map = header_map(4);
        map.insert(header::HOST, HeaderValue::from_static("a"));
        map.append(header::ACCEPT, HeaderValue::from_static("b"));
        recycle(map);
        let again = header_map(40);
        assert!(again.is_empty());
        assert!(again.capacity() >= 40);
        // Maps grown past the limit are let go, not kept for ever.
        let mut big = header_map(0);
        for i in 0..200 {
            big.insert(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        recycle(big);
        assert!(header_map(0).capacity() <= SPARE_MAP_MAX_FIELDS);
    }

    #[test]
    fn connection_options_are_read_whole_or_listed() {
        let read = |value: &'static str| {
            let mut options = ConnectionOptions::default();
            options.read(&HeaderValue::from_static(value));
            options
        };
        assert!(read("Keep-Alive").keep_alive);
        assert!(read("close").close);
        let listed = read("keep-alive, Upgrade, x-trace , close");
        assert!(listed.keep_alive && listed.upgrade && listed.close);
        assert_eq!(listed.named, [HeaderName::from_static("x-trace")]);
        assert!(read("te, keep-alive-ish").named == [HeaderName::from_static("keep-alive-ish")]);
    }

    #[test]
    fn a_short_write_is_counted_off_head_then_body_then_tail() {
        let (head, body, tail) = (5, &b"0123456789"[..], &b"\r\n"[..]);
        for n in 0..=head + body.len() + tail.len() {
            let (mut b, mut t) = (Bytes::from_static(body), tail);
            let from_head = advance_written(n, head, &mut b, &mut t);
            let mut rest = vec![b'h'; head - from_head];
            rest.extend_from_slice(&b);
            rest.extend_from_slice(t);
            let mut all = vec![b'h'; head];
            all.extend_from_slice(body);
            all.extend_from_slice(tail);
            assert_eq!(rest, &all[n..], "after {n} bytes");
        }
    }
}
