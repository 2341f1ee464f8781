//! The calling side: a sans-IO engine that places calls and drives each
//! one through its dialog.
//!
//! # Call protocol
//!
//! The runtime owns the socket and the clock and calls, in any order:
//! [`Uac::start_call`] to place a call (paced by the runtime),
//! [`Uac::handle_datagram`] for every datagram received, and
//! [`Uac::handle_timeout`] whenever [`Uac::poll_timeout`] has passed. After
//! each call it sends and clears [`Uac::outbox`]. Nothing here reads the
//! clock, sleeps or touches a socket, and nothing panics on what the peer
//! sends: malformed datagrams are counted in [`Stats::malformed`].
//!
//! # Call states
//!
//! ```text
//! Calling --1xx--> Proceeding --2xx--> Confirmed --hold--> Terminating --2xx--> done (success)
//!    |                 |  \--cancel timer / answer timeout--> Cancelling --487--> done
//!    |                 \--3xx-6xx (ACKed)--> done (failure: unexpected code)
//!    \--Timer B--> done (failure: retransmission limit)
//! Confirmed --BYE from callee (answered 200)--> done (success)
//! Terminating --Timer F--> done (failure: BYE retransmission limit)
//! ```
//!
//! Retransmissions follow RFC 3261 §17.1 over UDP: the INVITE at T1,
//! doubling (Timer A) until a provisional or Timer B (64·T1); BYE and
//! CANCEL at T1 doubling up to T2 (Timer E), or every T2 once a
//! provisional arrived, until Timer F (64·T1). A retransmitted 2xx is
//! ACKed again; a retransmitted final response for a call that has ended
//! is ACKed statelessly from the response itself (and a 2xx for a call we
//! no longer know is also ended with a BYE), so ended calls need no state.
//!
//! Calls are matched by Call-ID (which encodes slot and generation), then
//! by CSeq method and the top Via branch. The dialog follows Record-Route:
//! the route set of the 2xx is reversed into Route headers of the ACK and
//! BYE, which go to the remote target (Contact), through the first route.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use siplb_parser::{scan_datagram, Message, Method};

use crate::sip::{self, Outbox, ResponseParts, Timers};
use crate::slab::Slab;
use crate::stats::{FailureReason, Latency, Stats};

/// What the UAC sends.
#[derive(Clone, Debug)]
pub struct UacConfig {
    /// Where INVITEs go (the proxy or UAS).
    pub target: SocketAddr,
    /// Our address as written in Via, From and Contact.
    pub local: SocketAddr,
    /// Request-URI user part (`--service`).
    pub service: String,
    /// Time from ACK to BYE.
    pub hold: Duration,
    /// Send an SDP offer.
    pub sdp: bool,
    /// Give up on a call without final response after this long.
    pub answer_timeout: Duration,
    /// Fraction of calls (0..=1) cancelled during ringing.
    pub cancel_ratio: f64,
    /// Delay between the first 180/183 and the CANCEL.
    pub cancel_after: Duration,
    /// Retransmission timers.
    pub timers: Timers,
    /// Distinguishes this engine's Call-IDs from other engines and runs.
    pub instance: u64,
}

impl UacConfig {
    /// Defaults for a target: hold 0, SDP on, 32 s answer timeout.
    pub fn new(target: SocketAddr, local: SocketAddr) -> Self {
        UacConfig {
            target,
            local,
            service: "service".into(),
            hold: Duration::ZERO,
            sdp: true,
            answer_timeout: Duration::from_secs(32),
            cancel_ratio: 0.0,
            cancel_after: Duration::ZERO,
            timers: Timers::default(),
            instance: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Calling,
    Proceeding,
    Confirmed,
    Terminating,
    Cancelling,
}

#[derive(Default)]
struct Call {
    state: State,
    call_id: Vec<u8>,
    invite_branch: Vec<u8>,
    /// The INVITE as sent (for retransmission).
    invite: Vec<u8>,
    /// The ACK of the 2xx (re-sent on a retransmitted 2xx).
    ack: Vec<u8>,
    /// The BYE or CANCEL in progress (prebuilt BYE while confirmed).
    request: Vec<u8>,
    to_tag: Vec<u8>,
    /// Where in-dialog requests go.
    dialog_dst: Option<SocketAddr>,
    t_invite: Option<Instant>,
    t_bye: Option<Instant>,
    got_100: bool,
    got_180: bool,
    cancel_planned: bool,
    /// The outcome has been counted.
    counted: bool,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Option<Instant>,
    answer_deadline: Option<Instant>,
    cancel_at: Option<Instant>,
    hold_until: Option<Instant>,
}

impl Call {
    fn wakeup(&self) -> Option<Instant> {
        [
            self.retransmit_at,
            self.give_up_at,
            self.answer_deadline,
            self.cancel_at,
            self.hold_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The UAC engine of one thread; see the module docs for the protocol.
pub struct Uac {
    config: UacConfig,
    request_uri: Vec<u8>,
    /// `config.local` as text.
    local: Vec<u8>,
    calls: Slab<Call>,
    out: Outbox,
    stats: Stats,
    scratch: Vec<u8>,
    sdp: Vec<u8>,
    placed: u64,
    pending_outcomes: u64,
}

impl Uac {
    /// A new engine.
    pub fn new(config: UacConfig) -> Self {
        let mut request_uri = b"sip:".to_vec();
        request_uri.extend_from_slice(config.service.as_bytes());
        request_uri.push(b'@');
        sip::put_addr(&mut request_uri, config.target);
        let mut sdp = Vec::new();
        if config.sdp {
            sip::put_sdp(&mut sdp, config.local.ip(), config.instance & 0xffff_ffff);
        }
        let mut local = Vec::new();
        sip::put_addr(&mut local, config.local);
        Uac {
            config,
            request_uri,
            local,
            calls: Slab::new(),
            out: Outbox::default(),
            stats: Stats::default(),
            scratch: Vec::with_capacity(2048),
            sdp,
            placed: 0,
            pending_outcomes: 0,
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

    /// Calls with live state (including those cleaning up after their
    /// outcome was counted).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Calls started whose outcome is not counted yet.
    pub fn pending_outcomes(&self) -> u64 {
        self.pending_outcomes
    }

    #[cfg(test)]
    pub(crate) fn slab_capacity(&self) -> usize {
        self.calls.capacity()
    }

    /// When [`Uac::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls.next_wakeup()
    }

    /// Places a new call: sends its INVITE.
    pub fn start_call(&mut self, now: Instant) {
        let index = self.placed;
        self.placed += 1;
        let ratio = self.config.cancel_ratio;
        let cancel_planned = ratio > 0.0 && ((index + 1) as f64 * ratio).floor() > (index as f64 * ratio).floor();
        let (slot, gen) = self.calls.insert();
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let cfg = &self.config;
        call.state = State::Calling;
        call.call_id.clear();
        sip::put_hex(&mut call.call_id, u64::from(slot));
        call.call_id.push(b'-');
        sip::put_hex(&mut call.call_id, u64::from(gen));
        call.call_id.push(b'-');
        sip::put_hex(&mut call.call_id, cfg.instance);
        call.call_id.extend_from_slice(b"@sipload");
        call.invite_branch.clear();
        call.invite_branch.extend_from_slice(b"z9hG4bK-");
        call.invite_branch
            .extend_from_slice(&call.call_id[..call.call_id.len() - 8]);
        call.invite_branch.extend_from_slice(b"-i");
        call.to_tag.clear();
        call.ack.clear();
        call.request.clear();
        call.dialog_dst = None;
        call.t_invite = Some(now);
        call.t_bye = None;
        call.got_100 = false;
        call.got_180 = false;
        call.cancel_planned = cancel_planned;
        call.counted = false;
        call.retransmit_at = Some(now + cfg.timers.t1);
        call.interval = cfg.timers.t1;
        call.give_up_at = Some(now + cfg.timers.transaction_timeout());
        call.answer_deadline = Some(now + cfg.answer_timeout);
        call.cancel_at = None;
        call.hold_until = None;

        let b = &mut call.invite;
        b.clear();
        b.extend_from_slice(b"INVITE ");
        b.extend_from_slice(&self.request_uri);
        b.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
        b.extend_from_slice(&self.local);
        b.extend_from_slice(b";branch=");
        b.extend_from_slice(&call.invite_branch);
        b.extend_from_slice(b";rport\r\nMax-Forwards: 70\r\nFrom: \"sipload\" <sip:sipload@");
        b.extend_from_slice(&self.local);
        b.extend_from_slice(b">;tag=");
        b.extend_from_slice(&call.call_id[..call.call_id.len() - 8]);
        b.extend_from_slice(b"\r\nTo: <");
        b.extend_from_slice(&self.request_uri);
        b.extend_from_slice(b">\r\nCall-ID: ");
        b.extend_from_slice(&call.call_id);
        b.extend_from_slice(b"\r\nCSeq: 1 INVITE\r\nContact: <sip:sipload@");
        b.extend_from_slice(&self.local);
        b.extend_from_slice(b">\r\nUser-Agent: sipload\r\nSubject: sipload call\r\n");
        if self.sdp.is_empty() {
            sip::put_body(b, None, b"");
        } else {
            sip::put_body(b, Some(b"application/sdp"), &self.sdp);
        }
        self.out.push(cfg.target, &call.invite);
        let wake = call.wakeup();
        self.calls.schedule(slot, gen, wake);
        self.stats.calls_started += 1;
        self.pending_outcomes += 1;
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        self.stats.datagrams_received += 1;
        let Ok(msg) = scan_datagram(data) else {
            self.stats.malformed += 1;
            return;
        };
        if msg.is_request() {
            self.on_request(src, &msg);
            return;
        }
        let found = self.lookup(msg.call_id());
        match found {
            Some((slot, gen)) => {
                self.on_response(now, slot, gen, src, &msg);
                self.reschedule(slot, gen);
            }
            None => self.stateless_response(src, &msg),
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
        let mut parts = call_id.splitn(3, |&c| c == b'-');
        let slot = sip::parse_hex(parts.next()?)?;
        let gen = sip::parse_hex(parts.next()?)?;
        let (slot, gen) = (u32::try_from(slot).ok()?, u32::try_from(gen).ok()?);
        let call = self.calls.get_mut(slot, gen)?;
        (call.call_id == call_id).then_some((slot, gen))
    }

    fn reschedule(&mut self, slot: u32, gen: u32) {
        if let Some(call) = self.calls.get_mut(slot, gen) {
            let wake = call.wakeup();
            self.calls.schedule(slot, gen, wake);
        }
    }

    /// Counts the outcome once and, when `free`, drops the call.
    fn finish(&mut self, slot: u32, gen: u32, outcome: Result<bool, FailureReason>, free: bool) {
        if let Some(call) = self.calls.get_mut(slot, gen) {
            if !call.counted {
                call.counted = true;
                self.pending_outcomes = self.pending_outcomes.saturating_sub(1);
                match outcome {
                    Ok(cancelled) => {
                        self.stats.calls_succeeded += 1;
                        if cancelled {
                            self.stats.calls_cancelled += 1;
                        }
                    }
                    Err(reason) => self.stats.fail(reason),
                }
            }
            if free {
                self.calls.remove(slot, gen);
            }
        }
    }

    fn on_response(&mut self, now: Instant, slot: u32, gen: u32, src: SocketAddr, msg: &Message<'_>) {
        let code = msg.status().unwrap_or(0);
        let method = msg.cseq().method;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let branch_ok = msg.top_via().branch == Some(&call.invite_branch[..]);
        match method {
            Method::Invite if branch_ok => self.on_invite_response(now, slot, gen, code, src, msg),
            Method::Bye | Method::Cancel => self.on_request_response(now, slot, gen, method, code),
            _ => self.stats.out_of_call += 1,
        }
    }

    fn on_invite_response(&mut self, now: Instant, slot: u32, gen: u32, code: u16, src: SocketAddr, msg: &Message<'_>) {
        let hold = self.config.hold;
        let cancel_after = self.config.cancel_after;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let since = call.t_invite.map(|t| now.saturating_duration_since(t));
        let state = call.state;
        match code {
            100..=199 => {
                if call.state == State::Calling {
                    call.state = State::Proceeding;
                    call.retransmit_at = None;
                    call.give_up_at = None;
                }
                if code == 100 && !call.got_100 {
                    call.got_100 = true;
                    if let Some(d) = since {
                        self.stats.record(Latency::InviteTo100, d);
                    }
                } else if code > 100 && !call.got_180 {
                    call.got_180 = true;
                    if let Some(d) = since {
                        self.stats.record(Latency::InviteTo180, d);
                    }
                    if call.cancel_planned && call.state == State::Proceeding && call.cancel_at.is_none() {
                        call.cancel_at = Some(now + cancel_after);
                    }
                }
            }
            200..=299 => match state {
                State::Calling | State::Proceeding | State::Cancelling => {
                    if let Some(d) = since {
                        self.stats.record(Latency::InviteTo200, d);
                    }
                    let was_cancelling = call.state == State::Cancelling;
                    call.state = State::Confirmed;
                    sip::set(&mut call.to_tag, msg.to_tag().unwrap_or_default());
                    let mut branch = std::mem::take(&mut self.scratch);
                    sip::set(&mut branch, &call.invite_branch);
                    branch.push(b'a');
                    let dst = sip::build_ack(&mut call.ack, msg, &self.request_uri, &branch, &self.local, src);
                    call.dialog_dst = Some(dst);
                    // Prebuild the BYE: same dialog, new transaction.
                    let b = &mut call.request;
                    b.clear();
                    b.extend_from_slice(b"BYE ");
                    b.extend_from_slice(sip::contact_uri(msg).unwrap_or(&self.request_uri));
                    b.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
                    b.extend_from_slice(&self.local);
                    b.extend_from_slice(b";branch=");
                    branch.pop();
                    branch.push(b'b');
                    b.extend_from_slice(&branch);
                    b.extend_from_slice(b";rport\r\nMax-Forwards: 70\r\n");
                    sip::put_routes(b, msg, true);
                    sip::put_dialog_headers(b, msg, 2, b"BYE");
                    b.extend_from_slice(b"User-Agent: sipload\r\n");
                    sip::put_body(b, None, b"");
                    self.scratch = branch;
                    self.out.push(dst, &call.ack);
                    call.retransmit_at = None;
                    call.give_up_at = None;
                    call.answer_deadline = None;
                    call.cancel_at = None;
                    call.hold_until = Some(if was_cancelling { now } else { now + hold });
                }
                State::Confirmed | State::Terminating => {
                    self.stats.retransmissions_received += 1;
                    if msg.to_tag() == Some(&call.to_tag[..]) {
                        if let Some(dst) = call.dialog_dst {
                            self.out.push(dst, &call.ack);
                        }
                    } else {
                        // A second dialog (forking): accept and end it.
                        self.stateless_response(src, msg);
                    }
                }
            },
            300..=699 => {
                let mut ack = std::mem::take(&mut self.scratch);
                let dst = sip::build_ack(&mut ack, msg, &self.request_uri, b"", &self.local, src);
                self.out.push(dst, &ack);
                self.scratch = ack;
                match state {
                    State::Calling | State::Proceeding => {
                        self.finish(slot, gen, Err(FailureReason::UnexpectedCode(code)), true);
                    }
                    State::Cancelling => {
                        let outcome = if code == 487 {
                            Ok(true)
                        } else {
                            Err(FailureReason::UnexpectedCode(code))
                        };
                        self.finish(slot, gen, outcome, true);
                    }
                    State::Confirmed | State::Terminating => self.stats.out_of_call += 1,
                }
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn on_request_response(&mut self, now: Instant, slot: u32, gen: u32, method: Method<'_>, code: u16) {
        let t2 = self.config.timers.t2;
        let timeout = self.config.timers.transaction_timeout();
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        match (method, call.state) {
            (Method::Bye, State::Terminating) => match code {
                100..=199 => {
                    call.interval = t2;
                    call.retransmit_at = Some(now + t2);
                }
                200..=299 => {
                    if let Some(t) = call.t_bye {
                        self.stats.record(Latency::ByeTo200, now.saturating_duration_since(t));
                    }
                    if let Some(t) = call.t_invite {
                        self.stats.record(Latency::CallLength, now.saturating_duration_since(t));
                    }
                    self.finish(slot, gen, Ok(false), true);
                }
                _ => self.finish(slot, gen, Err(FailureReason::ByeUnexpectedCode(code)), true),
            },
            (Method::Cancel, State::Cancelling) => {
                // Answered (or refused because the INVITE completed): stop
                // retransmitting and wait for the INVITE's final response.
                if code >= 100 {
                    call.retransmit_at = None;
                }
                if code >= 200 {
                    call.give_up_at = Some(now + timeout);
                }
            }
            // A 200 to a CANCEL that lost the race with the 2xx, or a
            // retransmitted response to a BYE or CANCEL: nothing to do.
            _ => {}
        }
    }

    fn on_timer(&mut self, now: Instant, slot: u32, gen: u32) {
        let timers = self.config.timers;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let dst = call.dialog_dst.unwrap_or(self.config.target);

        if due(call.give_up_at) {
            call.give_up_at = None;
            let reason = match call.state {
                State::Calling => FailureReason::RetransmissionLimit,
                State::Terminating => FailureReason::ByeRetransmissionLimit,
                _ => FailureReason::CancelTimeout,
            };
            self.finish(slot, gen, Err(reason), true);
            return;
        }
        if due(call.answer_deadline) {
            call.answer_deadline = None;
            match call.state {
                State::Proceeding => {
                    // Count the timeout now; CANCEL so the callee cleans up.
                    self.send_cancel(now, slot, gen);
                    self.finish(slot, gen, Err(FailureReason::Timeout), false);
                }
                State::Calling => {
                    self.finish(slot, gen, Err(FailureReason::Timeout), true);
                    return;
                }
                _ => {}
            }
        }
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        if due(call.cancel_at) {
            call.cancel_at = None;
            if call.state == State::Proceeding {
                self.send_cancel(now, slot, gen);
            }
        }
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        if due(call.hold_until) {
            call.hold_until = None;
            if call.state == State::Confirmed {
                call.state = State::Terminating;
                call.t_bye = Some(now);
                call.interval = timers.t1;
                call.retransmit_at = Some(now + timers.t1);
                call.give_up_at = Some(now + timers.transaction_timeout());
                self.out.push(dst, &call.request);
            }
        }
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        if due(call.retransmit_at) {
            if matches!(call.state, State::Proceeding | State::Confirmed) {
                call.retransmit_at = None;
                return;
            }
            self.stats.retransmissions += 1;
            match call.state {
                State::Calling => {
                    self.out.push(self.config.target, &call.invite);
                    call.interval *= 2;
                }
                State::Terminating => {
                    self.out.push(dst, &call.request);
                    call.interval = (call.interval * 2).min(timers.t2);
                }
                State::Cancelling => {
                    self.out.push(self.config.target, &call.request);
                    call.interval = (call.interval * 2).min(timers.t2);
                }
                State::Proceeding | State::Confirmed => {}
            }
            call.retransmit_at = Some(now + call.interval);
        }
    }

    /// CANCEL of the pending INVITE (RFC 3261 §9.1): same branch, Call-ID,
    /// From, To and CSeq number as the INVITE.
    fn send_cancel(&mut self, now: Instant, slot: u32, gen: u32) {
        let timers = self.config.timers;
        let Some(call) = self.calls.get_mut(slot, gen) else {
            return;
        };
        let Ok(invite) = scan_datagram(&call.invite) else {
            return;
        };
        let b = &mut call.request;
        b.clear();
        b.extend_from_slice(b"CANCEL ");
        b.extend_from_slice(&self.request_uri);
        b.extend_from_slice(b" SIP/2.0\r\nVia: ");
        b.extend_from_slice(invite.top_via().value);
        b.extend_from_slice(b"\r\nMax-Forwards: 70\r\n");
        sip::put_dialog_headers(b, &invite, 1, b"CANCEL");
        sip::put_body(b, None, b"");
        call.state = State::Cancelling;
        call.interval = timers.t1;
        call.retransmit_at = Some(now + timers.t1);
        call.give_up_at = Some(now + timers.transaction_timeout());
        self.out.push(self.config.target, &call.request);
    }

    fn on_request(&mut self, src: SocketAddr, msg: &Message<'_>) {
        let method = msg.method().unwrap_or(Method::Ack);
        let code = match method {
            Method::Ack => return,
            Method::Bye => {
                match self.lookup(msg.call_id()) {
                    Some((slot, gen)) => {
                        let state = self.calls.get_mut(slot, gen).map(|c| c.state);
                        if matches!(state, Some(State::Confirmed | State::Terminating)) {
                            self.finish(slot, gen, Ok(false), true);
                        } else {
                            self.stats.out_of_call += 1;
                        }
                    }
                    // A retransmitted BYE for a call already ended.
                    None => self.stats.out_of_call += 1,
                }
                200
            }
            Method::Options => 200,
            Method::Cancel => 481,
            _ => 501,
        };
        let mut out = std::mem::take(&mut self.scratch);
        sip::build_response(&mut out, msg, code, ResponseParts::default());
        self.out.push(src, &out);
        self.scratch = out;
    }

    /// A response for a call we do not know (ended or never ours): ACK a
    /// final INVITE response so the peer stops retransmitting, and end a
    /// 2xx dialog with a BYE.
    fn stateless_response(&mut self, src: SocketAddr, msg: &Message<'_>) {
        self.stats.out_of_call += 1;
        let code = msg.status().unwrap_or(0);
        if msg.cseq().method != Method::Invite || code < 200 {
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        let dst = sip::build_ack(&mut out, msg, &self.request_uri, b"z9hG4bK-sl-ack", &self.local, src);
        self.out.push(dst, &out);
        if (200..300).contains(&code) {
            out.clear();
            out.extend_from_slice(b"BYE ");
            out.extend_from_slice(sip::contact_uri(msg).unwrap_or(&self.request_uri));
            out.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/UDP ");
            out.extend_from_slice(&self.local);
            out.extend_from_slice(b";branch=z9hG4bK-sl-bye;rport\r\nMax-Forwards: 70\r\n");
            sip::put_routes(&mut out, msg, true);
            sip::put_dialog_headers(&mut out, msg, msg.cseq().seq.saturating_add(1), b"BYE");
            sip::put_body(&mut out, None, b"");
            self.out.push(dst, &out);
        }
        self.scratch = out;
    }
}
