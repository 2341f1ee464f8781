//! Message building blocks shared by the UAC and UAS state machines.
//!
//! Everything here writes into caller-provided `Vec<u8>` buffers that the
//! state machines reuse from call to call, so that building a message does
//! not allocate once the buffers have grown to their working size. Nothing
//! here reads a clock or touches a socket.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use siplb_parser::{HeaderKind, Message, NameAddr, Uri};

/// RFC 3261 timer values used by the state machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate, 500 ms by default.
    pub t1: std::time::Duration,
    /// Longest retransmission interval for non-INVITE requests and
    /// INVITE responses, 4 s by default.
    pub t2: std::time::Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: std::time::Duration::from_millis(500),
            t2: std::time::Duration::from_secs(4),
        }
    }
}

impl Timers {
    /// Timer B / F / H: 64 * T1.
    pub fn transaction_timeout(&self) -> std::time::Duration {
        self.t1 * 64
    }
}

/// Datagrams waiting to be sent: one contiguous byte buffer plus the
/// destination and range of each datagram. The runtime drains it after
/// every call into a state machine.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, Range<usize>)>,
}

impl Outbox {
    /// Queues a copy of `bytes` for `dst`.
    pub fn push(&mut self, dst: SocketAddr, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.items.push((dst, start..self.buf.len()));
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The queued datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items.iter().map(|(a, r)| (*a, &self.buf[r.clone()]))
    }

    /// The `i`-th queued datagram.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        self.items.get(i).map(|(a, r)| (*a, &self.buf[r.clone()]))
    }

    /// Forgets everything queued (keeps the capacity).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// Appends the decimal form of `n`.
pub(crate) fn put_num(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends the lower-case hexadecimal form of `n`.
pub(crate) fn put_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends `ip:port` (IPv6 in brackets).
pub(crate) fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{addr}");
}

/// Parses a hexadecimal number (at most 16 digits).
pub(crate) fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut n = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = n << 4 | u64::from(d);
    }
    Some(n)
}

/// The reason phrase sent with `code`.
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// A realistic audio offer/answer body (about 250 bytes) for `ip`.
pub(crate) fn put_sdp(out: &mut Vec<u8>, ip: IpAddr, session: u64) {
    let fam: &[u8] = if ip.is_ipv4() { b"IP4 " } else { b"IP6 " };
    out.extend_from_slice(b"v=0\r\no=sipload ");
    put_num(out, session);
    out.extend_from_slice(b" ");
    put_num(out, session);
    out.extend_from_slice(b" IN ");
    out.extend_from_slice(fam);
    put_ip(out, ip);
    out.extend_from_slice(b"\r\ns=-\r\nc=IN ");
    out.extend_from_slice(fam);
    put_ip(out, ip);
    out.extend_from_slice(
        b"\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=ptime:20\r\na=sendrecv\r\n",
    );
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    let _ = write!(out, "{ip}");
}

/// Appends `Content-Length: N\r\n\r\n` and the body.
pub(crate) fn put_body(out: &mut Vec<u8>, content_type: Option<&[u8]>, body: &[u8]) {
    if let Some(ct) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    put_num(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// What a response copies from the request besides Via, From, To,
/// Call-ID and CSeq.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ResponseParts<'a> {
    /// Tag to add to To when the request's To has none.
    pub to_tag: Option<&'a [u8]>,
    /// Echo the request's Record-Route lines (1xx/2xx to INVITE).
    pub record_route: bool,
    /// Contact URI to send (without angle brackets).
    pub contact: Option<&'a [u8]>,
    /// SDP or other body.
    pub body: Option<&'a [u8]>,
}

/// Writes a response to `req` into `out` (which is cleared first).
pub(crate) fn build_response(out: &mut Vec<u8>, req: &Message<'_>, code: u16, parts: ResponseParts<'_>) {
    out.clear();
    out.extend_from_slice(b"SIP/2.0 ");
    put_num(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason(code).as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in req.headers() {
        let name: &[u8] = match h.kind {
            HeaderKind::Via => b"Via: ",
            HeaderKind::RecordRoute if parts.record_route => b"Record-Route: ",
            HeaderKind::From => b"From: ",
            HeaderKind::CallId => b"Call-ID: ",
            HeaderKind::CSeq => b"CSeq: ",
            HeaderKind::To => {
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(h.value);
                if let (None, Some(tag)) = (req.to_tag(), parts.to_tag) {
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(tag);
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(name);
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = parts.contact {
        out.extend_from_slice(b"Contact: <");
        out.extend_from_slice(c);
        out.extend_from_slice(b">\r\n");
    }
    out.extend_from_slice(b"Server: sipload\r\n");
    match parts.body {
        Some(b) => put_body(out, Some(b"application/sdp"), b),
        None => put_body(out, None, b""),
    }
}

/// Resolves where a request to `uri` goes when its host is an IP literal
/// (`None` for host names: the caller falls back to a known address, so
/// that no DNS lookup ever happens on the data path).
pub(crate) fn uri_addr(uri: &[u8]) -> Option<SocketAddr> {
    let u = Uri::parse(uri).ok()?;
    let host = u.host;
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    let ip: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// The first Contact URI of a message, if any.
pub(crate) fn contact_uri<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    msg.contacts().next().map(|c| c.uri).filter(|u| *u != b"*")
}

/// Writes one `Route:` line per Record-Route value of `msg`, in order or
/// reversed (a UAC reverses the set it learns from a 2xx, RFC 3261 §12.1.2),
/// and returns the address of the first hop (first route, when its host is
/// an IP literal).
pub(crate) fn put_routes(out: &mut Vec<u8>, msg: &Message<'_>, reverse: bool) -> Option<SocketAddr> {
    let mut set: [&[u8]; siplb_parser::MAX_ROUTES] = [b""; siplb_parser::MAX_ROUTES];
    let mut n = 0;
    for v in msg.record_route_values() {
        if n < set.len() {
            set[n] = v;
            n += 1;
        }
    }
    let set = &mut set[..n];
    if reverse {
        set.reverse();
    }
    for v in set.iter() {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    set.first()
        .and_then(|v| NameAddr::parse(v).ok())
        .and_then(|na| uri_addr(na.uri))
}

/// Writes an ACK for a final response to an INVITE, built from the
/// response alone (RFC 3261 §17.1.1.3 for non-2xx, §13.2.2.4 for 2xx).
/// Returns the address to send it to, `fallback` when the message names
/// no IP literal.
///
/// For a non-2xx the ACK reuses the INVITE's branch and `request_uri`;
/// for a 2xx it is a new transaction (`branch`) to the Contact, with the
/// reversed Record-Route set as Route.
pub(crate) fn build_ack(
    out: &mut Vec<u8>,
    resp: &Message<'_>,
    request_uri: &[u8],
    branch: &[u8],
    local: &[u8],
    fallback: SocketAddr,
) -> SocketAddr {
    out.clear();
    let code = resp.status().unwrap_or(0);
    let two_xx = (200..300).contains(&code);
    let target = if two_xx {
        contact_uri(resp).unwrap_or(request_uri)
    } else {
        request_uri
    };
    out.extend_from_slice(b"ACK ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" SIP/2.0\r\n");
    if two_xx {
        out.extend_from_slice(b"Via: SIP/2.0/UDP ");
        out.extend_from_slice(local);
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(branch);
        out.extend_from_slice(b";rport\r\n");
    } else {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(resp.top_via().value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\n");
    let first_hop = if two_xx { put_routes(out, resp, true) } else { None };
    put_dialog_headers(out, resp, resp.cseq().seq, b"ACK");
    put_body(out, None, b"");
    if two_xx {
        first_hop.or_else(|| uri_addr(target)).unwrap_or(fallback)
    } else {
        fallback
    }
}

/// Writes From, To, Call-ID and `CSeq: seq METHOD` copied from `msg`.
pub(crate) fn put_dialog_headers(out: &mut Vec<u8>, msg: &Message<'_>, seq: u32, method: &[u8]) {
    for h in msg.headers() {
        let name: &[u8] = match h.kind {
            HeaderKind::From => b"From: ",
            HeaderKind::To => b"To: ",
            HeaderKind::CallId => b"Call-ID: ",
            _ => continue,
        };
        out.extend_from_slice(name);
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"CSeq: ");
    put_num(out, u64::from(seq));
    out.push(b' ');
    out.extend_from_slice(method);
    out.extend_from_slice(b"\r\n");
}

/// Reuses `v` for a copy of `bytes`.
pub(crate) fn set(v: &mut Vec<u8>, bytes: &[u8]) {
    v.clear();
    v.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        put_num(&mut v, 0);
        v.push(b' ');
        put_num(&mut v, 1234567);
        v.push(b' ');
        put_hex(&mut v, 0xbeef);
        assert_eq!(v, b"0 1234567 beef");
        assert_eq!(parse_hex(b"beef"), Some(0xbeef));
        assert_eq!(parse_hex(b"xyz"), None);
        assert_eq!(parse_hex(b""), None);
    }

    #[test]
    fn uri_addresses() {
        assert_eq!(
            uri_addr(b"sip:a@127.0.0.1:5070;lr"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(uri_addr(b"sip:127.0.0.1"), Some("127.0.0.1:5060".parse().unwrap()));
        assert_eq!(uri_addr(b"sip:[::1]:5080"), Some("[::1]:5080".parse().unwrap()));
        assert_eq!(uri_addr(b"sip:proxy.example.com"), None);
    }
}
