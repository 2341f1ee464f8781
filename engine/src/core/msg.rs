//! Message helpers: identifiers siplb writes (branch, dialog parameter),
//! locally generated messages (replies, ACK, CANCEL), next-hop resolution.
//!
//! Everything here is pure: bytes in, bytes out.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use siplb_parser::{HeaderKind, Message, Rport, Uri, Via};

/// Prefix of every branch siplb generates (after the RFC 3261 cookie).
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKslb";
/// Name of the Record-Route URI parameter that identifies a dialog.
pub const DIALOG_PARAM: &[u8] = b"did";

/// What siplb encodes in a branch: owner, transaction handle, attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchId {
    /// Process epoch (distinguishes restarts).
    pub epoch: u32,
    /// Owning worker.
    pub worker: u16,
    /// Transaction slot.
    pub index: u32,
    /// Transaction slot generation.
    pub generation: u32,
    /// Attempt number (failover).
    pub attempt: u8,
}

impl BranchId {
    /// The branch text.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        self.encode_into(&mut v);
        v
    }

    /// Appends the branch text to `out` (no formatting machinery: this
    /// runs for every relayed request).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(BRANCH_PREFIX);
        // The owner and slot are written as a dialog id is.
        DialogId {
            epoch: self.epoch,
            worker: self.worker,
            index: self.index,
            generation: self.generation,
        }
        .encode_into(out);
        out.push(b'.');
        push_hex(out, u64::from(self.attempt));
    }

    /// Decodes a branch written by [`BranchId::encode`].
    pub fn decode(branch: &[u8]) -> Option<BranchId> {
        let mut rest = branch.strip_prefix(BRANCH_PREFIX)?;
        let mut next = || hex_field(&mut rest);
        let id = BranchId {
            epoch: u32::try_from(next()?).ok()?,
            worker: u16::try_from(next()?).ok()?,
            index: u32::try_from(next()?).ok()?,
            generation: u32::try_from(next()?).ok()?,
            attempt: u8::try_from(next()?).ok()?,
        };
        Some(id)
    }
}

/// What siplb encodes in its Record-Route: owner and dialog handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialogId {
    /// Process epoch.
    pub epoch: u32,
    /// Owning worker.
    pub worker: u16,
    /// Dialog slot.
    pub index: u32,
    /// Dialog slot generation.
    pub generation: u32,
}

impl DialogId {
    /// The parameter value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        self.encode_into(&mut v);
        v
    }

    /// Appends the parameter value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        push_hex(out, u64::from(self.epoch));
        out.push(b'.');
        push_hex(out, u64::from(self.worker));
        out.push(b'.');
        push_hex(out, u64::from(self.index));
        out.push(b'.');
        push_hex(out, u64::from(self.generation));
    }

    /// Decodes a parameter value.
    pub fn decode(value: &[u8]) -> Option<DialogId> {
        let mut rest = value;
        let mut next = || hex_field(&mut rest);
        Some(DialogId {
            epoch: u32::try_from(next()?).ok()?,
            worker: u16::try_from(next()?).ok()?,
            index: u32::try_from(next()?).ok()?,
            generation: u32::try_from(next()?).ok()?,
        })
    }
}

/// The next `.`-separated field of `rest` as 1 to 16 hex digits (either
/// case); `rest` moves past the field and its dot. Bytes after the last
/// field a caller asks for are not looked at.
fn hex_field(rest: &mut &[u8]) -> Option<u64> {
    let s = *rest;
    let mut n = 0u64;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let d = match b {
            b'.' => break,
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        if i == 16 {
            return None;
        }
        n = n << 4 | u64::from(d);
        i += 1;
    }
    if i == 0 {
        return None;
    }
    *rest = s.get(i + 1..).unwrap_or_default();
    Some(n)
}

/// Appends `n` in lower-case hex without leading zeros.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The process-wide hash state: one random seed for all workers, so they
/// agree on every hash (owner by Call-ID, transaction keys, local To
/// tags), while an outsider cannot aim collisions at the transaction
/// index.
fn hash_state() -> &'static foldhash::fast::FixedState {
    static STATE: OnceLock<foldhash::fast::FixedState> = OnceLock::new();
    STATE.get_or_init(|| foldhash::fast::FixedState::with_seed(foldhash::fast::RandomState::default().hash_one(0u64)))
}

/// A 64-bit hash of some byte strings: the same for the whole process,
/// seeded at random per process. Each part's length is mixed in, so
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = hash_state().build_hasher();
    for p in parts {
        h.write_usize(p.len());
        h.write(p);
    }
    h.finish()
}

/// Parses an IP host as written in SIP (`1.2.3.4` or `[::1]`).
pub fn host_ip(host: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(host) {
        return Some(IpAddr::V4(v4));
    }
    let s = std::str::from_utf8(host).ok()?;
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// `a.b.c.d` as std's `Ipv4Addr` parser reads it (1 to 3 digits per
/// octet, no leading zero, at most 255), by hand: it runs for every Route
/// and Request-URI. `None` for anything else (the caller falls back to std).
fn dotted_quad(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut n = 0u32;
        while let Some(&b) = s.get(i) {
            if !b.is_ascii_digit() || i - start == 3 {
                break;
            }
            n = n * 10 + u32::from(b - b'0');
            i += 1;
        }
        let len = i - start;
        if len == 0 || len > 1 && s[start] == b'0' {
            return None;
        }
        *octet = u8::try_from(n).ok()?;
    }
    (i == s.len()).then(|| std::net::Ipv4Addr::from(octets))
}

/// The address of a URI with an IP host (default port 5060, 5061 for
/// `sips:` and `;transport=tls`).
pub fn uri_addr(uri: &[u8]) -> Option<SocketAddr> {
    let u = Uri::parse(uri).ok()?;
    let default = super::Transport::of_uri(&u).unwrap_or_default().default_port();
    Some(SocketAddr::new(host_ip(u.host)?, u.port.unwrap_or(default)))
}

/// Where a response goes over a stream when the connection its request
/// came on has closed (RFC 3261 §18.2.2): the `received` address (else
/// the sent-by host) of its top Via, with the sent-by port (else the
/// transport's default). `None` for a request or an unusable Via.
pub fn stream_fallback(payload: &[u8]) -> Option<SocketAddr> {
    let m = siplb_parser::scan_datagram(payload).ok()?;
    if m.is_request() {
        return None;
    }
    let via = m.top_via();
    let ip = match via.received {
        Some(r) => host_ip(r)?,
        None => host_ip(via.host)?,
    };
    let default = match via.transport() {
        siplb_parser::Transport::Tls => 5061,
        _ => 5060,
    };
    Some(SocketAddr::new(ip, via.port.unwrap_or(default)))
}

/// Where a response goes according to a Via (RFC 3261 §18.2.2, RFC 3581):
/// `received`/`rport` when present, else sent-by.
pub fn via_addr(via: &Via<'_>) -> Option<SocketAddr> {
    let ip = match via.received {
        Some(r) => host_ip(r)?,
        None => host_ip(via.host)?,
    };
    let port = match via.rport {
        Rport::Value(p) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// Text of an IP for a `received` parameter (IPv6 without brackets is
/// what RFC 3261 grammar allows there: `IPv6address`).
pub fn ip_text(ip: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    push_ip(&mut out, ip);
    out
}

/// Appends the text of an IP (IPv4 by hand: it is on every relayed request).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a Via value with `received` and `rport` set for a reply to `src`.
fn via_for_reply(out: &mut Vec<u8>, via: &Via<'_>, src: SocketAddr) {
    let v = via.value;
    let params_at = v.len() - via.params.len();
    out.extend_from_slice(&v[..params_at]);
    let mut rport_requested = false;
    for p in via.params.split(|&b| b == b';').filter(|p| !p.is_empty()) {
        let name = p.split(|&b| b == b'=').next().unwrap_or_default();
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"rport") {
            rport_requested = true;
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p.trim_ascii());
    }
    out.extend_from_slice(b";received=");
    push_ip(out, src.ip());
    if rport_requested {
        out.extend_from_slice(b";rport=");
        push_decimal(out, u64::from(src.port()));
    }
}

/// A locally generated response to `req` received from `src`.
///
/// Copies Via (with received/rport on the top one), From, To (adding
/// `to_tag` when the request has none and the code is above 100),
/// Call-ID and CSeq; then `extra` header lines (each ending in CRLF).
pub fn reply(req: &Message<'_>, src: SocketAddr, code: u16, reason: &str, to_tag: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    // The top Via gets received/rport; the others are copied as they are
    // (the scan parses only the top one of a request).
    for (i, v) in req.via_values().enumerate() {
        out.extend_from_slice(b"Via: ");
        if i == 0 {
            via_for_reply(&mut out, &req.top_via(), src);
        } else {
            out.extend_from_slice(v);
        }
        out.extend_from_slice(b"\r\n");
    }
    for h in req.headers_of(HeaderKind::From) {
        line(&mut out, b"From", h.value);
    }
    for h in req.headers_of(HeaderKind::To) {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(h.value);
        if code > 100 && req.to_tag().is_none() {
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(to_tag);
        }
        out.extend_from_slice(b"\r\n");
    }
    line(&mut out, b"Call-ID", req.call_id());
    for h in req.headers_of(HeaderKind::CSeq) {
        line(&mut out, b"CSeq", h.value);
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"Server: siplb\r\nContent-Length: 0\r\n\r\n");
    out
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The hop-by-hop ACK for a non-2xx final `resp` to the INVITE `sent`
/// (as siplb sent it), RFC 3261 §17.1.1.3. Without `sent` (the
/// transaction is gone) the Request-URI is taken from To.
pub fn ack_for(sent: Option<&Message<'_>>, resp: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    out.extend_from_slice(b"ACK ");
    out.extend_from_slice(sent.and_then(|s| s.request_uri()).unwrap_or(resp.to().uri));
    out.extend_from_slice(b" SIP/2.0\r\n");
    line(&mut out, b"Via", resp.top_via().value);
    for r in sent.iter().flat_map(|s| s.route_values()) {
        line(&mut out, b"Route", r);
    }
    let cseq = sent.map_or(resp.cseq().seq, |s| s.cseq().seq);
    out.extend_from_slice(b"Max-Forwards: 70\r\n");
    for h in resp.headers_of(HeaderKind::From) {
        line(&mut out, b"From", h.value);
    }
    for h in resp.headers_of(HeaderKind::To) {
        line(&mut out, b"To", h.value);
    }
    line(&mut out, b"Call-ID", resp.call_id());
    let _ = write!(out, "CSeq: {cseq} ACK\r\n");
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// The CANCEL for the INVITE `sent` (as siplb sent it), RFC 3261 §9.1.
pub fn cancel_for(sent: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    out.extend_from_slice(b"CANCEL ");
    out.extend_from_slice(sent.request_uri().unwrap_or(b"sip:invalid"));
    out.extend_from_slice(b" SIP/2.0\r\n");
    line(&mut out, b"Via", sent.top_via().value);
    for r in sent.route_values() {
        line(&mut out, b"Route", r);
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\n");
    for h in sent.headers_of(HeaderKind::From) {
        line(&mut out, b"From", h.value);
    }
    for h in sent.headers_of(HeaderKind::To) {
        line(&mut out, b"To", h.value);
    }
    line(&mut out, b"Call-ID", sent.call_id());
    let _ = write!(out, "CSeq: {} CANCEL\r\n", sent.cseq().seq);
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// What a BYE siplb sends on its own (admin `dlg_end`) says about the
/// dialog, as seen from the side it goes to.
#[derive(Clone, Copy, Debug)]
pub struct ByeParts<'a> {
    pub ruri: &'a [u8],
    /// The route set towards that side as one `Route` value (entries
    /// joined by `", "`, in order; empty: no Route).
    pub routes: &'a [u8],
    pub from: &'a [u8],
    pub to: &'a [u8],
    pub call_id: &'a [u8],
    pub cseq: u32,
}

/// A BYE siplb sends on its own (admin `dlg_end`): `via` is the sent-by
/// part of its Via (`SIP/2.0/UDP host:port`).
pub fn bye(via: &[u8], branch: &[u8], parts: &ByeParts<'_>) -> Vec<u8> {
    let ByeParts {
        ruri,
        routes,
        from,
        to,
        call_id,
        cseq,
    } = *parts;
    let mut out = Vec::with_capacity(400);
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(ruri);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(via);
    out.extend_from_slice(b";branch=");
    out.extend_from_slice(branch);
    out.extend_from_slice(b";rport\r\n");
    if !routes.is_empty() {
        line(&mut out, b"Route", routes);
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\n");
    line(&mut out, b"From", from);
    line(&mut out, b"To", to);
    line(&mut out, b"Call-ID", call_id);
    let _ = write!(out, "CSeq: {cseq} BYE\r\n");
    out.extend_from_slice(b"Reason: SIP;cause=200;text=\"ended by the operator\"\r\n");
    out.extend_from_slice(b"User-Agent: siplb\r\nContent-Length: 0\r\n\r\n");
    out
}

/// Best effort 400 for a datagram the scanner rejected: possible only when
/// it looks like a request and its Via, From, To, Call-ID and CSeq lines can
/// be found by a plain line search. `None`: drop it.
pub fn bad_request(bytes: &[u8], src: SocketAddr, why: &str) -> Option<Vec<u8>> {
    let text = bytes;
    let first_end = memchr_nl(text)?;
    let first = &text[..first_end];
    if first.starts_with(b"SIP/") || !first.ends_with(b"SIP/2.0") && !first.ends_with(b"SIP/2.0\r") {
        return None;
    }
    let mut have = [false; 5];
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "SIP/2.0 400 Bad Request ({why})\r\n");
    let mut rest = &text[first_end + 1..];
    let mut first_via = true;
    while let Some(end) = memchr_nl(rest) {
        let l = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if l.is_empty() {
            break;
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = l[..colon].trim_ascii();
        let value = l[colon + 1..].trim_ascii();
        let idx = [
            &[&b"via"[..], b"v"][..],
            &[b"from", b"f"],
            &[b"to", b"t"],
            &[b"call-id", b"i"],
            &[b"cseq"],
        ]
        .iter()
        .position(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        let Some(idx) = idx else { continue };
        have[idx] = true;
        if idx == 0 && first_via {
            first_via = false;
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(value);
            out.extend_from_slice(b";received=");
            out.extend_from_slice(&ip_text(src.ip()));
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
    }
    if have.iter().all(|&h| h) {
        out.extend_from_slice(b"Server: siplb\r\nContent-Length: 0\r\n\r\n");
        Some(out)
    } else {
        None
    }
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// The URI of the first Contact value that parses, as
/// `Message::contacts().next()` finds it (`*` for `Contact: *`), or empty.
/// A Contact line without a comma holds one value: it is parsed directly,
/// without the splitting iterator; lines with commas take the general path.
pub fn first_contact<'a>(m: &Message<'a>) -> &'a [u8] {
    for h in m.headers_of(HeaderKind::Contact) {
        if h.value.contains(&b',') {
            return m.contacts().next().map_or(&b""[..], |c| c.uri);
        }
        if h.value == b"*" {
            return h.value;
        }
        if let Ok(na) = siplb_parser::NameAddr::parse(h.value) {
            return na.uri;
        }
    }
    b""
}

/// What the core needs of a Route value (or a Request-URI): where it
/// points, over which transport, and siplb's dialog mark, from one parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteMark {
    /// The address of the URI (IP hosts only; port 5060 when absent), to
    /// compare with siplb's own addresses.
    pub addr: Option<SocketAddr>,
    /// Where to send to: as `addr`, with the default port of the URI's
    /// transport when absent (5061 for `sips:` and `;transport=tls`).
    pub hop: Option<SocketAddr>,
    /// The transport the URI names, if it names one.
    pub transport: Option<super::Transport>,
    /// The `did` parameter, when it decodes.
    pub dialog: Option<DialogId>,
}

impl RouteMark {
    /// Parses a Route value; `None` when it is not a name-addr with a URI.
    pub fn parse(value: &[u8]) -> Option<RouteMark> {
        let na = siplb_parser::NameAddr::parse(value).ok()?;
        RouteMark::parse_uri(na.uri)
    }

    /// Parses a bare URI (a Request-URI).
    pub fn parse_uri(uri: &[u8]) -> Option<RouteMark> {
        let u = Uri::parse(uri).ok()?;
        // One pass over the parameters for the first `transport` and the
        // first `did` (what `Transport::of_uri` and `Uri::param` find).
        let (mut transport_param, mut did) = (None, None);
        for (name, value) in u.param_iter() {
            if transport_param.is_none() && name.eq_ignore_ascii_case(b"transport") {
                transport_param = Some(value);
            } else if did.is_none() && name.eq_ignore_ascii_case(DIALOG_PARAM) {
                did = Some(value);
            }
            if transport_param.is_some() && did.is_some() {
                break;
            }
        }
        let transport = if u.scheme == siplb_parser::Scheme::Sips {
            Some(super::Transport::Tls)
        } else {
            transport_param.flatten().and_then(super::Transport::from_param)
        };
        let ip = host_ip(u.host);
        Some(RouteMark {
            addr: ip.map(|ip| SocketAddr::new(ip, u.port.unwrap_or(5060))),
            hop: ip.map(|ip| SocketAddr::new(ip, u.port.unwrap_or(transport.unwrap_or_default().default_port()))),
            transport,
            dialog: did.flatten().and_then(DialogId::decode),
        })
    }

    /// Whether the route names one of `ours`.
    pub fn is_ours(&self, ours: &[SocketAddr]) -> bool {
        self.addr.is_some_and(|a| ours.contains(&a))
    }
}

/// True when a Route value names one of `ours` (host and port).
pub fn route_is_ours(value: &[u8], ours: &[SocketAddr]) -> bool {
    let Ok(na) = siplb_parser::NameAddr::parse(value) else {
        return false;
    };
    let Ok(u) = Uri::parse(na.uri) else {
        return false;
    };
    let Some(ip) = host_ip(u.host) else {
        return false;
    };
    let port = u.port.unwrap_or(5060);
    ours.iter().any(|a| a.ip() == ip && a.port() == port)
}

/// The dialog id in a Route value written by siplb, if any.
pub fn route_dialog(value: &[u8]) -> Option<DialogId> {
    let na = siplb_parser::NameAddr::parse(value).ok()?;
    let u = Uri::parse(na.uri).ok()?;
    DialogId::decode(u.param(DIALOG_PARAM)??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_and_address_text_match_std_formatting() {
        for n in [0u64, 1, 9, 10, 15, 16, 255, 65535, 1 << 32, u64::MAX] {
            let (mut hex, mut dec) = (Vec::new(), Vec::new());
            push_hex(&mut hex, n);
            push_decimal(&mut dec, n);
            assert_eq!(hex, format!("{n:x}").into_bytes());
            assert_eq!(dec, n.to_string().into_bytes());
        }
        for ip in ["0.0.0.0", "127.0.0.1", "203.0.113.255", "::1", "2001:db8::5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string().into_bytes());
        }
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        assert_eq!(hash(&[b"call-1"]), hash(&[b"call-1"]));
    }

    #[test]
    fn host_ip_reads_what_std_reads() {
        let cases: &[&[u8]] = &[
            b"127.0.0.1",
            b"0.0.0.0",
            b"255.255.255.255",
            b"256.0.0.1",
            b"01.2.3.4",
            b"1.2.3.04",
            b"1.2.3.0",
            b"1.2.3",
            b"1.2.3.4.",
            b"1.2.3.4.5",
            b".1.2.3",
            b"1..2.3",
            b"1234.1.1.1",
            b"1.2.3.4 ",
            b"+1.2.3.4",
            b"1.2.3.a",
            b"",
            b"[::1]",
            b"[2001:db8::5]",
            b"::1",
            b"host.example",
            b"[1.2.3.4]",
            b"0001.2.3.4",
            b"10.0.0.255",
            b"999.1.1.1",
            b"1.2.3.-4",
        ];
        for &c in cases {
            let text = std::str::from_utf8(c).unwrap();
            let std = text
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok();
            assert_eq!(host_ip(c), std, "{text}");
        }
    }

    #[test]
    fn ids_round_trip() {
        let b = BranchId {
            epoch: 0xdead,
            worker: 3,
            index: 77,
            generation: 9,
            attempt: 2,
        };
        let text = b.encode();
        assert!(text.starts_with(b"z9hG4bK"));
        assert_eq!(BranchId::decode(&text), Some(b));
        assert_eq!(BranchId::decode(b"z9hG4bKslb1.2"), None);
        assert_eq!(BranchId::decode(b"z9hG4bK1234"), None);
        // Hex in either case, 1 to 16 digits per field, anything after the
        // last field ignored (as `split` and `to_digit` read it before).
        let b2 = BranchId {
            epoch: 0xDEAD,
            worker: 0xa,
            index: 1,
            generation: 2,
            attempt: 3,
        };
        assert_eq!(BranchId::decode(b"z9hG4bKslbDeAd.A.1.2.3"), Some(b2));
        assert_eq!(BranchId::decode(b"z9hG4bKslbdead.a.1.2.3.x.y"), Some(b2));
        assert_eq!(BranchId::decode(b"z9hG4bKslbdead.a.1.2.3x"), None);
        assert_eq!(BranchId::decode(b"z9hG4bKslbdead.a..1.2"), None);
        assert_eq!(BranchId::decode(b"z9hG4bKslbdead.a.1.2."), None);
        assert_eq!(BranchId::decode(b"z9hG4bKslb00000000000000001.a.1.2.3"), None);
        assert_eq!(
            BranchId::decode(b"z9hG4bKslb0000000000000001.a.1.2.3").map(|b| b.epoch),
            Some(1)
        );
        assert_eq!(BranchId::decode(b"z9hG4bKslb100000000.a.1.2.3"), None);
        assert_eq!(DialogId::decode(b"1.0.5"), None);
        let d = DialogId {
            epoch: 1,
            worker: 0,
            index: 5,
            generation: 1,
        };
        assert_eq!(DialogId::decode(&d.encode()), Some(d));
        assert_eq!(DialogId::decode(b"zz"), None);
        let route = format!("<sip:127.0.0.1:5060;lr;did={}>", String::from_utf8(d.encode()).unwrap());
        assert_eq!(route_dialog(route.as_bytes()), Some(d));
        assert!(route_is_ours(route.as_bytes(), &["127.0.0.1:5060".parse().unwrap()]));
        let mark = RouteMark::parse(route.as_bytes()).unwrap();
        assert_eq!(mark.dialog, Some(d));
        assert!(mark.is_ours(&["127.0.0.1:5060".parse().unwrap()]));
        assert!(!mark.is_ours(&["127.0.0.1:5061".parse().unwrap()]));
        assert!(!route_is_ours(route.as_bytes(), &["127.0.0.1:5061".parse().unwrap()]));
    }

    #[test]
    fn first_contact_is_what_contacts_finds_first() {
        let cases: &[&str] = &[
            "",
            "Contact: <sip:a@10.0.0.1:5060>;expires=60\r\n",
            "Contact: sip:b@h\r\n",
            "Contact: *\r\n",
            "Contact: \"A, B\" <sip:a@h>\r\n",
            "Contact: <sip:a@h>, <sip:b@h>\r\n",
            "Contact: <bad\r\nContact: <sip:c@h>\r\n",
            "Contact: <bad\r\nContact: x, <sip:d@h>\r\n",
            "m: <sip:e@h>\r\n",
        ];
        for c in cases {
            let text = format!("INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{c}Content-Length: 0\r\n\r\n");
            let Ok(m) = siplb_parser::scan_datagram(text.as_bytes()) else {
                continue;
            };
            let general = m.contacts().next().map_or(&b""[..], |c| c.uri);
            assert_eq!(first_contact(&m), general, "{c}");
        }
    }

    #[test]
    fn stream_fallback_uses_received_and_sent_by_port() {
        let r = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h.example:5090;received=10.0.0.9;rport=40000\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(stream_fallback(r), Some("10.0.0.9:5090".parse().unwrap()));
        let tls = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.8\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(stream_fallback(tls), Some("10.0.0.8:5061".parse().unwrap()));
        assert_eq!(uri_addr(b"sips:10.0.0.1"), Some("10.0.0.1:5061".parse().unwrap()));
    }

    #[test]
    fn bad_request_needs_the_mandatory_lines() {
        let src = "10.0.0.1:5070".parse().unwrap();
        let m = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: x INVITE\r\n\r\n";
        let r = bad_request(m, src, "bad CSeq").unwrap();
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("SIP/2.0 400 "), "{r}");
        assert!(r.contains("received=10.0.0.1"));
        assert!(bad_request(b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n", src, "x").is_none());
        assert!(bad_request(b"SIP/2.0 200 OK\r\n\r\n", src, "x").is_none());
        assert!(bad_request(b"\x00\x01garbage", src, "x").is_none());
    }
}
