//! A small authoritative DNS server over UDP for tests: it answers `A`
//! queries from a table the test changes while it runs (TTL 1 s), and can be
//! made to answer SERVFAIL or to stop answering. It runs on a thread of its
//! own, so it keeps answering while the test thread blocks (starting the
//! balancer waits for names to resolve).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The TTL of every answer, in seconds.
pub const TTL_SECS: u32 = 1;

const TYPE_A: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_SERVFAIL: u8 = 2;
/// How often the thread looks at the stop flag while no query arrives.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How the server treats queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the table: the addresses of a known name, NXDOMAIN otherwise.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// No answer at all, like a server that is down.
    Silent,
}

#[derive(Debug)]
struct State {
    records: Mutex<HashMap<String, Vec<Ipv4Addr>>>,
    mode: Mutex<Mode>,
    /// Every name asked, in order (lower-case, without the final dot).
    asked: Mutex<Vec<String>>,
    queries: AtomicU64,
    stop: AtomicBool,
}

/// A running test DNS server on 127.0.0.1. Dropping it stops it.
pub struct DnsServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(STOP_CHECK))
            .expect("set the DNS socket's read timeout");
        let addr = socket.local_addr().expect("read the DNS server's address");
        let state = Arc::new(State {
            records: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Answer),
            asked: Mutex::new(Vec::new()),
            queries: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("test-dns".into())
            .spawn({
                let state = state.clone();
                move || serve(&socket, &state)
            })
            .expect("start the test DNS thread");
        DnsServer {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// Makes `name` resolve to `ips` (none: NXDOMAIN).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let name = name.to_ascii_lowercase();
        let mut records = lock(&self.state.records);
        if ips.is_empty() {
            records.remove(&name);
        } else {
            records.insert(name, ips.to_vec());
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Queries received so far, answered or not.
    pub fn queries(&self) -> u64 {
        self.state.queries.load(Ordering::SeqCst)
    }

    /// Every distinct name asked for.
    pub fn names_asked(&self) -> Vec<String> {
        let mut names = lock(&self.state.asked).clone();
        names.sort();
        names.dedup();
        names
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn serve(socket: &UdpSocket, state: &State) {
    let mut buf = [0u8; 1500];
    while !state.stop.load(Ordering::SeqCst) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(query) = Query::parse(&buf[..len]) else {
            continue;
        };
        lock(&state.asked).push(query.name.clone());
        state.queries.fetch_add(1, Ordering::SeqCst);
        let mode = *lock(&state.mode);
        let reply = match mode {
            Mode::Silent => continue,
            Mode::ServFail => query.reply(RCODE_SERVFAIL, &[]),
            Mode::Answer => match lock(&state.records).get(&query.name) {
                Some(ips) if query.qtype == TYPE_A => query.reply(0, ips),
                // The name exists but has no record of this type (AAAA).
                Some(_) => query.reply(0, &[]),
                None => query.reply(RCODE_NXDOMAIN, &[]),
            },
        };
        let _ = socket.send_to(&reply, from);
    }
}

/// The parts of a query a reply needs (RFC 1035 §4.1).
struct Query<'a> {
    packet: &'a [u8],
    /// Where the question section ends.
    question_end: usize,
    name: String,
    qtype: u16,
}

impl<'a> Query<'a> {
    fn parse(packet: &'a [u8]) -> Option<Query<'a>> {
        let is_query = packet.len() > 12 && packet[2] & 0x80 == 0;
        let one_question = packet.get(4..6)? == [0, 1];
        if !is_query || !one_question {
            return None;
        }
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*packet.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None; // compression is not used in questions
            }
            labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        let question_end = at + 4;
        packet.get(question_end - 1)?;
        Some(Query {
            packet,
            question_end,
            name: labels.join("."),
            qtype,
        })
    }

    /// A reply with `rcode` and one A record per address.
    fn reply(&self, rcode: u8, ips: &[Ipv4Addr]) -> Vec<u8> {
        let q = self.packet;
        let mut out = Vec::with_capacity(self.question_end + ips.len() * 16);
        out.extend_from_slice(&q[0..2]); // id
        // QR, the query's opcode, AA, the query's RD; then RA and the rcode.
        out.push(0x80 | (q[2] & 0x78) | 0x04 | (q[2] & 0x01));
        out.push(0x80 | rcode);
        out.extend_from_slice(&[0, 1]); // one question
        out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
        out.extend_from_slice(&q[12..self.question_end]);
        for ip in ips {
            out.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&[0, 1]); // class IN
            out.extend_from_slice(&TTL_SECS.to_be_bytes());
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&ip.octets());
        }
        out
    }
}
