//! The one-pass scanner behind [`scan`](crate::scan).

use crate::addr::NameAddr;
use crate::error::{Error, ErrorKind, Mandatory};
use crate::header::{HeaderKind, Method};
use crate::lex::{self, CommaSplit};
use crate::message::{CSeq, HeaderEntry, Message, Span, StartLine, ValueList, ValueRef};
use crate::simd;
use crate::via::{Rport, Via};
use crate::{Options, MAX_HEADERS, MAX_ROUTES, MAX_VIAS};

/// Result of looking for the end of a line.
enum Line {
    /// `content_end` excludes the CR (if any) and LF; `next` follows the LF.
    Found { content_end: usize, next: usize },
    /// No LF before `limit`.
    Missing,
}

struct Cursor<'a> {
    buf: &'a [u8],
    /// Scanning never looks at or past this offset (message size limit).
    limit: usize,
    allow_bare_lf: bool,
}

impl Cursor<'_> {
    /// The line starting at `from`.
    #[inline(always)]
    fn line(&mut self, from: usize) -> Result<Line, Error> {
        let Some(lf) = lex::find_lf(&self.buf[..self.limit], from) else {
            return Ok(Line::Missing);
        };
        let content_end = if lf > from && self.buf[lf - 1] == b'\r' {
            lf - 1
        } else if self.allow_bare_lf {
            lf
        } else {
            return Err(Error::new(ErrorKind::BareLineFeed, lf));
        };
        Ok(Line::Found {
            content_end,
            next: lf + 1,
        })
    }

    /// `Truncated` (partial on streams) when the buffer simply ends,
    /// `TooLarge` when the limit cut it.
    fn missing(&self, from: usize) -> Error {
        if self.limit < self.buf.len() {
            Error::new(ErrorKind::TooLarge, from)
        } else {
            Error::new(ErrorKind::Truncated, self.buf.len())
        }
    }
}

/// Scans one message. An incomplete message is reported as
/// [`ErrorKind::Truncated`]; the stream entry points turn that into
/// [`Status::Partial`](crate::Status). Returning the view directly (rather
/// than inside a `Status`) lets the datagram path avoid copying it.
pub(crate) fn scan<'a>(input: &'a [u8], options: &Options, stream: bool) -> Result<Message<'a>, Error> {
    // RFC 3261 §7.5: ignore line breaks before the start line.
    let skipped = input
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(Error::new(ErrorKind::Empty, 0))?;
    // Everything below is relative to the start line; errors are shifted
    // back to offsets in `input` on the way out.
    // Fixed up in place: re-wrapping the Ok value would copy the view.
    let mut result = scan_message(&input[skipped..], options, stream, skipped as u32);
    if let Err(e) = &mut result {
        e.offset += skipped;
    }
    result
}

#[inline(always)]
fn scan_message<'a>(buf: &'a [u8], options: &Options, stream: bool, skipped: u32) -> Result<Message<'a>, Error> {
    let limits = &options.limits;
    // Offsets are stored in 16 bits: no message is larger than that.
    let max_size = limits.max_message_size.min(usize::from(u16::MAX));
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let max_vias = limits.max_vias.min(MAX_VIAS);
    let max_routes = limits.max_routes.min(MAX_ROUTES);

    let start = 0;
    let limit = buf.len().min(max_size);
    if !stream && buf.len() > max_size {
        return Err(Error::new(ErrorKind::TooLarge, start));
    }
    let mut cur = Cursor {
        buf,
        limit,
        allow_bare_lf: options.allow_bare_lf,
    };

    // Start line.
    let Line::Found { content_end, next } = cur.line(start)? else {
        return Err(cur.missing(start));
    };
    let start_line = parse_start_line(&buf[start..content_end], start)?;
    let start_line_span = Span::new(start, content_end);
    let response = matches!(start_line, StartLine::Response { .. });

    let mut m = Message {
        buf,
        skipped,
        len: 0,
        start_line,
        start_line_span,
        headers: [HeaderEntry::default(); MAX_HEADERS],
        header_count: 0,
        vias: ValueList::default(),
        routes: ValueList::default(),
        record_routes: ValueList::default(),
        top_via: EMPTY_VIA,
        call_id: &[],
        cseq: CSeq {
            seq: 0,
            method: Method::Other(&[]),
        },
        from: EMPTY_ADDR,
        to: EMPTY_ADDR,
        max_forwards: None,
        content_length: None,
        content_type: None,
        body_start: 0,
    };
    let mut seen = Seen::default();

    // Header lines.
    let mut line_start = next;
    let body_start = loop {
        let Line::Found { content_end, mut next } = cur.line(line_start)? else {
            return Err(cur.missing(line_start));
        };
        if content_end == line_start {
            break next;
        }
        // Obsolete line folding: a line starting with SP/HT continues the
        // previous one.
        let mut value_end = content_end;
        loop {
            match buf.get(next) {
                Some(b' ' | b'\t') if next < cur.limit => {}
                Some(_) => break,
                None => return Err(cur.missing(next)),
            }
            let Line::Found {
                content_end,
                next: after,
            } = cur.line(next)?
            else {
                return Err(cur.missing(next));
            };
            value_end = content_end;
            next = after;
        }
        let count = usize::from(m.header_count);
        if count >= max_headers {
            return Err(Error::new(ErrorKind::TooManyHeaders, line_start));
        }
        let (entry, value_span) = header_line(buf, line_start, value_end, next)?;
        m.headers[count] = entry;
        m.header_count += 1;
        let value = &buf[value_span.range()];
        let vstart = value_span.start as usize;
        match entry.kind {
            HeaderKind::Via => {
                for (a, b) in CommaSplit::new(value) {
                    // Eagerly: the top Via (every message), and the second
                    // of a response (where a proxy relays it). The others
                    // are parsed when asked for.
                    let n = m.vias.len;
                    if n == 0 || (n == 1 && response) {
                        let via = Via::parse(&value[a..b]).map_err(|_| Error::new(ErrorKind::BadVia, vstart + a))?;
                        if n == 0 {
                            m.top_via = via;
                        }
                    }
                    push_value(
                        &mut m.vias,
                        max_vias,
                        count,
                        vstart + a,
                        vstart + b,
                        ErrorKind::TooManyVias,
                    )?;
                }
            }
            HeaderKind::Route | HeaderKind::RecordRoute => {
                let list = if entry.kind == HeaderKind::Route {
                    &mut m.routes
                } else {
                    &mut m.record_routes
                };
                let top_route = entry.kind == HeaderKind::Route && list.len == 0;
                for (i, (a, b)) in CommaSplit::new(value).enumerate() {
                    // Eagerly only the top Route (the one a proxy may own);
                    // the others, and Record-Route, are parsed when asked for.
                    if top_route && i == 0 && !is_route(&value[a..b]) {
                        return Err(Error::new(ErrorKind::BadRoute, vstart + a));
                    }
                    push_value(
                        list,
                        max_routes,
                        count,
                        vstart + a,
                        vstart + b,
                        ErrorKind::TooManyRoutes,
                    )?;
                }
            }
            HeaderKind::CallId => {
                once(&mut seen.call_id, vstart)?;
                if value.is_empty() || lex::has_space_or_control(value) {
                    return Err(Error::new(ErrorKind::BadCallId, vstart));
                }
                m.call_id = value;
            }
            HeaderKind::CSeq => {
                once(&mut seen.cseq, vstart)?;
                m.cseq = parse_cseq(value).ok_or(Error::new(ErrorKind::BadCSeq, vstart))?;
            }
            HeaderKind::From => {
                once(&mut seen.from, vstart)?;
                m.from = NameAddr::parse(value).map_err(|_| Error::new(ErrorKind::BadFrom, vstart))?;
            }
            HeaderKind::To => {
                once(&mut seen.to, vstart)?;
                m.to = NameAddr::parse(value).map_err(|_| Error::new(ErrorKind::BadTo, vstart))?;
            }
            HeaderKind::MaxForwards => {
                if m.max_forwards.is_some() {
                    return Err(Error::new(ErrorKind::DuplicateHeader, vstart));
                }
                let n = lex::parse_u32(value, 3)
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or(Error::new(ErrorKind::BadMaxForwards, vstart))?;
                m.max_forwards = Some((n, count as u8));
            }
            HeaderKind::ContentLength => {
                let n = lex::parse_u32(value, 10).ok_or(Error::new(ErrorKind::BadContentLength, vstart))?;
                if m.content_length.is_some_and(|old| old != n) {
                    return Err(Error::new(ErrorKind::DuplicateHeader, vstart));
                }
                if n as usize > max_size {
                    return Err(Error::new(ErrorKind::TooLarge, vstart));
                }
                m.content_length = Some(n);
            }
            HeaderKind::ContentType if m.content_type.is_none() => m.content_type = Some(value),
            _ => {}
        }
        line_start = next;
    };

    // Mandatory headers.
    let missing = |what| Err(Error::new(ErrorKind::MissingHeader(what), body_start));
    if m.vias.len == 0 {
        return missing(Mandatory::Via);
    }
    if !seen.call_id {
        return missing(Mandatory::CallId);
    }
    if !seen.cseq {
        return missing(Mandatory::CSeq);
    }
    if !seen.from {
        return missing(Mandatory::From);
    }
    if !seen.to {
        return missing(Mandatory::To);
    }
    if let StartLine::Request { method, .. } = m.start_line {
        if method != m.cseq.method {
            return Err(Error::new(ErrorKind::CSeqMethodMismatch, start));
        }
    }

    // Body.
    let end = match m.content_length {
        Some(n) => body_start + n as usize,
        None if stream => return Err(Error::new(ErrorKind::MissingContentLength, start)),
        None => buf.len(),
    };
    if end - start > max_size {
        return Err(Error::new(ErrorKind::TooLarge, start));
    }
    if end > buf.len() {
        return Err(Error::new(ErrorKind::Truncated, buf.len()));
    }
    m.body_start = body_start as u16;
    m.len = end as u16;
    Ok(m)
}

/// Route and Record-Route take the name-addr form only.
pub(crate) fn is_route(value: &[u8]) -> bool {
    NameAddr::parse(value).is_ok_and(|a| a.bracketed)
}

#[derive(Default)]
struct Seen {
    call_id: bool,
    cseq: bool,
    from: bool,
    to: bool,
}

fn once(flag: &mut bool, at: usize) -> Result<(), Error> {
    if *flag {
        return Err(Error::new(ErrorKind::DuplicateHeader, at));
    }
    *flag = true;
    Ok(())
}

const EMPTY_VIA: Via<'static> = Via {
    value: &[],
    transport_token: &[],
    host: &[],
    port: None,
    branch: None,
    received: None,
    rport: Rport::Absent,
    params: &[],
};

const EMPTY_ADDR: NameAddr<'static> = NameAddr {
    display_name: None,
    uri: &[],
    bracketed: false,
    params: &[],
};

fn push_value<const N: usize>(
    list: &mut ValueList<N>,
    max: usize,
    header: usize,
    start: usize,
    end: usize,
    too_many: ErrorKind,
) -> Result<(), Error> {
    let n = usize::from(list.len);
    if n >= max || n >= N {
        return Err(Error::new(too_many, start));
    }
    list.items[n] = ValueRef {
        header: header as u8,
        span: Span::new(start, end),
    };
    list.len += 1;
    Ok(())
}

/// Splits `name HCOLON value` (RFC 3261 §7.3.1).
#[inline(always)]
fn header_line(buf: &[u8], start: usize, value_end: usize, next: usize) -> Result<(HeaderEntry, Span), Error> {
    let line = &buf[start..value_end];
    // Nearly every name is letters, digits and dashes, shorter than 16
    // bytes and followed directly by the colon: one block settles it.
    // The block may extend past the line; only bytes before the first
    // non-name byte are looked at.
    let (name_end, colon, kind) = match buf.get(start..).and_then(|t| t.first_chunk::<16>()) {
        Some(block) if fast_name(block, line) > 0 => {
            let n = fast_name(block, line);
            (n, n, HeaderKind::from_key(name_key(block, n)))
        }
        _ => {
            let (name_end, colon) = name_and_colon(line).ok_or(Error::new(ErrorKind::BadHeader, start))?;
            (name_end, colon, HeaderKind::classify(&line[..name_end]))
        }
    };
    let mut a = colon + 1;
    let mut b = line.len();
    while a < b && lex::is_lws(line[a]) {
        a += 1;
    }
    while b > a && lex::is_lws(line[b - 1]) {
        b -= 1;
    }
    let entry = HeaderEntry {
        kind,
        gap: u8::try_from(a - name_end).unwrap_or(u8::MAX),
        start: start as u16,
        name_end: (start + name_end) as u16,
        end: next as u16,
    };
    let value = Span::new(start + a, start + b);
    debug_assert_eq!(entry.value(buf), value);
    Ok((entry, value))
}

/// The length of a name of letters, digits and dashes, shorter than 16
/// bytes and followed directly by the colon, that starts `block` (the
/// first bytes of `line`); 0 for any other line.
#[inline(always)]
fn fast_name(block: &simd::Block, line: &[u8]) -> usize {
    let n = (!simd::name_chars(block)).trailing_zeros() as usize;
    if n < 16 && line.get(n) == Some(&b':') {
        n
    } else {
        0
    }
}

/// The first `n` (< 16) bytes of `block` with bit 0x20 set in each, zero
/// past them: the key [`HeaderKind::from_key`] takes.
#[inline(always)]
fn name_key(block: &simd::Block, n: usize) -> (u64, u64) {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&block[at..at + 8]);
        u64::from_le_bytes(w) | 0x2020_2020_2020_2020
    };
    let keep = |len: usize| if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
    (word(0) & keep(n), if n > 8 { word(8) & keep(n - 8) } else { 0 })
}

/// The general case of [`header_line`]: token characters, then optional
/// blanks, then `:`. Returns the end of the name and the colon's offset.
#[inline(never)]
fn name_and_colon(line: &[u8]) -> Option<(usize, usize)> {
    let name_end = line.iter().position(|&b| !lex::is_token(b))?;
    let mut colon = name_end;
    while colon < line.len() && matches!(line[colon], b' ' | b'\t') {
        colon += 1;
    }
    if name_end == 0 || line.get(colon) != Some(&b':') {
        return None;
    }
    Some((name_end, colon))
}

fn parse_cseq(v: &[u8]) -> Option<CSeq<'_>> {
    let digits_end = v.iter().position(|b| !b.is_ascii_digit())?;
    let seq = lex::parse_u32(&v[..digits_end], 10).filter(|&n| n < 1 << 31)?;
    let rest = &v[digits_end..];
    let method = lex::trim(rest);
    if method.len() == rest.len() || !lex::all_token(method) {
        return None;
    }
    Some(CSeq {
        seq,
        method: Method::from_token(method),
    })
}

fn parse_start_line(line: &[u8], at: usize) -> Result<StartLine<'_>, Error> {
    if lex::has_control(line) {
        return Err(Error::new(ErrorKind::BadStartLine, at));
    }
    if line.len() >= 4 && lex::eq_ic(&line[..4], b"SIP/") {
        return parse_status_line(line, at);
    }
    let sp1 = lex::find_byte(line, 0, b' ').ok_or(Error::new(ErrorKind::BadStartLine, at))?;
    let sp2 = lex::rfind_byte(line, b' ')
        .filter(|&i| i > sp1)
        .ok_or(Error::new(ErrorKind::BadStartLine, at))?;
    let method = &line[..sp1];
    if !lex::all_token(method) {
        return Err(Error::new(ErrorKind::BadMethod, at));
    }
    let uri = &line[sp1 + 1..sp2];
    if uri.is_empty() || lex::has_space_or_control(uri) {
        return Err(Error::new(ErrorKind::BadRequestUri, at + sp1 + 1));
    }
    let version = &line[sp2 + 1..];
    if !lex::eq_ic(version, b"SIP/2.0") {
        return Err(Error::new(ErrorKind::BadVersion, at + sp2 + 1));
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri,
        version,
    })
}

fn parse_status_line(line: &[u8], at: usize) -> Result<StartLine<'_>, Error> {
    let sp = lex::find_byte(line, 0, b' ').ok_or(Error::new(ErrorKind::BadStartLine, at))?;
    let version = &line[..sp];
    if !lex::eq_ic(version, b"SIP/2.0") {
        return Err(Error::new(ErrorKind::BadVersion, at));
    }
    let rest = &line[sp + 1..];
    let code_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let code = Some(&rest[..code_end])
        .filter(|c| c.len() == 3)
        .and_then(|c| lex::parse_u32(c, 3))
        .filter(|c| (100..=699).contains(c))
        .ok_or(Error::new(ErrorKind::BadStatusCode, at + sp + 1))?;
    let reason = rest.get(code_end + 1..).unwrap_or_default();
    Ok(StartLine::Response {
        version,
        code: code as u16,
        reason,
    })
}
