//! The called side: a sans-IO engine that answers calls.
//!
//! # Call protocol
//!
//! As for [`crate::uac::Uac`]: the runtime feeds [`Uas::handle_datagram`]
//! and [`Uas::handle_timeout`] (when [`Uas::poll_timeout`] has passed) and
//! sends and clears [`Uas::outbox`] after each call. No clock, no socket,
//! no panic on network input.
//!
//! # Call states
//!
//! ```text
//! INVITE --> [100] [180] --ring delay--> Answered (2xx sent) --ACK--> Confirmed
//!        \-> Rejected (final non-2xx sent: failure ratio, answer code, CANCEL → 487) --ACK--> done
//!        \-> NoAnswer (no final response; freed after 64·T1 unless CANCELled)
//! Confirmed --BYE--> 200, done (success)
//! Confirmed --bye-after--> Terminating (our BYE) --2xx--> done (success)
//! Answered/Rejected --Timer H--> done (failure: ack_timeout)
//! Terminating --Timer F--> done (failure: bye_retransmission_limit)
//! Confirmed --no BYE within max_dialog (1 h)--> done (failure: bye_timeout)
//! ```
//!
//! A final response is retransmitted at T1 doubling up to T2 until the ACK
//! (RFC 3261 §13.3.1.4 and §17.2.1); a retransmitted INVITE gets the last
//! response again. A BYE that arrives before the ACK (reordered by a
//! proxy) confirms and ends the call. Provisional and 2xx responses echo
//! Record-Route. A BYE for an unknown call is answered 200 (it is a
//! retransmission of a BYE already answered: ended calls keep no state),
//! and counted in [`Stats::out_of_call`].
//!
//! Calls are matched by Call-ID (a hash map from a hash of the Call-ID to
//! the slot; the full Call-ID is compared).

#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use siplb_parser::{scan_datagram, Message, Method, Uri};

use crate::sip::{self, Outbox, ResponseParts, Timers};
use crate::slab::Slab;
use crate::stats::{FailureReason, Latency, Stats};

/// How the UAS answers.
#[derive(Clone, Debug)]
pub struct UasConfig {
    /// Our address as bound (used for Via of our own BYE and as Contact
    /// when it is not the unspecified address).
    pub local: SocketAddr,
    /// Final response to calls that are not picked for failure.
    pub answer_code: u16,
    /// Delay between the 180 and the final response.
    pub ring_delay: Duration,
    /// Fraction of calls (0..=1) answered with `failure_code` instead.
    pub failure_ratio: f64,
    /// Final response of the failing calls (486, 503...).
    pub failure_code: u16,
    /// Never send a final response (the caller times out or cancels).
    pub no_answer: bool,
    /// End answered calls with our own BYE after this long.
    pub bye_after: Option<Duration>,
    /// Send 100 Trying before 180.
    pub trying: bool,
    /// Send 180 Ringing.
    pub ringing: bool,
    /// Answer with an SDP body.
    pub sdp: bool,
    /// Retransmission timers.
    pub timers: Timers,
    /// Forget a confirmed call that got no BYE after this long (failure
    /// `bye_timeout`), so that a lost BYE cannot keep state forever.
    pub max_dialog: Duration,
    /// Distinguishes this engine's tags from other engines' and runs.
    pub instance: u64,
}

impl UasConfig {
    /// Defaults: 100, 180 and 200 at once with SDP.
    pub fn new(local: SocketAddr) -> Self {
        UasConfig {
            local,
            answer_code: 200,
            ring_delay: Duration::ZERO,
            failure_ratio: 0.0,
            failure_code: 486,
            no_answer: false,
            bye_after: None,
            trying: true,
            ringing: true,
            sdp: true,
            timers: Timers::default(),
            max_dialog: Duration::from_secs(3600),
            instance: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Ringing,
    NoAnswer,
    Answered,
    Rejected,
    Confirmed,
    Terminating,
}

#[derive(Default)]
struct Call {
    state: State,
    key: u64,
    call_id: Vec<u8>,
    to_tag: Vec<u8>,
    src: Option<SocketAddr>,
    /// Last response to the INVITE (re-sent on a retransmitted INVITE).
    response: Vec<u8>,
    /// The INVITE itself while ringing (to build the final response).
    invite: Vec<u8>,
    /// Our BYE (prebuilt when `bye_after` is set).
    bye: Vec<u8>,
    bye_dst: Option<SocketAddr>,
    cancelled: bool,
    /// Final response code decided for this call.
    final_code: u16,
    t_bye: Option<Instant>,
    answer_at: Option<Instant>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Option<Instant>,
    bye_at: Option<Instant>,
}

impl Call {
    fn wakeup(&self) -> Option<Instant> {
        [self.answer_at, self.retransmit_at, self.give_up_at, self.bye_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The UAS engine of one thread; see the module docs for the protocol.
pub struct Uas {
    config: UasConfig,
    calls: Slab<Call>,
    index: HashMap<u64, (u32, u32)>,
    hasher: hashbrown::DefaultHashBuilder,
    out: Outbox,
    stats: Stats,
    scratch: Vec<u8>,
    sdp: Vec<u8>,
    /// The bound address as text, when it is not the unspecified address.
    local: Option<Vec<u8>>,
    received: u64,
}

impl Uas {
    /// A new engine.
    pub fn new(config: UasConfig) -> Self {
        let mut sdp = Vec::new();
        if config.sdp {
            let ip = if config.local.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                config.local.ip()
            };
            sip::put_sdp(&mut sdp, ip, config.instance & 0xffff_ffff);
        }
        Uas {
            calls: Slab::new(),
            index: HashMap::new(),
            hasher: Default::default(),
            out: Outbox::default(),
            stats: Stats::default(),
            scratch: Vec::with_capacity(2048),
            sdp,
            local: (!config.local.ip().is_unspecified()).then(|| {
                let mut v = Vec::new();
                sip::put_addr(&mut v, config.local);
                v
            }),
            received: 0,
            config,
        }
    }

    /// Datagrams to send; the runtime clears it after sending.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// Statistics since creation (or the caller's last reset).
    pub fn stats(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Calls with live state.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// When [`Uas::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls.next_wakeup()
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        self.stats.datagrams_received += 1;
        let Ok(msg) = scan_datagram(data) else {
            self.stats.malformed += 1;
            return;
        };
        let found = self.lookup(msg.call_id());
        match msg.method() {
            Some(Method::Invite) => match found {
                Some((slot, gen)) => {
                    // Retransmission (or a re-INVITE we do not support).
                    let Some(call) = self.calls.get_mut(slot, gen) else {
                        return;
                    };
                    if msg.to_tag().is_some() {
                        self.respond(src, &msg, 501);
                    } else {
                        self.stats.retransmissions_received += 1;
                        if !call.response.is_empty() {
                            self.out.push(src, &call.response);
                        }
                    }
                }
                None if msg.to_tag().is_some() => self.respond(src, &msg, 481),
                None => self.new_call(now, src, &msg),
            },
            Some(Method::Ack) => match found {
                Some((slot, gen)) => self.on_ack(now, slot, gen),
                None => self.stats.out_of_call += 1,
            },
            Some(Method::Bye) => {
                match found {
                    Some((slot, gen)) => self.on_bye(slot, gen),
                    None => self.stats.out_of_call += 1,
                }
                self.respond(src, &msg, 200);
            }
            Some(Method::Cancel) => match found {
                Some((slot, gen)) => self.on_cancel(now, slot, gen, src, &msg),
                None => self.respond(src, &msg, 481),
            },
            Some(Method::Options) => self.respond(src, &msg, 200),
            Some(_) => self.respond(src, &msg, 501),
            None => match found {
                Some((slot, gen)) => self.on_response(now, slot, gen, &msg),
                None => self.stats.out_of_call += 1,
            },
        }
        if let Some((slot, gen)) = found {
            self.reschedule(slot, gen);
        }
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((slot, gen)) = self.calls.pop_due(now) {
            self.on_timer(now, slot, gen);
            self.reschedule(slot, gen);
        }
    }

    fn lookup(&mut self, call_id: &[u8]) -> Option<(u32, u32)> {
        let key = self.hasher.hash_one(call_id);
        let &(slot, gen) = self.index.get(&key)?;
        let call = self.calls.get_mut(slot, gen)?;
        (call.call_id == call_id).then_some((slot, gen))
    }

    fn reschedule(&mut self, slot: u32, gen: u32) {
        if let Some(call) = self.calls.get_mut(slot, gen) {
            let wake = call.wakeup();
            self.calls.schedule(slot, gen, wake);
        }
    }

    fn respond(&mut self, src: SocketAddr, msg: &Message<'_>, code: u16) {
        let mut out = std::mem::take(&mut self.scratch);
        sip::build_response(&mut out, msg, code, ResponseParts::default());
        self.out.push(src, &out);
        self.scratch = out;
    }

    /// Ends a call: counts the outcome and frees it.
    fn finish(&mut self, slot: u32, gen: u32, outcome: Result<(), FailureReason>) {
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.stats.calls_succeeded += 1;
                if call.cancelled {
                    self.stats.calls_cancelled += 1;
                } else if call.state == State::Rejected {
                    self.stats.calls_rejected += 1;
                }
            }
            Err(reason) => self.stats.fail(reason),
        }
        let key = call.key;
        if self.index.get(&key) == Some(&(slot, gen)) {
            self.index.remove(&key);
        }
        self.calls.remove(slot, gen);
    }

    fn new_call(&mut self, now: Instant, src: SocketAddr, msg: &Message<'_>) {
        let key = self.hasher.hash_one(msg.call_id());
        if self.index.contains_key(&key) {
            // Another live call has a Call-ID with the same 64-bit hash.
            self.respond(src, msg, 503);
            return;
        }
        self.stats.calls_started += 1;
        let index = self.received;
        self.received += 1;
        let cfg = &self.config;
        let ratio = cfg.failure_ratio;
        let fails = ratio > 0.0 && ((index + 1) as f64 * ratio).floor() > (index as f64 * ratio).floor();
        let final_code = if fails { cfg.failure_code } else { cfg.answer_code };
        let (slot, gen) = self.calls.insert();
        self.index.insert(key, (slot, gen));
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        call.key = key;
        sip::set(&mut call.call_id, msg.call_id());
        call.to_tag.clear();
        sip::put_hex(&mut call.to_tag, u64::from(slot));
        call.to_tag.push(b'-');
        sip::put_hex(&mut call.to_tag, u64::from(gen));
        call.to_tag.push(b'-');
        sip::put_hex(&mut call.to_tag, cfg.instance);
        call.src = Some(src);
        call.response.clear();
        call.invite.clear();
        call.bye.clear();
        call.bye_dst = None;
        call.cancelled = false;
        call.final_code = final_code;
        call.t_bye = None;
        call.answer_at = None;
        call.retransmit_at = None;
        call.give_up_at = None;
        call.bye_at = None;
        call.interval = cfg.timers.t1;

        let mut contact_buf = std::mem::take(&mut self.scratch);
        contact_for(self.local.as_deref(), cfg.local, msg, &mut contact_buf);
        if cfg.trying {
            sip::build_response(&mut call.response, msg, 100, ResponseParts::default());
            self.out.push(src, &call.response);
        }
        let provisional = ResponseParts {
            to_tag: Some(&call.to_tag),
            record_route: true,
            contact: Some(&contact_buf),
            body: None,
        };
        if cfg.ringing && !fails && (cfg.no_answer || final_code < 300) {
            sip::build_response(&mut call.response, msg, 180, provisional);
            self.out.push(src, &call.response);
        }
        if cfg.bye_after.is_some() && final_code < 300 && !cfg.no_answer {
            let dst = build_bye(&mut call.bye, msg, &call.to_tag, cfg.local, slot, gen, cfg.instance);
            call.bye_dst = Some(dst.unwrap_or(src));
        }
        if cfg.no_answer {
            call.state = State::NoAnswer;
            call.give_up_at = Some(now + cfg.timers.transaction_timeout());
        } else if fails || cfg.ring_delay.is_zero() {
            call.state = State::Ringing;
            self.scratch = contact_buf;
            self.send_final(now, slot, gen, msg);
            return;
        } else {
            call.state = State::Ringing;
            sip::set(&mut call.invite, msg.as_bytes());
            call.answer_at = Some(now + cfg.ring_delay);
        }
        self.scratch = contact_buf;
        self.reschedule(slot, gen);
    }

    /// Sends the call's final response to `invite` and starts
    /// retransmitting it until the ACK.
    fn send_final(&mut self, now: Instant, slot: u32, gen: u32, invite: &Message<'_>) {
        let cfg = &self.config;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let code = call.final_code;
        let mut contact = std::mem::take(&mut self.scratch);
        contact_for(self.local.as_deref(), cfg.local, invite, &mut contact);
        let two_xx = (200..300).contains(&code);
        let parts = ResponseParts {
            to_tag: Some(&call.to_tag),
            record_route: two_xx,
            contact: two_xx.then_some(&contact[..]),
            body: (two_xx && !self.sdp.is_empty()).then_some(&self.sdp[..]),
        };
        sip::build_response(&mut call.response, invite, code, parts);
        self.scratch = contact;
        if let Some(src) = call.src {
            self.out.push(src, &call.response);
        }
        call.state = if two_xx { State::Answered } else { State::Rejected };
        call.invite.clear();
        call.answer_at = None;
        call.interval = cfg.timers.t1;
        call.retransmit_at = Some(now + cfg.timers.t1);
        call.give_up_at = Some(now + cfg.timers.transaction_timeout());
        self.reschedule(slot, gen);
    }

    fn on_ack(&mut self, now: Instant, slot: u32, gen: u32) {
        let bye_after = self.config.bye_after;
        let max_dialog = self.config.max_dialog;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        match call.state {
            State::Answered => {
                call.state = State::Confirmed;
                call.retransmit_at = None;
                call.give_up_at = Some(now + max_dialog);
                if !call.bye.is_empty() {
                    call.bye_at = bye_after.map(|d| now + d);
                }
            }
            State::Rejected => self.finish(slot, gen, Ok(())),
            _ => self.stats.retransmissions_received += 1,
        }
    }

    fn on_bye(&mut self, slot: u32, gen: u32) {
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        match call.state {
            State::Answered | State::Confirmed | State::Terminating => self.finish(slot, gen, Ok(())),
            _ => self.stats.out_of_call += 1,
        }
    }

    fn on_cancel(&mut self, now: Instant, slot: u32, gen: u32, src: SocketAddr, cancel: &Message<'_>) {
        self.respond(src, cancel, 200);
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        if !matches!(call.state, State::Ringing | State::NoAnswer) {
            return;
        }
        // 487 to the INVITE: rebuild it from the CANCEL, which carries the
        // same Via, From, To (no tag), Call-ID and CSeq number.
        call.cancelled = true;
        call.final_code = 487;
        let mut response = std::mem::take(&mut call.response);
        let parts = ResponseParts {
            to_tag: Some(&call.to_tag),
            ..ResponseParts::default()
        };
        sip::build_response(&mut response, cancel, 487, parts);
        // The CSeq method must be INVITE, not CANCEL.
        if let Some(pos) = find(&response, b" CANCEL\r\n") {
            response.splice(pos..pos + 7, b" INVITE".iter().copied());
        }
        let call = match self.calls.get_mut(slot, gen) {
            Some(c) => c,
            None => return,
        };
        call.response = response;
        if let Some(src) = call.src {
            self.out.push(src, &call.response);
        }
        call.state = State::Rejected;
        call.invite.clear();
        call.answer_at = None;
        call.interval = self.config.timers.t1;
        call.retransmit_at = Some(now + self.config.timers.t1);
        call.give_up_at = Some(now + self.config.timers.transaction_timeout());
    }

    fn on_response(&mut self, now: Instant, slot: u32, gen: u32, msg: &Message<'_>) {
        let t2 = self.config.timers.t2;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        if call.state != State::Terminating || msg.cseq().method != Method::Bye {
            self.stats.out_of_call += 1;
            return;
        }
        match msg.status().unwrap_or(0) {
            100..=199 => {
                call.interval = t2;
                call.retransmit_at = Some(now + t2);
            }
            200..=299 => {
                if let Some(t) = call.t_bye {
                    self.stats.record(Latency::ByeTo200, now.saturating_duration_since(t));
                }
                self.finish(slot, gen, Ok(()));
            }
            code => self.finish(slot, gen, Err(FailureReason::ByeUnexpectedCode(code))),
        }
    }

    fn on_timer(&mut self, now: Instant, slot: u32, gen: u32) {
        let timers = self.config.timers;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(call.give_up_at) {
            call.give_up_at = None;
            match call.state {
                State::NoAnswer => {
                    // Nobody cancelled: forget the call quietly.
                    let key = call.key;
                    self.index.remove(&key);
                    self.calls.remove(slot, gen);
                }
                State::Terminating => self.finish(slot, gen, Err(FailureReason::ByeRetransmissionLimit)),
                State::Confirmed => self.finish(slot, gen, Err(FailureReason::ByeTimeout)),
                _ => self.finish(slot, gen, Err(FailureReason::AckTimeout)),
            }
            return;
        }
        if due(call.answer_at) {
            call.answer_at = None;
            let invite = std::mem::take(&mut call.invite);
            if let Ok(msg) = scan_datagram(&invite) {
                self.send_final(now, slot, gen, &msg);
            }
            return;
        }
        if due(call.bye_at) {
            call.bye_at = None;
            if call.state == State::Confirmed {
                call.state = State::Terminating;
                call.t_bye = Some(now);
                call.interval = timers.t1;
                call.retransmit_at = Some(now + timers.t1);
                call.give_up_at = Some(now + timers.transaction_timeout());
                if let Some(dst) = call.bye_dst {
                    self.out.push(dst, &call.bye);
                }
            }
            return;
        }
        if due(call.retransmit_at) {
            let (bytes, dst) = match call.state {
                State::Answered | State::Rejected => (&call.response, call.src),
                State::Terminating => (&call.bye, call.bye_dst),
                _ => {
                    call.retransmit_at = None;
                    return;
                }
            };
            if let Some(dst) = dst {
                self.out.push(dst, bytes);
                self.stats.retransmissions += 1;
            }
            call.interval = (call.interval * 2).min(timers.t2);
            call.retransmit_at = Some(now + call.interval);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes our Contact URI into `out`: the bound address when specific
/// (`local`); bound to the unspecified address, the host the request was
/// addressed to (the Request-URI's: the address the caller or the proxy
/// used to reach this machine) with *our* port — never the Request-URI's
/// port, which through a proxy is the proxy's own, and would send the ACK
/// and BYE back to the proxy as their next hop.
fn contact_for(local: Option<&[u8]>, fallback: SocketAddr, msg: &Message<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"sip:sipload@");
    if let Some(l) = local {
        out.extend_from_slice(l);
        return;
    }
    match msg
        .request_uri()
        .and_then(|u| Uri::parse(u).ok())
        .filter(|u| !u.host.is_empty())
    {
        Some(u) => {
            out.extend_from_slice(u.host);
            out.push(b':');
            sip::put_num(out, u64::from(fallback.port()));
        }
        None => sip::put_addr(out, fallback),
    }
}

/// Builds the callee's BYE for the dialog of `invite` (RFC 3261 §12.1.1:
/// route set = Record-Route in order, remote target = Contact, From/To
/// swapped). Returns the first hop when it is an IP literal.
fn build_bye(
    out: &mut Vec<u8>,
    invite: &Message<'_>,
    to_tag: &[u8],
    local: SocketAddr,
    slot: u32,
    gen: u32,
    instance: u64,
) -> Option<SocketAddr> {
    out.clear();
    let target = sip::contact_uri(invite).unwrap_or(invite.from().uri);
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
    sip::put_addr(out, local);
    out.extend_from_slice(b";branch=z9hG4bK-sb");
    sip::put_hex(out, u64::from(slot));
    out.push(b'-');
    sip::put_hex(out, u64::from(gen));
    out.push(b'-');
    sip::put_hex(out, instance);
    out.extend_from_slice(b";rport\r\nMax-Forwards: 70\r\n");
    let first = sip::put_routes(out, invite, false);
    let to = invite.header(b"To").map(|h| h.value).unwrap_or_default();
    let from = invite.header(b"From").map(|h| h.value).unwrap_or_default();
    out.extend_from_slice(b"From: ");
    out.extend_from_slice(to);
    out.extend_from_slice(b";tag=");
    out.extend_from_slice(to_tag);
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(from);
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(invite.call_id());
    out.extend_from_slice(b"\r\nCSeq: 1 BYE\r\nUser-Agent: sipload\r\n");
    sip::put_body(out, None, b"");
    first.or_else(|| sip::uri_addr(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_keeps_our_port_behind_a_proxy_when_bound_to_any() {
        // Found driving sipload through siplb with `sipload uas -p 25081`
        // (bound to 0.0.0.0): the Contact named the proxy's port, so the
        // caller's ACK and BYE came back to the proxy as their target.
        let invite = b"INVITE sip:1234@127.0.0.1:25060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:25070;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1234@h>\r\n\
Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = siplb_parser::scan_datagram(invite).unwrap();
        let mut out = Vec::new();
        contact_for(None, "0.0.0.0:25081".parse().unwrap(), &m, &mut out);
        assert_eq!(out, b"sip:sipload@127.0.0.1:25081");
        contact_for(Some(b"10.0.0.9:5090"), "10.0.0.9:5090".parse().unwrap(), &m, &mut out);
        assert_eq!(out, b"sip:sipload@10.0.0.9:5090");
    }
}
