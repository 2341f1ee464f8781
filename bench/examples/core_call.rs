//! The sans-IO core handling complete calls, for instruction counting.
//!
//! One call is what siplb sees of a SIPp-style call through a record-routing
//! proxy: INVITE (client) → 100 (local) → INVITE relayed; 100, 180, 200 from
//! the backend relayed; ACK and BYE from the client relayed along the
//! Record-Route; 200 to the BYE relayed back. Seven datagrams in, seven out
//! (the backend's 100 is absorbed). A virtual clock moves 1 ms per call and
//! timers fire as they fall due, so finished transactions linger and expire
//! as in a real run at 1,000 calls/s.
//!
//! ```text
//! cargo build --release -p siplb-bench --example core_call
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/core_call 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/core_call 4000
//! # instructions per call = (I(4000) - I(2000)) / 2000; perf/core-instructions.sh does this
//! ```
//! Without valgrind it prints the wall-clock time per call (noisy on a
//! shared machine; use the instruction counts to compare builds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siplb::config::Config;
use siplb::core::{Local, Proxy, Stats};
use siplb::lb::Table;
use siplb_parser::{scan_datagram, HeaderKind};

/// The allocator siplb itself runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = "[server]\nlisten = [\"127.0.0.1:5060\"]\nworkers = 1\ninternal_address = \"127.0.0.1\"\n\
internal_port_base = 5070\n[limits]\nmax_transactions = 200000\n\
[[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:5081\"\nresources = \"pstn=1000\"\n\
[[destinations]]\nid = 2\ngroup = 1\nuri = \"sip:127.0.0.1:5082\"\nresources = \"pstn=1000\"\n\
[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
[[rules]]\nreply = { code = 405 }\n";

const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

const CLIENT: &str = "127.0.0.1:6000";

fn invite(i: u64) -> Vec<u8> {
    format!(
        "INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-{i}-1-0\r\n\
         From: sipp <sip:sipp@127.0.0.1:6000>;tag={i}SIPpTag001\r\nTo: <sip:1000@127.0.0.1:5060>\r\n\
         Call-ID: {i}-4242@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@127.0.0.1:6000>\r\n\
         Max-Forwards: 70\r\nSubject: Performance Test\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

/// An in-dialog request from the client along the route set of the 200.
fn in_dialog(i: u64, method: &str, cseq: u32, route: &[u8], to: &[u8]) -> Vec<u8> {
    format!(
        "{method} sip:1000@127.0.0.1:5081 SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT};branch=z9hG4bK-{i}-{cseq}-{method}\r\n\
         From: sipp <sip:sipp@127.0.0.1:6000>;tag={i}SIPpTag001\r\nTo: {}\r\nCall-ID: {i}-4242@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:sipp@127.0.0.1:6000>\r\nMax-Forwards: 70\r\nRoute: {}\r\n\
         Subject: Performance Test\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(to),
        String::from_utf8_lossy(route)
    )
    .into_bytes()
}

/// The backend's response to a relayed request: its Vias, Record-Route,
/// From, To (with a tag), Call-ID and CSeq echoed, as a UAS does.
fn response(req: &[u8], code: u16, reason: &str, with_body: bool) -> Vec<u8> {
    let m = scan_datagram(req).expect("relayed request scans");
    let mut r = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
    for h in m.headers() {
        let keep = matches!(
            h.kind,
            HeaderKind::Via | HeaderKind::RecordRoute | HeaderKind::From | HeaderKind::CallId | HeaderKind::CSeq
        );
        if keep {
            r.extend_from_slice(h.name);
            r.extend_from_slice(b": ");
            r.extend_from_slice(h.value);
            r.extend_from_slice(b"\r\n");
        } else if h.kind == HeaderKind::To {
            r.extend_from_slice(b"To: ");
            r.extend_from_slice(h.value);
            if code > 100 && !h.value.windows(5).any(|w| w == b";tag=") {
                r.extend_from_slice(b";tag=uas1");
            }
            r.extend_from_slice(b"\r\n");
        }
    }
    r.extend_from_slice(b"Contact: <sip:127.0.0.1:5081>\r\n");
    if with_body {
        r.extend_from_slice(
            format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                SDP.len()
            )
            .as_bytes(),
        );
    } else {
        r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
    r
}

/// What the runtime does with one datagram: hand it to the core, collect
/// what the core sends. Kept out of line so callgrind can count exactly
/// this (`--toggle-collect=*core_datagram*`); the received payloads are freed
/// outside, as the runtime frees them after sending.
#[inline(never)]
fn core_datagram(
    proxy: &mut Proxy,
    now: Instant,
    local: Local,
    from: SocketAddr,
    bytes: &[u8],
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    proxy.handle_datagram(now, local, from, bytes, false);
    while let Some(t) = proxy.poll_transmit() {
        out.push((t.dst, t.payload));
    }
}

/// What the runtime does when the clock moves: fire due timers, send (and
/// here drop) what they produce. Returns the number of datagrams.
#[inline(never)]
fn core_timers(proxy: &mut Proxy, now: Instant) -> usize {
    let mut sent = 0;
    if proxy.poll_timeout().is_some_and(|t| t <= now) {
        proxy.handle_timeout(now);
        while proxy.poll_transmit().is_some() {
            sent += 1;
        }
    }
    sent
}

struct Bench {
    proxy: Proxy,
    now: Instant,
    client: SocketAddr,
    sent: usize,
}

impl Bench {
    fn deliver(&mut self, local: Local, from: SocketAddr, bytes: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::with_capacity(4);
        core_datagram(&mut self.proxy, self.now, local, from, bytes, &mut out);
        self.sent += out.len();
        out
    }

    fn to_backend(out: Vec<(SocketAddr, Vec<u8>)>, client: SocketAddr) -> (SocketAddr, Vec<u8>) {
        out.into_iter()
            .find(|(d, _)| *d != client)
            .expect("the request was relayed to a backend")
    }

    fn call(&mut self, i: u64) {
        let client = self.client;
        let inv = Self::to_backend(self.deliver(Local::Public(0), client, &invite(i)), client);
        let backend = inv.0;
        self.deliver(Local::Internal, backend, &response(&inv.1, 100, "Trying", false));
        self.deliver(Local::Internal, backend, &response(&inv.1, 180, "Ringing", false));
        let ok = response(&inv.1, 200, "OK", true);
        let up = self.deliver(Local::Internal, backend, &ok);
        let ok_up = &up.first().expect("200 relayed to the client").1;
        let m = scan_datagram(ok_up).expect("relayed 200 scans");
        let route = m.record_route_values().next().expect("Record-Route").to_vec();
        let to = m
            .headers()
            .find(|h| h.kind == HeaderKind::To)
            .expect("To")
            .value
            .to_vec();
        self.deliver(Local::Public(0), client, &in_dialog(i, "ACK", 1, &route, &to));
        let bye = Self::to_backend(
            self.deliver(Local::Public(0), client, &in_dialog(i, "BYE", 2, &route, &to)),
            client,
        );
        self.deliver(Local::Internal, backend, &response(&bye.1, 200, "OK", false));
    }

    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        self.sent += core_timers(&mut self.proxy, self.now);
    }
}

fn main() {
    let calls: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let cfg = Arc::new(Config::parse(CONFIG).expect("bench config"));
    let table = Arc::new(Table::new(&cfg.destinations, &cfg.resource_names));
    let stats = Arc::new(Stats::default());
    let proxy = Proxy::new(cfg, table.clone(), stats, 0, 1, 7);
    let mut b = Bench {
        proxy,
        now: Instant::now(),
        client: CLIENT.parse().unwrap(),
        sent: 0,
    };
    let start = Instant::now();
    for i in 0..calls {
        b.call(i);
        b.tick();
    }
    let elapsed = start.elapsed();
    assert_eq!(table.total_load(), 0, "every call released its load");
    assert_eq!(b.proxy.dialogs(), 0);
    println!(
        "{calls} calls, {} datagrams sent, {:.0} ns/call (includes building the test messages)",
        b.sent,
        elapsed.as_nanos() as f64 / calls as f64
    );
}
