//! Health probing, sans-IO: when to send OPTIONS to whom, and what came of it.
//!
//! A [`Prober`] owns no socket and reads no clock. The runtime's prober
//! thread (its own UDP socket, never a worker's) drives it:
//!
//! ```text
//! loop {
//!     for each datagram on the prober socket:  prober.handle_datagram(now, src, bytes)
//!     if now >= prober.poll_timeout():         prober.handle_timeout(now, &mut |target| wanted?)
//!     while let Some((dst, bytes)) = prober.poll_transmit():  send
//!     while let Some(report) = prober.poll_event():  apply to the destination
//!                                                    (`DestState::probe_result`)
//! }
//! ```
//!
//! # One probe (a non-INVITE client transaction, RFC 3261 §17.1.2)
//! ```text
//! round due, target wanted, none pending --> Trying: OPTIONS sent
//! Trying --retransmit at T1, 2*T1, ... capped at T2--> Trying
//! Trying/Proceeding --1xx--> Proceeding (retransmissions continue at T2)
//! Trying/Proceeding --final reply--> done: Ok(code) or Failed(code)
//! Trying/Proceeding --timeout--> done: Timeout
//! ```
//! A round starts every `interval`; a target whose previous probe is still
//! pending is skipped in that round. Which targets are wanted is the
//! caller's answer (`probe_mode` and the destination's status, see
//! [`crate::lb::DestState::wants_probe`]), asked at each round.
//!
//! What counts as success: 200, any other final reply below 400, and the
//! configured extra codes; a final reply >= 400 otherwise, or no final reply
//! within `timeout`, is a failure. Replies are matched by the Via branch
//! (unique per probe); anything else is ignored and counted in
//! [`Prober::ignored`].

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use siplb_parser::{scan_datagram, Method};

use crate::lb::ProbeResult;

/// What to probe: a destination's id, address and URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Destination id.
    pub id: u32,
    /// Where the OPTIONS goes.
    pub addr: SocketAddr,
    /// Request-URI of the OPTIONS (the destination's URI).
    pub uri: String,
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Destination id.
    pub id: u32,
    /// Its address when probed (tells a destination apart from a
    /// reloaded one with the same id and another address).
    pub addr: SocketAddr,
    /// What came of it.
    pub result: ProbeResult,
}

/// Probing parameters.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Between rounds.
    pub interval: Duration,
    /// A probe with no final reply after this failed.
    pub timeout: Duration,
    /// First retransmission interval.
    pub t1: Duration,
    /// Retransmission interval cap.
    pub t2: Duration,
    /// From URI.
    pub from: String,
    /// Codes accepted besides 200 and the codes below 400.
    pub reply_codes: Vec<u16>,
}

impl Settings {
    /// From the configuration.
    pub fn from_config(c: &crate::config::Config) -> Settings {
        Settings {
            interval: c.probing.interval,
            timeout: c.probing.timeout,
            t1: c.timers.t1,
            t2: c.timers.t2,
            from: c.probing.from.clone(),
            reply_codes: c.probing.reply_codes.clone(),
        }
    }

    fn accepts(&self, code: u16) -> bool {
        code < 400 || self.reply_codes.contains(&code)
    }
}

#[derive(Debug)]
struct Pending {
    id: u32,
    addr: SocketAddr,
    branch: String,
    request: Vec<u8>,
    retransmit_at: Instant,
    interval: Duration,
    deadline: Instant,
    provisional: bool,
}

/// The probing state machine; see the module docs for the call protocol.
#[derive(Debug)]
pub struct Prober {
    settings: Settings,
    local: SocketAddr,
    targets: Vec<Target>,
    pending: Vec<Pending>,
    next_round: Instant,
    seq: u64,
    tag: u64,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Report>,
    ignored: u64,
}

impl Prober {
    /// A prober sending from `local` (named in its Via). The first round is
    /// due at `now`. `seed` makes branches and Call-IDs differ between runs.
    pub fn new(settings: Settings, local: SocketAddr, now: Instant, seed: u64) -> Prober {
        Prober {
            settings,
            local,
            targets: Vec::new(),
            pending: Vec::new(),
            next_round: now,
            seq: 0,
            tag: seed,
            out: VecDeque::new(),
            events: VecDeque::new(),
            ignored: 0,
        }
    }

    /// Replaces the targets (at start and after a reload). Pending probes
    /// of targets that are gone (by id and address) are forgotten.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        self.pending
            .retain(|p| targets.iter().any(|t| t.id == p.id && t.addr == p.addr));
        self.targets = targets;
    }

    /// The current targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Probes waiting for a final reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Datagrams that matched no pending probe.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// When [`Prober::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        self.pending
            .iter()
            .flat_map(|p| [p.retransmit_at, p.deadline])
            .fold(self.next_round, Instant::min)
    }

    /// Time passed: fails overdue probes, retransmits, and starts a round
    /// when due, probing the targets for which `wanted` says yes.
    pub fn handle_timeout(&mut self, now: Instant, wanted: &mut dyn FnMut(&Target) -> bool) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if now >= p.deadline {
                let p = self.pending.swap_remove(i);
                self.events.push_back(Report {
                    id: p.id,
                    addr: p.addr,
                    result: ProbeResult::Timeout,
                });
                continue;
            }
            if now >= p.retransmit_at {
                p.interval = if p.provisional {
                    self.settings.t2
                } else {
                    (p.interval * 2).min(self.settings.t2)
                };
                p.retransmit_at = now + p.interval;
                self.out.push_back((p.addr, p.request.clone()));
            }
            i += 1;
        }
        if now >= self.next_round {
            // Keep the rhythm; after a long stall, start again from now.
            self.next_round += self.settings.interval;
            if self.next_round <= now {
                self.next_round = now + self.settings.interval;
            }
            let targets = std::mem::take(&mut self.targets);
            for t in &targets {
                if self.pending.iter().any(|p| p.id == t.id && p.addr == t.addr) || !wanted(t) {
                    continue;
                }
                self.start(now, t);
            }
            self.targets = targets;
        }
    }

    fn start(&mut self, now: Instant, t: &Target) {
        self.seq += 1;
        let branch = format!("z9hG4bKslbp{:x}x{:x}", self.tag & 0xffff_ffff, self.seq);
        let request = format!(
            "OPTIONS {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{from}>;tag={tag:x}\r\n\
             To: <{uri}>\r\n\
             Call-ID: {tag:x}-{seq}@siplb.probe\r\n\
             CSeq: {seq} OPTIONS\r\n\
             User-Agent: siplb\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n",
            uri = t.uri,
            local = self.local,
            from = self.settings.from,
            tag = self.tag,
            seq = self.seq,
        )
        .into_bytes();
        self.out.push_back((t.addr, request.clone()));
        self.pending.push(Pending {
            id: t.id,
            addr: t.addr,
            branch,
            request,
            retransmit_at: now + self.settings.t1,
            interval: self.settings.t1,
            deadline: now + self.settings.timeout,
            provisional: false,
        });
    }

    /// A datagram arrived on the prober's socket from `src`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        let _ = (now, src);
        let Ok(m) = scan_datagram(bytes) else {
            self.ignored += 1;
            return;
        };
        let (Some(code), Some(branch)) = (m.status(), m.top_via().branch) else {
            self.ignored += 1;
            return;
        };
        if m.cseq().method != Method::Options {
            self.ignored += 1;
            return;
        }
        let Some(i) = self.pending.iter().position(|p| p.branch.as_bytes() == branch) else {
            self.ignored += 1;
            return;
        };
        if code < 200 {
            let p = &mut self.pending[i];
            p.provisional = true;
            return;
        }
        let p = self.pending.swap_remove(i);
        let result = if self.settings.accepts(code) {
            ProbeResult::Ok(code)
        } else {
            ProbeResult::Failed(code)
        };
        self.events.push_back(Report {
            id: p.id,
            addr: p.addr,
            result,
        });
    }

    /// The next datagram to send: (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next finished probe.
    pub fn poll_event(&mut self) -> Option<Report> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            from: "sip:prober@siplb.test".into(),
            reply_codes: vec![404],
        }
    }

    fn targets() -> Vec<Target> {
        vec![
            Target {
                id: 1,
                addr: "127.0.0.1:5081".parse().unwrap(),
                uri: "sip:127.0.0.1:5081".into(),
            },
            Target {
                id: 2,
                addr: "127.0.0.1:5082".parse().unwrap(),
                uri: "sip:127.0.0.1:5082;transport=udp".into(),
            },
        ]
    }

    fn sent(p: &mut Prober) -> Vec<(SocketAddr, String)> {
        std::iter::from_fn(|| p.poll_transmit())
            .map(|(a, b)| (a, String::from_utf8(b).unwrap()))
            .collect()
    }

    fn reply_to(request: &str, code: u16) -> Vec<u8> {
        let header = |name: &str| request.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        format!(
            "SIP/2.0 {code} Whatever\r\n{}\r\n{}\r\n{};tag=b\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            header("Via:"),
            header("From:"),
            header("To:"),
            header("Call-ID:"),
            header("CSeq:")
        )
        .into_bytes()
    }

    fn all(_: &Target) -> bool {
        true
    }

    fn prober(t0: Instant) -> Prober {
        let mut p = Prober::new(settings(), "127.0.0.1:5099".parse().unwrap(), t0, 7);
        p.set_targets(targets());
        p
    }

    #[test]
    fn a_round_sends_well_formed_options_to_wanted_targets() {
        let t0 = Instant::now();
        let mut p = prober(t0);
        assert_eq!(p.poll_timeout(), t0);
        p.handle_timeout(t0, &mut |t| t.id == 2);
        let out = sent(&mut p);
        assert_eq!(out.len(), 1);
        let (dst, text) = &out[0];
        assert_eq!(*dst, "127.0.0.1:5082".parse().unwrap());
        let m = scan_datagram(text.as_bytes()).expect("the probe scans");
        assert_eq!(m.method(), Some(Method::Options));
        assert_eq!(m.request_uri(), Some(&b"sip:127.0.0.1:5082;transport=udp"[..]));
        assert!(text.contains("From: <sip:prober@siplb.test>;tag="), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK"),
            "{text}"
        );
        assert_eq!(p.pending(), 1);
        // Next round at t0 + interval; first retransmission at T1.
        assert_eq!(p.poll_timeout(), t0 + Duration::from_millis(500));
    }

    #[test]
    fn replies_decide_ok_or_failed() {
        let t0 = Instant::now();
        let mut p = prober(t0);
        p.handle_timeout(t0, &mut all);
        let out = sent(&mut p);
        assert_eq!(out.len(), 2);
        let src = out[0].0;
        // A provisional changes nothing but the retransmission pace.
        p.handle_datagram(t0, src, &reply_to(&out[0].1, 100));
        assert_eq!(p.poll_event(), None);
        p.handle_datagram(t0, src, &reply_to(&out[0].1, 404));
        p.handle_datagram(t0, out[1].0, &reply_to(&out[1].1, 503));
        assert_eq!(
            p.poll_event(),
            Some(Report {
                id: 1,
                addr: src,
                result: ProbeResult::Ok(404)
            })
        );
        assert_eq!(p.poll_event().map(|r| r.result), Some(ProbeResult::Failed(503)));
        assert_eq!(p.pending(), 0);
        // A second copy of the reply matches nothing.
        p.handle_datagram(t0, src, &reply_to(&out[0].1, 200));
        assert_eq!(p.poll_event(), None);
        assert_eq!(p.ignored(), 1);
        p.handle_datagram(t0, src, b"garbage");
        assert_eq!(p.ignored(), 2);
    }

    #[test]
    fn silence_retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut p = prober(t0);
        p.handle_timeout(t0, &mut |t| t.id == 1);
        assert_eq!(sent(&mut p).len(), 1);
        let mut sends = 0;
        let mut now = t0;
        while p.poll_event().is_none() {
            now = p.poll_timeout();
            assert!(now <= t0 + Duration::from_secs(2), "timed out late");
            p.handle_timeout(now, &mut |_| false);
            sends += sent(&mut p).len();
            if p.pending() == 0 {
                break;
            }
        }
        // Retransmissions at 0.5 s and 1.5 s (T1 doubling), timeout at 2 s.
        assert_eq!(sends, 2);
        assert_eq!(now, t0 + Duration::from_secs(2));
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn rounds_follow_the_interval_and_skip_pending_targets() {
        let t0 = Instant::now();
        let mut s = settings();
        s.timeout = Duration::from_secs(25);
        let mut p = Prober::new(s, "127.0.0.1:5099".parse().unwrap(), t0, 1);
        p.set_targets(targets());
        p.handle_timeout(t0, &mut all);
        let first = sent(&mut p);
        assert_eq!(first.len(), 2);
        // Target 1 answers, target 2 stays silent (its probe is pending).
        p.handle_datagram(t0, first[0].0, &reply_to(&first[0].1, 200));
        let t10 = t0 + Duration::from_secs(10);
        p.handle_timeout(t10, &mut all);
        let second: Vec<_> = sent(&mut p)
            .into_iter()
            .filter(|(_, m)| m.contains("CSeq: 3"))
            .collect();
        assert_eq!(second.len(), 1, "only target 1 gets a new probe");
        assert_eq!(second[0].0, first[0].0);
        assert_eq!(p.pending(), 2);
    }

    /// The prober and the destinations' status together, on a virtual
    /// clock: destination 1 answers, stops answering, answers again.
    #[test]
    fn a_silent_destination_goes_down_after_the_threshold_and_comes_back() {
        use crate::config::Config;
        use crate::lb::Table;
        let c = Config::parse(
            "[server]\nlisten = [\"127.0.0.1:5060\"]\n\
             [probing]\ninterval = \"1s\"\ntimeout = \"500ms\"\nthreshold = 2\nrecovery_threshold = 3\n\
             [[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:5081\"\nresources = \"pstn=1\"\nprobe_mode = 2\n",
        )
        .unwrap();
        let table = Table::new(&c.destinations, &c.resource_names);
        let d = &table.destinations()[0];
        let (down, up) = c.probing.thresholds(&d.config);
        let t0 = Instant::now();
        let mut p = Prober::new(Settings::from_config(&c), "127.0.0.1:5099".parse().unwrap(), t0, 3);
        p.set_targets(vec![Target {
            id: 1,
            addr: d.addr(),
            uri: d.config.uri.clone(),
        }]);
        // Answering in rounds 0-1, silent in rounds 2-5, answering from round 6.
        let answers = |round: u32| !(2..6).contains(&round);
        let mut history = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_millis(10_500) {
            p.handle_timeout(now, &mut |_| d.wants_probe());
            let round = (now - t0).as_millis() as u32 / 1000;
            for (dst, text) in sent(&mut p) {
                if answers(round) && text.starts_with("OPTIONS") {
                    p.handle_datagram(now, dst, &reply_to(&text, 200));
                }
            }
            while let Some(r) = p.poll_event() {
                if d.probe_result(r.result, down, up, now).is_some() {
                    history.push((round, d.enabled()));
                }
            }
            now = p.poll_timeout();
        }
        // Down at the 2nd silent round (2, 3), up at the 3rd good one (6, 7, 8).
        assert_eq!(history, vec![(3, false), (8, true)]);
        assert_eq!(d.probes(), [2 + 5, 0, 4], "rounds 0-10: 7 answered, 4 silent");
    }

    #[test]
    fn removed_targets_lose_their_pending_probe() {
        let t0 = Instant::now();
        let mut p = prober(t0);
        p.handle_timeout(t0, &mut all);
        let out = sent(&mut p);
        p.set_targets(targets().into_iter().filter(|t| t.id == 2).collect());
        assert_eq!(p.pending(), 1);
        p.handle_datagram(t0, out[0].0, &reply_to(&out[0].1, 200));
        assert_eq!(p.poll_event(), None);
    }
}
