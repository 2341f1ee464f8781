//! Deterministic simulation of UAC ↔ (record-routing proxy) ↔ UAS with a
//! virtual clock and a lossy network, exercising the state machines
//! without sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use siplb_parser::{scan_datagram, Method};

use crate::sip;
use crate::stats::Latency;
use crate::uac::{Uac, UacConfig};
use crate::uas::{Uas, UasConfig};

const UAC: &str = "10.0.0.1:5060";
const UAS: &str = "10.0.0.2:5060";
const PROXY: &str = "10.0.0.3:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

type Filter = Box<dyn FnMut(SocketAddr, &[u8]) -> bool>;

struct Net {
    uac: Uac,
    uas: Uas,
    now: Instant,
    /// Returns false to drop a datagram (given its destination).
    filter: Filter,
    /// Requests the proxy relayed: (method, request-uri).
    proxied: Vec<(String, String)>,
    delivered: Vec<(SocketAddr, String)>,
}

fn first_line(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == b'\r').unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Net {
    fn new(mut uac: UacConfig, uas: UasConfig, proxy: bool) -> Net {
        if proxy {
            uac.target = addr(PROXY);
        }
        Net {
            uac: Uac::new(uac),
            uas: Uas::new(uas),
            now: Instant::now(),
            filter: Box::new(|_, _| true),
            proxied: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn collect(&mut self, q: &mut VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>) {
        for (dst, b) in self.uac.outbox().iter() {
            q.push_back((addr(UAC), dst, b.to_vec()));
        }
        self.uac.outbox().clear();
        for (dst, b) in self.uas.outbox().iter() {
            q.push_back((addr(UAS), dst, b.to_vec()));
        }
        self.uas.outbox().clear();
    }

    fn deliver(&mut self) {
        let mut q = VecDeque::new();
        self.collect(&mut q);
        while let Some((src, dst, bytes)) = q.pop_front() {
            if !(self.filter)(dst, &bytes) {
                continue;
            }
            if dst == addr(PROXY) {
                if let Some((next, b)) = self.proxy(&bytes) {
                    q.push_back((addr(PROXY), next, b));
                }
                continue;
            }
            self.delivered.push((dst, first_line(&bytes)));
            if dst == addr(UAC) {
                self.uac.handle_datagram(self.now, src, &bytes);
            } else if dst == addr(UAS) {
                self.uas.handle_datagram(self.now, src, &bytes);
            }
            self.collect(&mut q);
        }
    }

    /// A minimal record-routing proxy.
    fn proxy(&mut self, bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let text = String::from_utf8(bytes.to_vec()).ok()?;
        let msg = scan_datagram(bytes).ok()?;
        let line_end = text.find("\r\n")? + 2;
        if msg.is_request() {
            let method = msg.method()?;
            let ruri = String::from_utf8_lossy(msg.request_uri()?).into_owned();
            self.proxied
                .push((first_line(bytes).split(' ').next()?.to_string(), ruri.clone()));
            let own_route = format!("Route: <sip:{PROXY};lr>\r\n");
            let in_dialog = text.contains(&own_route);
            let text = text.replacen(&own_route, "", 1);
            let branch = String::from_utf8_lossy(msg.top_via().branch?).into_owned();
            let mut extra = format!("Via: SIP/2.0/UDP {PROXY};branch=z9hG4bK-p{branch}\r\n");
            if method == Method::Invite {
                extra.push_str(&format!("Record-Route: <sip:{PROXY};lr>\r\n"));
            }
            let next = if in_dialog {
                sip::uri_addr(ruri.as_bytes())?
            } else {
                addr(UAS)
            };
            let out = format!("{}{}{}", &text[..line_end], extra, &text[line_end..]);
            Some((next, out.into_bytes()))
        } else {
            let next = msg.vias().nth(1)?;
            let next: SocketAddr = format!("{}:{}", String::from_utf8_lossy(next.host), next.port?)
                .parse()
                .ok()?;
            let start = text.find("Via: ")?;
            let end = start + text[start..].find("\r\n")? + 2;
            let out = format!("{}{}", &text[..start], &text[end..]);
            Some((next, out.into_bytes()))
        }
    }

    /// Delivers and runs timers until nothing is left before `until`.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.deliver();
            let next = [self.uac.poll_timeout(), self.uas.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.uac.handle_timeout(self.now);
                    self.uas.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn start(&mut self, calls: usize, spacing: Duration) {
        for _ in 0..calls {
            self.uac.start_call(self.now);
            self.run_for(spacing);
        }
    }
}

fn configs() -> (UacConfig, UasConfig) {
    let mut c = UacConfig::new(addr(UAS), addr(UAC));
    c.hold = Duration::from_millis(100);
    (c, UasConfig::new(addr(UAS)))
}

#[test]
fn full_calls_direct() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, false);
    net.start(10, Duration::from_millis(10));
    net.run_for(Duration::from_secs(2));
    let st = net.uac.stats();
    assert_eq!((st.calls_started, st.calls_succeeded, st.calls_failed), (10, 10, 0));
    assert_eq!(st.percentiles(Latency::InviteTo100).count, 10);
    assert_eq!(st.percentiles(Latency::InviteTo180).count, 10);
    assert_eq!(st.percentiles(Latency::InviteTo200).count, 10);
    assert_eq!(st.percentiles(Latency::ByeTo200).count, 10);
    assert_eq!(st.retransmissions, 0);
    let us = net.uas.stats();
    assert_eq!((us.calls_started, us.calls_succeeded, us.calls_failed), (10, 10, 0));
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn ended_calls_reuse_their_records() {
    let (mut c, s) = configs();
    c.hold = Duration::ZERO;
    let mut net = Net::new(c, s, false);
    net.start(1000, Duration::from_millis(1));
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.uac.stats().calls_succeeded, 1000);
    assert!(net.uac.slab_capacity() <= 2, "{}", net.uac.slab_capacity());
}

#[test]
fn full_calls_through_record_routing_proxy() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, true);
    net.start(3, Duration::from_millis(10));
    net.run_for(Duration::from_secs(2));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.calls_failed), (3, 0), "{:?}", net.delivered);
    let methods: Vec<&str> = net.proxied.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods.iter().filter(|m| **m == "ACK").count(), 3);
    assert_eq!(methods.iter().filter(|m| **m == "BYE").count(), 3);
    // In-dialog requests go to the UAS's Contact.
    for (m, uri) in &net.proxied {
        if m == "BYE" {
            assert_eq!(uri, &format!("sip:sipload@{UAS}"));
        }
    }
    assert_eq!(net.uas.stats().calls_succeeded, 3);
}

#[test]
fn callee_bye_through_proxy() {
    let (mut c, mut s) = configs();
    c.hold = Duration::from_secs(10);
    s.bye_after = Some(Duration::from_millis(50));
    let mut net = Net::new(c, s, true);
    net.start(4, Duration::from_millis(5));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.uac.stats().calls_succeeded, 4);
    assert_eq!(net.uas.stats().calls_succeeded, 4);
    assert_eq!(net.uas.stats().percentiles(Latency::ByeTo200).count, 4);
    let byes: Vec<_> = net.proxied.iter().filter(|(m, _)| m == "BYE").collect();
    assert_eq!(byes.len(), 4);
    assert!(byes.iter().all(|(_, u)| u == &format!("sip:sipload@{UAC}")));
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn failure_ratio_counts_exactly() {
    let (c, mut s) = configs();
    s.failure_ratio = 0.25;
    s.failure_code = 503;
    let mut net = Net::new(c, s, false);
    net.start(20, Duration::from_millis(1));
    net.run_for(Duration::from_secs(2));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.calls_failed), (15, 5));
    assert_eq!(st.failures_by_reason()["unexpected_code_503"], 5);
    let us = net.uas.stats();
    assert_eq!((us.calls_succeeded, us.calls_rejected, us.calls_failed), (20, 5, 0));
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn no_answer_times_out_and_cancels() {
    let (mut c, mut s) = configs();
    c.answer_timeout = Duration::from_secs(1);
    s.no_answer = true;
    let mut net = Net::new(c, s, false);
    net.start(5, Duration::from_millis(1));
    net.run_for(Duration::from_secs(3));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.calls_failed), (0, 5));
    assert_eq!(st.failures_by_reason()["timeout"], 5);
    let us = net.uas.stats();
    assert_eq!((us.calls_cancelled, us.calls_failed), (5, 0));
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn cancel_during_ringing() {
    let (mut c, mut s) = configs();
    c.cancel_ratio = 0.5;
    c.cancel_after = Duration::from_millis(10);
    s.ring_delay = Duration::from_millis(500);
    let mut net = Net::new(c, s, true);
    net.start(10, Duration::from_millis(1));
    net.run_for(Duration::from_secs(3));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.calls_cancelled, st.calls_failed), (10, 5, 0));
    let us = net.uas.stats();
    assert_eq!((us.calls_succeeded, us.calls_cancelled, us.calls_failed), (10, 5, 0));
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn retransmissions_recover_lost_messages() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, false);
    // Lose the first INVITE, the first 200 to the INVITE, the first ACK
    // and the first BYE.
    let mut seen = std::collections::HashSet::new();
    net.filter = Box::new(move |_, b| {
        let line = first_line(b);
        let key = if line.starts_with("SIP/2.0 200") {
            let m = scan_datagram(b).unwrap();
            format!("200 {}", String::from_utf8_lossy(m.cseq().method.as_bytes()))
        } else {
            line.split(' ').next().unwrap().to_string()
        };
        if ["INVITE", "200 INVITE", "ACK", "BYE"].contains(&key.as_str()) {
            return !seen.insert(key);
        }
        true
    });
    net.start(1, Duration::from_millis(1));
    net.run_for(Duration::from_secs(10));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.calls_failed), (1, 0), "{:?}", net.delivered);
    assert!(st.retransmissions >= 2);
    assert_eq!(net.uas.stats().calls_succeeded, 1);
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn uas_answers_a_retransmitted_invite_with_its_last_response() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, false);
    // Lose the UAS's first 100, 180 and 200: the UAC retransmits the
    // INVITE (Timer A) and the UAS answers it again (and retransmits its
    // 2xx on its own until the ACK).
    let mut lost = 0;
    net.filter = Box::new(move |dst, _| {
        if dst == addr(UAC) && lost < 3 {
            lost += 1;
            return false;
        }
        true
    });
    net.start(1, Duration::from_millis(1));
    net.run_for(Duration::from_secs(5));
    let st = net.uac.stats();
    assert_eq!((st.calls_succeeded, st.retransmissions), (1, 1), "{:?}", net.delivered);
    let us = net.uas.stats();
    // The retransmitted INVITE, and the second ACK (for the second 200).
    assert_eq!((us.calls_succeeded, us.retransmissions_received), (1, 2));
    assert_eq!(us.retransmissions, 1);
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}

#[test]
fn silent_peer_hits_timer_b() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, false);
    net.filter = Box::new(|dst, _| dst != addr(UAS));
    net.start(2, Duration::from_millis(1));
    net.run_for(Duration::from_secs(40));
    let st = net.uac.stats();
    assert_eq!(st.failures_by_reason()["retransmission_limit"], 2);
    // Timer A: 500 ms doubling until 32 s → 6 retransmissions per call.
    assert_eq!(st.retransmissions, 12);
    assert_eq!(net.uac.active_calls(), 0);
}

#[test]
fn malformed_input_is_counted_not_fatal() {
    let (c, s) = configs();
    let mut net = Net::new(c, s, false);
    let now = net.now;
    for junk in [
        &b""[..],
        b"\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"INVITE x\r\n",
        &[0xff; 300],
    ] {
        net.uac.handle_datagram(now, addr(UAS), junk);
        net.uas.handle_datagram(now, addr(UAC), junk);
    }
    assert_eq!(net.uac.stats().malformed, 5);
    assert_eq!(net.uas.stats().malformed, 5);
}

/// xorshift64*: a seeded, dependency-free generator for loss patterns.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_loss_never_loses_a_call() {
    for seed in 1..=12u64 {
        let (mut c, mut s) = configs();
        c.cancel_ratio = 0.2;
        c.cancel_after = Duration::from_millis(50);
        s.ring_delay = Duration::from_millis(200);
        if seed % 3 == 0 {
            s.bye_after = Some(Duration::from_millis(50));
            c.hold = Duration::from_secs(5);
        }
        let mut net = Net::new(c, s, seed % 2 == 0);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Lose 10 % of all datagrams, in every direction.
        net.filter = Box::new(move |_, _| rng.next() % 10 != 0);
        net.start(100, Duration::from_millis(3));
        net.run_for(Duration::from_secs(120));
        let st = net.uac.stats();
        let (started, ok, failed) = (st.calls_started, st.calls_succeeded, st.calls_failed);
        assert_eq!(started, 100, "seed {seed}");
        assert_eq!((ok, failed), (100, 0), "seed {seed}: {:?}", st.failures_by_reason());
        assert!(st.calls_cancelled <= 20, "seed {seed}");
        assert!(st.retransmissions > 0, "seed {seed}");
        assert_eq!(net.uac.active_calls(), 0, "seed {seed}");
        let us = net.uas.stats();
        assert_eq!(
            (us.calls_started, us.calls_succeeded),
            (100, 100),
            "seed {seed}: {:?}",
            us.failures_by_reason()
        );
        assert_eq!(net.uas.active_calls(), 0, "seed {seed}");
    }
}

#[test]
fn heavy_loss_keeps_the_books_balanced() {
    for seed in 1..=12u64 {
        let (mut c, mut s) = configs();
        c.cancel_ratio = 0.2;
        c.cancel_after = Duration::from_millis(50);
        c.answer_timeout = Duration::from_secs(10);
        s.ring_delay = Duration::from_millis(200);
        let mut net = Net::new(c, s, seed % 2 == 0);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Lose a quarter of all datagrams: some calls fail, by Timer B, F
        // or the answer timeout, and each is counted exactly once.
        net.filter = Box::new(move |_, _| rng.next() % 4 != 0);
        net.start(100, Duration::from_millis(3));
        net.run_for(Duration::from_secs(200));
        let st = net.uac.stats();
        assert_eq!(st.calls_succeeded + st.calls_failed, 100, "seed {seed}");
        for reason in st.failures_by_reason().keys() {
            assert!(
                [
                    "retransmission_limit",
                    "bye_retransmission_limit",
                    "cancel_timeout",
                    "timeout"
                ]
                .contains(&reason.as_str()),
                "seed {seed}: {reason}"
            );
        }
        assert_eq!(net.uac.active_calls(), 0, "seed {seed}");
        assert_eq!(net.uac.pending_outcomes(), 0, "seed {seed}");
        let us = net.uas.stats();
        assert!(us.calls_started <= 100, "seed {seed}");
    }
}

#[test]
fn uas_forgets_a_call_whose_bye_never_arrives() {
    let (c, mut s) = configs();
    s.max_dialog = Duration::from_secs(60);
    let mut net = Net::new(c, s, false);
    net.filter = Box::new(|_, b| !b.starts_with(b"BYE "));
    net.start(3, Duration::from_millis(1));
    net.run_for(Duration::from_secs(70));
    assert_eq!(net.uac.stats().failures_by_reason()["bye_retransmission_limit"], 3);
    assert_eq!(net.uas.stats().failures_by_reason()["bye_timeout"], 3);
    assert_eq!(net.uac.active_calls() + net.uas.active_calls(), 0);
}
