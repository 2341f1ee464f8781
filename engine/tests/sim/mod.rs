//! A deterministic network and SIP user agents for driving the sans-IO core.
//!
//! Everything runs on a virtual clock: the [`World`] picks the earliest
//! event (a datagram delivery, a proxy timer, a user agent timer), advances
//! the clock to it and runs it. Loss, duplication and delay come from a
//! seeded RNG, so a seed replays exactly.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siplb::config::Config;
use siplb::core::{Local, Proxy, Stats};
use siplb::lb::Table;
use siplb_parser::{scan_datagram, Message, Method};

pub const PUBLIC: &str = "127.0.0.1:5060";
pub const INTERNAL: &str = "127.0.0.1:5070";
pub const UAC: &str = "127.0.0.2:6000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Config text used by the simulations: `dests` are `(port, resources)`.
pub fn config_text(dests: &[(u16, &str)], extra: &str) -> String {
    let mut t = format!(
        "[server]\nlisten = [\"{PUBLIC}\"]\nworkers = 1\ninternal_address = \"127.0.0.1\"\ninternal_port_base = 5070\n\
         [timers]\nt1 = \"500ms\"\nt2 = \"4s\"\nfr_timeout = \"2s\"\nfr_inv_timeout = \"4s\"\ndialog_lifetime = \"60s\"\n{extra}\n"
    );
    for (i, (port, res)) in dests.iter().enumerate() {
        t.push_str(&format!(
            "[[destinations]]\nid = {}\ngroup = 1\nuri = \"sip:127.0.0.1:{port}\"\nresources = \"{res}\"\n",
            i + 1
        ));
    }
    t.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nruri_user = \"^VM_\"\nload_balance = { group = 1, resources = \"vm\" }\n\
         [[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nmethod = \"OPTIONS\"\nreply = { code = 200 }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    t
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Small deterministic RNG.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.f64() < p
    }
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.0.u64(lo..=hi))
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
}

// ---- message building ----------------------------------------------------

pub struct Req<'a> {
    pub method: &'a str,
    pub ruri: &'a str,
    pub via: SocketAddr,
    pub branch: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub routes: &'a [String],
    pub contact: Option<SocketAddr>,
    pub max_forwards: Option<u8>,
}

impl Req<'_> {
    pub fn build(&self) -> Vec<u8> {
        let mut s = format!(
            "{} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\n",
            self.method, self.ruri, self.via, self.branch
        );
        for r in self.routes {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        if let Some(mf) = self.max_forwards {
            s.push_str(&format!("Max-Forwards: {mf}\r\n"));
        }
        s.push_str(&format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, self.method
        ));
        if let Some(c) = self.contact {
            s.push_str(&format!("Contact: <sip:ua@{c}>\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s.into_bytes()
    }
}

/// A response to `req`: Vias, From, To (+ tag), Call-ID, CSeq, echoed
/// Record-Route, Contact.
pub fn response(req: &Message<'_>, code: u16, to_tag: &str, contact: SocketAddr) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} Whatever\r\n");
    for v in req.via_values() {
        s.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(v)));
    }
    for r in req.record_route_values() {
        s.push_str(&format!("Record-Route: {}\r\n", String::from_utf8_lossy(r)));
    }
    s.push_str(&format!("From: {}\r\n", text(req.header(b"From").unwrap().value)));
    let to = text(req.header(b"To").unwrap().value);
    if req.to_tag().is_none() && code > 100 {
        s.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    } else {
        s.push_str(&format!("To: {to}\r\n"));
    }
    s.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {}\r\nContact: <sip:ua@{contact}>\r\nContent-Length: 0\r\n\r\n",
        text(req.call_id()),
        text(req.header(b"CSeq").unwrap().value)
    ));
    s.into_bytes()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn contact_addr(m: &Message<'_>) -> Option<SocketAddr> {
    let c = m.header(b"Contact")?;
    let na = siplb_parser::NameAddr::parse(c.value).ok()?;
    siplb::core::msg::uri_addr(na.uri)
}

fn route_addr(r: &str) -> Option<SocketAddr> {
    let na = siplb_parser::NameAddr::parse(r.as_bytes()).ok()?;
    siplb::core::msg::uri_addr(na.uri)
}

// ---- user agents -----------------------------------------------------------

/// Output of a user agent step.
pub type Out = Vec<(SocketAddr, Vec<u8>)>;

/// How a caller behaves in one call.
#[derive(Clone, Copy, Debug)]
pub struct CallerPlan {
    pub start: Duration,
    pub cancel_after: Option<Duration>,
    pub hold: Duration,
    pub callee_hangs_up: bool,
    pub voicemail: bool,
    /// Send a re-INVITE halfway through the hold time.
    pub reinvite: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Answered,
    Rejected(u16),
    Cancelled,
    GaveUp,
}

#[derive(Debug)]
struct UacCall {
    plan: CallerPlan,
    call_id: String,
    from: String,
    to: String,
    ruri: String,
    branch: String,
    invite: Vec<u8>,
    got_response: bool,
    final_code: Option<u16>,
    to_tag: Option<String>,
    routes: Vec<String>,
    target: Option<SocketAddr>,
    ack: Option<Vec<u8>>,
    /// (bytes, destination, retransmissions left, next)
    retrans: Option<(Vec<u8>, SocketAddr, u32, Instant)>,
    cancel_at: Option<Instant>,
    cancel: Option<(Vec<u8>, u32, Instant)>,
    bye_at: Option<Instant>,
    bye_branch: Option<String>,
    done: bool,
    outcome: Outcome,
    bye_answered: bool,
    /// A caller hangs up on a call that never gets a final answer (what a
    /// person does; RFC 3261 has no timer for it after a provisional).
    give_up_at: Instant,
    reinvite_at: Option<Instant>,
    /// The re-INVITE and its retransmissions: (bytes, dst, left, next).
    re_retrans: Option<(Vec<u8>, SocketAddr, u32, Instant)>,
    re_ack: Option<Vec<u8>>,
}

/// The calling side: one address, many calls.
pub struct Uac {
    pub addr: SocketAddr,
    proxy: SocketAddr,
    calls: BTreeMap<String, UacCall>,
    pending: Vec<(Instant, String)>,
    seq: u64,
}

impl Uac {
    pub fn new(proxy: SocketAddr) -> Uac {
        Uac {
            addr: addr(UAC),
            proxy,
            calls: BTreeMap::new(),
            pending: Vec::new(),
            seq: 0,
        }
    }

    pub fn add_call(&mut self, base: Instant, plan: CallerPlan) -> String {
        self.seq += 1;
        let n = self.seq;
        let call_id = format!("call-{n}@sim");
        let user = if plan.voicemail {
            format!("VM_{n}")
        } else {
            format!("{}", 1000 + n)
        };
        let ruri = format!("sip:{user}@{}", self.proxy);
        let branch = format!("z9hG4bKuac{n}");
        let from = format!("<sip:caller@{}>;tag=f{n}", self.addr);
        let to = format!("<sip:{user}@{}>", self.proxy);
        let invite = Req {
            method: "INVITE",
            ruri: &ruri,
            via: self.addr,
            branch: &branch,
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq: 1,
            routes: &[],
            contact: Some(self.addr),
            max_forwards: Some(70),
        }
        .build();
        let start = base + plan.start;
        self.pending.push((start, call_id.clone()));
        self.calls.insert(
            call_id.clone(),
            UacCall {
                plan,
                call_id: call_id.clone(),
                from,
                to,
                ruri,
                branch,
                invite,
                got_response: false,
                final_code: None,
                to_tag: None,
                routes: Vec::new(),
                target: None,
                ack: None,
                retrans: None,
                cancel_at: plan.cancel_after.map(|c| start + c),
                cancel: None,
                bye_at: None,
                bye_branch: None,
                done: false,
                outcome: Outcome::Pending,
                bye_answered: false,
                give_up_at: start + Duration::from_secs(90),
                reinvite_at: None,
                re_retrans: None,
                re_ack: None,
            },
        );
        call_id
    }

    pub fn outcomes(&self) -> Vec<(String, Outcome, bool)> {
        self.calls
            .values()
            .map(|c| (c.call_id.clone(), c.outcome, c.done))
            .collect()
    }

    pub fn all_done(&self) -> bool {
        self.calls.values().all(|c| c.done)
    }

    pub fn next_timer(&self) -> Option<Instant> {
        let mut t: Vec<Instant> = self.pending.iter().map(|p| p.0).collect();
        for c in self.calls.values() {
            if c.done {
                continue;
            }
            t.extend(c.retrans.as_ref().map(|r| r.3));
            t.extend(c.cancel_at);
            t.extend(c.cancel.as_ref().map(|r| r.2));
            t.extend(c.bye_at);
            t.extend(c.reinvite_at);
            t.extend(c.re_retrans.as_ref().map(|r| r.3));
            if c.final_code.is_none() {
                t.push(c.give_up_at);
            }
        }
        t.into_iter().min()
    }

    pub fn on_timer(&mut self, now: Instant) -> Out {
        let mut out = Vec::new();
        let proxy = self.proxy;
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|p| p.0 <= now)
            .map(|p| p.1.clone())
            .collect();
        self.pending.retain(|p| p.0 > now);
        for id in due {
            let c = self.calls.get_mut(&id).unwrap();
            out.push((proxy, c.invite.clone()));
            c.retrans = Some((c.invite.clone(), proxy, 6, now + Duration::from_millis(500)));
        }
        for c in self.calls.values_mut() {
            if c.done {
                continue;
            }
            if c.final_code.is_none() && c.give_up_at <= now {
                c.outcome = Outcome::GaveUp;
                c.done = true;
                continue;
            }
            if let Some((bytes, dst, left, at)) = c.retrans.as_mut() {
                if *at <= now {
                    if *left == 0 {
                        // Give up on this request.
                        c.retrans = None;
                        if c.bye_branch.is_some() {
                            c.done = true;
                        } else if c.final_code.is_none() {
                            c.outcome = Outcome::GaveUp;
                            c.done = true;
                        }
                    } else {
                        *left -= 1;
                        *at = now + Duration::from_millis(500);
                        out.push((*dst, bytes.clone()));
                    }
                }
            }
            if c.cancel_at.is_some_and(|t| t <= now) {
                c.cancel_at = None;
                if c.final_code.is_none() && !c.done {
                    let cancel = Req {
                        method: "CANCEL",
                        ruri: &c.ruri,
                        via: self.addr,
                        branch: &c.branch,
                        from: &c.from,
                        to: &c.to,
                        call_id: &c.call_id,
                        cseq: 1,
                        routes: &[],
                        contact: None,
                        max_forwards: Some(70),
                    }
                    .build();
                    out.push((proxy, cancel.clone()));
                    c.cancel = Some((cancel, 4, now + Duration::from_millis(500)));
                }
            }
            if let Some((bytes, left, at)) = c.cancel.as_mut() {
                if *at <= now {
                    if *left == 0 {
                        c.cancel = None;
                    } else {
                        *left -= 1;
                        *at = now + Duration::from_millis(500);
                        out.push((proxy, bytes.clone()));
                    }
                }
            }
            if c.reinvite_at.is_some_and(|t| t <= now) {
                c.reinvite_at = None;
                let to = format!("{};tag={}", c.to, c.to_tag.clone().unwrap_or_default());
                let target = c
                    .target
                    .map(|t| format!("sip:ua@{t}"))
                    .unwrap_or_else(|| c.ruri.clone());
                let re = Req {
                    method: "INVITE",
                    ruri: &target,
                    via: self.addr,
                    branch: &format!("{}re", c.branch),
                    from: &c.from,
                    to: &to,
                    call_id: &c.call_id,
                    cseq: 2,
                    routes: &c.routes,
                    contact: Some(self.addr),
                    max_forwards: Some(70),
                }
                .build();
                let dst = c
                    .routes
                    .first()
                    .and_then(|r| route_addr(r))
                    .or(c.target)
                    .unwrap_or(proxy);
                out.push((dst, re.clone()));
                c.re_retrans = Some((re, dst, 6, now + Duration::from_millis(500)));
            }
            if let Some((bytes, dst, left, at)) = c.re_retrans.as_mut() {
                if *at <= now {
                    if *left == 0 {
                        c.re_retrans = None;
                    } else {
                        *left -= 1;
                        *at = now + Duration::from_millis(500);
                        out.push((*dst, bytes.clone()));
                    }
                }
            }
            if c.bye_at.is_some_and(|t| t <= now) {
                c.bye_at = None;
                c.re_retrans = None;
                let branch = format!("{}bye", c.branch);
                let to = format!("{};tag={}", c.to, c.to_tag.clone().unwrap_or_default());
                let target = c
                    .target
                    .map(|t| format!("sip:ua@{t}"))
                    .unwrap_or_else(|| c.ruri.clone());
                let bye = Req {
                    method: "BYE",
                    ruri: &target,
                    via: self.addr,
                    branch: &branch,
                    from: &c.from,
                    to: &to,
                    call_id: &c.call_id,
                    cseq: 3,
                    routes: &c.routes,
                    contact: None,
                    max_forwards: Some(70),
                }
                .build();
                let dst = c
                    .routes
                    .first()
                    .and_then(|r| route_addr(r))
                    .or(c.target)
                    .unwrap_or(proxy);
                out.push((dst, bye.clone()));
                c.bye_branch = Some(branch);
                c.retrans = Some((bye, dst, 6, now + Duration::from_millis(500)));
            }
        }
        out
    }

    pub fn on_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Out {
        let mut out = Vec::new();
        let Ok(m) = scan_datagram(bytes) else { return out };
        let Some(c) = self.calls.get_mut(&text(m.call_id())) else {
            return out;
        };
        if let Some(method) = m.method() {
            // A request from the callee side: BYE.
            match method {
                Method::Bye => {
                    out.push((from, response(&m, 200, "x", self.addr)));
                    if !c.done {
                        c.done = true;
                        c.retrans = None;
                        c.bye_at = None;
                        c.bye_answered = true;
                    }
                }
                _ => out.push((from, response(&m, 405, "x", self.addr))),
            }
            return out;
        }
        let code = m.status().unwrap_or(0);
        let cseq = m.cseq();
        match cseq.method {
            Method::Invite if cseq.seq == 2 => {
                // The re-INVITE's answer.
                if code < 200 {
                    return out;
                }
                if c.re_retrans.take().is_some() && (200..300).contains(&code) {
                    let to = text(m.header(b"To").unwrap().value);
                    let target = c
                        .target
                        .map(|t| format!("sip:ua@{t}"))
                        .unwrap_or_else(|| c.ruri.clone());
                    c.re_ack = Some(
                        Req {
                            method: "ACK",
                            ruri: &target,
                            via: self.addr,
                            branch: &format!("{}reack", c.branch),
                            from: &c.from,
                            to: &to,
                            call_id: &c.call_id,
                            cseq: 2,
                            routes: &c.routes,
                            contact: None,
                            max_forwards: Some(70),
                        }
                        .build(),
                    );
                }
                if (200..300).contains(&code) {
                    if let Some(ack) = &c.re_ack {
                        let dst = c
                            .routes
                            .first()
                            .and_then(|r| route_addr(r))
                            .or(c.target)
                            .unwrap_or(from);
                        out.push((dst, ack.clone()));
                    }
                }
            }
            Method::Invite => {
                if !c.got_response {
                    c.got_response = true;
                    if c.bye_branch.is_none() {
                        c.retrans = None;
                    }
                }
                if code < 200 {
                    return out;
                }
                if (200..300).contains(&code) {
                    if c.final_code.is_none() {
                        c.final_code = Some(code);
                        c.outcome = Outcome::Answered;
                        c.to_tag = m.to_tag().map(text);
                        c.routes = m
                            .record_route_values()
                            .map(text)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        c.target = contact_addr(&m);
                        let to = format!("{};tag={}", c.to, c.to_tag.clone().unwrap_or_default());
                        let target = c
                            .target
                            .map(|t| format!("sip:ua@{t}"))
                            .unwrap_or_else(|| c.ruri.clone());
                        let ack = Req {
                            method: "ACK",
                            ruri: &target,
                            via: self.addr,
                            branch: &format!("{}ack", c.branch),
                            from: &c.from,
                            to: &to,
                            call_id: &c.call_id,
                            cseq: 1,
                            routes: &c.routes,
                            contact: None,
                            max_forwards: Some(70),
                        }
                        .build();
                        c.ack = Some(ack);
                        if !c.plan.callee_hangs_up {
                            c.bye_at = Some(now + c.plan.hold);
                        }
                        if c.plan.reinvite {
                            c.reinvite_at = Some(now + c.plan.hold / 2);
                        }
                    }
                    if let Some(ack) = &c.ack {
                        let dst = c
                            .routes
                            .first()
                            .and_then(|r| route_addr(r))
                            .or(c.target)
                            .unwrap_or(from);
                        out.push((dst, ack.clone()));
                    }
                    // The callee may never hang up if its BYE is lost for
                    // good; the caller then hangs up after a while.
                    if c.plan.callee_hangs_up && c.bye_at.is_none() && c.bye_branch.is_none() && !c.done {
                        c.bye_at = Some(now + c.plan.hold + Duration::from_secs(20));
                    }
                } else {
                    // Non-2xx final: ACK with the INVITE's branch.
                    let to = text(m.header(b"To").unwrap().value);
                    let ack = Req {
                        method: "ACK",
                        ruri: &c.ruri,
                        via: self.addr,
                        branch: &c.branch,
                        from: &c.from,
                        to: &to,
                        call_id: &c.call_id,
                        cseq: 1,
                        routes: &[],
                        contact: None,
                        max_forwards: Some(70),
                    }
                    .build();
                    out.push((from, ack));
                    if c.final_code.is_none() {
                        c.final_code = Some(code);
                        c.outcome = if code == 487 {
                            Outcome::Cancelled
                        } else {
                            Outcome::Rejected(code)
                        };
                        c.done = true;
                        c.retrans = None;
                        c.cancel = None;
                    }
                }
            }
            Method::Cancel => c.cancel = None,
            Method::Bye if code >= 200 => {
                c.retrans = None;
                c.done = true;
                c.bye_answered = true;
            }
            _ => {}
        }
        out
    }
}

/// How a callee treats one INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalleePlan {
    /// 180 after `ring`, 200 after `answer`.
    Answer { ring: Duration, answer: Duration },
    /// A final failure after a delay.
    Reject { code: u16, after: Duration },
    /// No reply at all.
    Silent,
    /// 180, then nothing.
    RingForever,
}

#[derive(Debug)]
struct UasCall {
    plan: CalleePlan,
    invite: Vec<u8>,
    from: SocketAddr,
    tag: String,
    last: Option<Vec<u8>>,
    ring_at: Option<Instant>,
    final_at: Option<Instant>,
    finalized: bool,
    /// Final retransmission until ACK: (left, next).
    retrans: Option<(u32, Instant)>,
    acked: bool,
    bye_at: Option<Instant>,
    bye: Option<(Vec<u8>, SocketAddr, u32, Instant)>,
    ended: bool,
}

/// Picks a callee's plan for a Call-ID, and when it hangs up.
pub type Chooser = Box<dyn FnMut(&str) -> (CalleePlan, Option<Duration>)>;

/// Picks the final answer to an out-of-dialog non-INVITE request (REGISTER,
/// MESSAGE...) by its Call-ID: a code, or `None` to stay silent.
pub type NonInviteChooser = Box<dyn FnMut(&str) -> Option<u16>>;

/// A destination: answers INVITEs by a plan chosen per call.
pub struct Uas {
    pub addr: SocketAddr,
    calls: HashMap<String, UasCall>,
    chooser: Chooser,
    pub invites: u32,
    /// How out-of-dialog non-INVITE requests are answered (default: 200).
    pub non_invite: NonInviteChooser,
    /// The answer given per (Call-ID, CSeq), repeated for retransmissions.
    answered: HashMap<(String, u32), Option<u16>>,
    /// Distinct out-of-dialog non-INVITE requests received (REGISTER...).
    pub non_invites: u32,
}

impl Uas {
    /// `chooser(call_id)`: the plan and, when the callee hangs up, after
    /// how long.
    pub fn new(addr: SocketAddr, chooser: Chooser) -> Uas {
        Uas {
            addr,
            calls: HashMap::new(),
            chooser,
            invites: 0,
            non_invite: Box::new(|_| Some(200)),
            answered: HashMap::new(),
            non_invites: 0,
        }
    }

    pub fn next_timer(&self) -> Option<Instant> {
        let mut t = Vec::new();
        for c in self.calls.values() {
            t.extend(c.ring_at);
            t.extend(c.final_at);
            t.extend(c.retrans.map(|r| r.1));
            t.extend(c.bye_at);
            t.extend(c.bye.as_ref().map(|b| b.3));
        }
        t.into_iter().min()
    }

    pub fn on_timer(&mut self, now: Instant) -> Out {
        let mut out = Vec::new();
        let me = self.addr;
        for (id, c) in self.calls.iter_mut() {
            let Ok(inv) = scan_datagram(&c.invite) else { continue };
            if c.ring_at.is_some_and(|t| t <= now) {
                c.ring_at = None;
                if !c.finalized {
                    let r = response(&inv, 180, &c.tag, me);
                    c.last = Some(r.clone());
                    out.push((c.from, r));
                }
            }
            if c.final_at.is_some_and(|t| t <= now) {
                c.final_at = None;
                if !c.finalized {
                    let code = match c.plan {
                        CalleePlan::Answer { .. } => 200,
                        CalleePlan::Reject { code, .. } => code,
                        _ => 500,
                    };
                    let r = response(&inv, code, &c.tag, me);
                    c.finalized = true;
                    c.last = Some(r.clone());
                    c.retrans = Some((6, now + Duration::from_millis(500)));
                    out.push((c.from, r));
                }
            }
            if let Some((left, at)) = c.retrans.as_mut() {
                if *at <= now {
                    if *left == 0 || c.acked {
                        c.retrans = None;
                    } else {
                        *left -= 1;
                        *at = now + Duration::from_millis(500);
                        if let Some(l) = &c.last {
                            out.push((c.from, l.clone()));
                        }
                    }
                }
            }
            if c.bye_at.is_some_and(|t| t <= now) {
                c.bye_at = None;
                if !c.ended {
                    let routes: Vec<String> = inv.record_route_values().map(text).collect();
                    let Some(caller) = contact_addr(&inv) else {
                        c.ended = true;
                        continue;
                    };
                    let from = format!("{};tag={}", text(inv.header(b"To").unwrap().value), c.tag);
                    let bye = Req {
                        method: "BYE",
                        ruri: &format!("sip:caller@{caller}"),
                        via: me,
                        branch: &format!("z9hG4bKuasbye{}", id.replace(|c: char| !c.is_ascii_alphanumeric(), "")),
                        from: &from,
                        to: &text(inv.header(b"From").unwrap().value),
                        call_id: id,
                        cseq: 1,
                        routes: &routes,
                        contact: None,
                        max_forwards: Some(70),
                    }
                    .build();
                    let dst = routes.first().and_then(|r| route_addr(r)).unwrap_or(caller);
                    out.push((dst, bye.clone()));
                    c.bye = Some((bye, dst, 6, now + Duration::from_millis(500)));
                }
            }
            if let Some((bytes, dst, left, at)) = c.bye.as_mut() {
                if *at <= now {
                    if *left == 0 {
                        c.bye = None;
                        c.ended = true;
                    } else {
                        *left -= 1;
                        *at = now + Duration::from_millis(500);
                        out.push((*dst, bytes.clone()));
                    }
                }
            }
        }
        out
    }

    pub fn on_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Out {
        let mut out = Vec::new();
        let me = self.addr;
        let Ok(m) = scan_datagram(bytes) else { return out };
        let id = text(m.call_id());
        if m.is_request() {
            let method = m.method().unwrap();
            if method == Method::Invite && m.to_tag().is_some() {
                // A re-INVITE: accept it (again, for retransmissions).
                let tag = self.calls.get(&id).map(|c| c.tag.clone());
                match tag {
                    Some(tag) => out.push((from, response(&m, 200, &tag, me))),
                    None => out.push((from, response(&m, 481, "x", me))),
                }
                return out;
            }
            if method == Method::Invite {
                if let Some(c) = self.calls.get(&id) {
                    // Retransmission (or a re-INVITE, not simulated): repeat.
                    if let Some(l) = &c.last {
                        out.push((from, l.clone()));
                    }
                    return out;
                }
                self.invites += 1;
                let (plan, hangup) = (self.chooser)(&id);
                let tag = format!("t{}{}", me.port(), self.invites);
                let mut c = UasCall {
                    plan,
                    invite: bytes.to_vec(),
                    from,
                    tag,
                    last: None,
                    ring_at: None,
                    final_at: None,
                    finalized: false,
                    retrans: None,
                    acked: false,
                    bye_at: None,
                    bye: None,
                    ended: false,
                };
                match plan {
                    CalleePlan::Answer { ring, answer } => {
                        c.ring_at = Some(now + ring);
                        c.final_at = Some(now + ring + answer);
                        c.bye_at = hangup.map(|h| now + ring + answer + h);
                    }
                    CalleePlan::Reject { after, .. } => c.final_at = Some(now + after),
                    CalleePlan::Silent => {}
                    CalleePlan::RingForever => c.ring_at = Some(now),
                }
                self.calls.insert(id, c);
                return out;
            }
            let Some(c) = self.calls.get_mut(&id) else {
                if method != Method::Ack && m.to_tag().is_none() && method != Method::Cancel {
                    // An out-of-dialog request (REGISTER...): answer by plan,
                    // the same way for its retransmissions.
                    let key = (id.clone(), m.cseq().seq);
                    let answer = match self.answered.get(&key) {
                        Some(a) => *a,
                        None => {
                            self.non_invites += 1;
                            let a = (self.non_invite)(&id);
                            self.answered.insert(key, a);
                            a
                        }
                    };
                    if let Some(code) = answer {
                        out.push((from, response(&m, code, &format!("r{}", me.port()), me)));
                    }
                } else if method != Method::Ack {
                    out.push((from, response(&m, 481, "x", me)));
                }
                return out;
            };
            match method {
                Method::Ack => {
                    c.acked = true;
                    c.retrans = None;
                }
                Method::Cancel => {
                    out.push((from, response(&m, 200, &c.tag, me)));
                    if !c.finalized {
                        let inv = scan_datagram(&c.invite).unwrap();
                        let r = response(&inv, 487, &c.tag, me);
                        c.finalized = true;
                        c.ring_at = None;
                        c.final_at = None;
                        c.bye_at = None;
                        c.last = Some(r.clone());
                        c.retrans = Some((6, now + Duration::from_millis(500)));
                        out.push((c.from, r));
                    }
                }
                Method::Bye => {
                    out.push((from, response(&m, 200, &c.tag, me)));
                    c.ended = true;
                    c.bye_at = None;
                    c.bye = None;
                }
                _ => out.push((from, response(&m, 200, &c.tag, me))),
            }
            return out;
        }
        // A response: to our BYE.
        if let Some(c) = self.calls.get_mut(&id) {
            if m.cseq().method == Method::Bye && m.status().unwrap_or(0) >= 200 {
                c.bye = None;
                c.ended = true;
            }
        }
        out
    }
}

// ---- the world ---------------------------------------------------------------

/// Network conditions.
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    pub loss: f64,
    pub duplicate: f64,
    pub max_delay_ms: u64,
    /// Probability that a datagram towards siplb is corrupted.
    pub corrupt: f64,
}

/// Damages a datagram the way broken peers and bit rot do.
pub fn corrupt(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    match rng.below(6) {
        0 => {
            let i = rng.below(bytes.len());
            bytes[i] = rng.below(256) as u8;
        }
        1 => bytes.truncate(rng.below(bytes.len())),
        2 | 3 => {
            // Duplicate or delete a line.
            let text = String::from_utf8_lossy(bytes).into_owned();
            let mut lines: Vec<&str> = text.split("\r\n").collect();
            let i = rng.below(lines.len());
            if rng.chance(0.5) {
                lines.insert(i, lines[i]);
            } else {
                lines.remove(i);
            }
            *bytes = lines.join("\r\n").into_bytes();
        }
        4 => {
            // A huge or negative number somewhere.
            if let Some(i) = bytes.iter().position(|b| b.is_ascii_digit()) {
                let junk: &[u8] = if rng.chance(0.5) {
                    b"99999999999999999999"
                } else {
                    b"-1"
                };
                bytes.splice(i..i + 1, junk.iter().copied());
            }
        }
        _ => {
            let i = rng.below(bytes.len());
            let junk: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
            bytes.splice(i..i, junk);
        }
    }
}

pub struct World {
    pub base: Instant,
    pub now: Instant,
    pub proxy: Proxy,
    pub table: Arc<Table>,
    pub stats: Arc<Stats>,
    pub uac: Uac,
    pub uas: Vec<Uas>,
    pub rng: Rng,
    pub net: Conditions,
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    pub delivered: u64,
    /// Datagrams delivered to addresses that are neither siplb, the UAC nor
    /// a UAS (such as a registering client's answers).
    pub others: Vec<Packet>,
}

impl World {
    pub fn new(config: &str, seed: u64, net: Conditions) -> World {
        let cfg = Arc::new(Config::parse(config).unwrap());
        let table = Arc::new(Table::new(&cfg.destinations, &cfg.resource_names));
        let stats = Arc::new(Stats::default());
        let base = Instant::now();
        let proxy = Proxy::new(cfg.clone(), table.clone(), stats.clone(), 0, 7, seed);
        World {
            base,
            now: base,
            proxy,
            table,
            stats,
            uac: Uac::new(addr(PUBLIC)),
            uas: Vec::new(),
            rng: Rng::new(seed),
            net,
            queue: BTreeMap::new(),
            seq: 0,
            delivered: 0,
            others: Vec::new(),
        }
    }

    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now + self.rng.ms(1, self.net.max_delay_ms);
            self.seq += 1;
            self.queue.insert(
                (at, self.seq),
                Packet {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Puts what the proxy has to send on the network (after a direct call
    /// into it such as `handle_control`).
    pub fn flush_proxy(&mut self) {
        while let Some(t) = self.proxy.poll_transmit() {
            let from = match t.local {
                Local::Public(_) => addr(PUBLIC),
                Local::Internal => addr(INTERNAL),
                Local::Conn(_) | Local::Connect(_) => panic!("the simulation speaks UDP only: {:?}", t.local),
            };
            self.send(from, t.dst, t.payload);
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let mut t = Vec::new();
        t.extend(self.queue.keys().next().map(|k| k.0));
        t.extend(self.proxy.poll_timeout());
        t.extend(self.uac.next_timer());
        t.extend(self.uas.iter().filter_map(|u| u.next_timer()));
        t.into_iter().min()
    }

    /// Runs one event; false when nothing is left before `until`.
    pub fn step(&mut self, until: Instant) -> bool {
        let Some(t) = self.next_event() else { return false };
        if t > until {
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        if let Some((&k, _)) = self.queue.iter().next().filter(|(k, _)| k.0 <= now) {
            let p = self.queue.remove(&k).unwrap();
            self.delivered += 1;
            self.deliver(p);
        } else if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
            self.proxy.handle_timeout(now);
        } else if self.uac.next_timer().is_some_and(|t| t <= now) {
            let out = self.uac.on_timer(now);
            let me = self.uac.addr;
            for (dst, b) in out {
                self.send(me, dst, b);
            }
        } else {
            for i in 0..self.uas.len() {
                if self.uas[i].next_timer().is_some_and(|t| t <= now) {
                    let out = self.uas[i].on_timer(now);
                    let me = self.uas[i].addr;
                    for (dst, b) in out {
                        self.send(me, dst, b);
                    }
                    break;
                }
            }
        }
        self.flush_proxy();
        true
    }

    fn deliver(&mut self, mut p: Packet) {
        let now = self.now;
        if let Ok(needle) = std::env::var("SIPLB_SIM_TRACE") {
            if String::from_utf8_lossy(&p.bytes).contains(&needle) {
                eprintln!(
                    "--- {:?} {} -> {}\n{}",
                    now - self.base,
                    p.from,
                    p.to,
                    String::from_utf8_lossy(&p.bytes)
                );
            }
        }
        if p.to == addr(PUBLIC) || p.to == addr(INTERNAL) {
            if self.net.corrupt > 0.0 && self.rng.chance(self.net.corrupt) {
                corrupt(&mut self.rng, &mut p.bytes);
            }
            let local = if p.to == addr(PUBLIC) {
                Local::Public(0)
            } else {
                Local::Internal
            };
            self.proxy.handle_datagram(now, local, p.from, &p.bytes, false);
            return;
        }
        if p.to == self.uac.addr {
            let out = self.uac.on_message(now, p.from, &p.bytes);
            for (dst, b) in out {
                self.send(p.to, dst, b);
            }
            return;
        }
        if let Some(i) = self.uas.iter().position(|u| u.addr == p.to) {
            let out = self.uas[i].on_message(now, p.from, &p.bytes);
            for (dst, b) in out {
                self.send(p.to, dst, b);
            }
            return;
        }
        self.others.push(p);
    }

    /// Final status codes the address `to` received, per Call-ID (the
    /// first one for each; a retransmitted final is counted once).
    pub fn finals_to(&self, to: SocketAddr) -> BTreeMap<String, u16> {
        let mut out = BTreeMap::new();
        for p in self.others.iter().filter(|p| p.to == to) {
            if let Ok(m) = scan_datagram(&p.bytes) {
                if m.status().is_some_and(|c| c >= 200) {
                    out.entry(text(m.call_id())).or_insert(m.status().unwrap_or(0));
                }
            }
        }
        out
    }

    /// Load counters equal the holds of live dialogs, resource by resource.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expected: HashMap<(u16, usize), u32> = HashMap::new();
        for h in self.proxy.holds() {
            for r in h.resources.iter() {
                *expected.entry((h.dest, r)).or_default() += 1;
            }
        }
        for (i, d) in self.table.destinations().iter().enumerate() {
            for r in 0..self.table.resource_names().len() {
                if let Some(c) = d.counter(r) {
                    let want = expected.get(&(i as u16, r)).copied().unwrap_or(0);
                    if c.load() != want {
                        return Err(format!(
                            "dest {} resource {}: load {} but {} live dialog(s) hold it",
                            d.config.id,
                            self.table.resource_names()[r],
                            c.load(),
                            want
                        ));
                    }
                }
            }
        }
        if self.table.underflows() != 0 {
            return Err(format!("{} release(s) found a zero counter", self.table.underflows()));
        }
        Ok(())
    }

    /// Runs until `until`, checking invariants after every step.
    pub fn run_checked(&mut self, until: Instant) -> Result<(), String> {
        while self.step(until) {
            self.check_invariants()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no stat {name}"))
    }
}
