//! The message view: offsets recorded by the scan, and total accessors.

use crate::addr::NameAddr;
use crate::error::{Error, ErrorKind};
use crate::header::{HeaderKind, Method};
use crate::via::Via;
use crate::{MAX_HEADERS, MAX_ROUTES, MAX_VIAS};

/// A byte range of the message, relative to its start line. 16 bits are
/// enough because a message is at most 65,535 bytes (the scanner caps
/// [`Limits::max_message_size`](crate::Limits) there), and they halve the
/// size of the view that every scan initialises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u16,
    pub(crate) end: u16,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        debug_assert!(end <= usize::from(u16::MAX));
        Span {
            start: start as u16,
            end: end as u16,
        }
    }

    pub(crate) fn range(self) -> core::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One header line as recorded by the scan, in 8 bytes (the index holds
/// 64 of them and every scan zeroes it): the name and the line are kept,
/// the value's bounds are found again from them when asked for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeaderEntry {
    pub(crate) kind: HeaderKind,
    /// From the end of the name to the start of the value (blanks, colon,
    /// white space), or `u8::MAX` when that does not fit.
    pub(crate) gap: u8,
    /// The first byte of the name.
    pub(crate) start: u16,
    pub(crate) name_end: u16,
    /// The byte after the line's LF (including folded continuation lines).
    pub(crate) end: u16,
}

impl HeaderEntry {
    /// From the first byte of the name to the byte after the line's LF.
    pub(crate) fn line(&self) -> Span {
        Span {
            start: self.start,
            end: self.end,
        }
    }

    pub(crate) fn name(&self) -> Span {
        Span {
            start: self.start,
            end: self.name_end,
        }
    }

    /// The value, trimmed of leading and trailing white space (the line
    /// break included). `buf` is the buffer the entry was scanned from.
    pub(crate) fn value(&self, buf: &[u8]) -> Span {
        let line = buf.get(self.line().range()).unwrap_or_default();
        let name_len = usize::from(self.name_end - self.start);
        let mut a = name_len + usize::from(self.gap);
        if self.gap == u8::MAX {
            // Blanks, the colon, white space.
            a = crate::lex::find_byte(line, name_len, b':').map_or(line.len(), |c| c + 1);
            a = crate::lex::skip_lws(line, a);
        }
        let mut b = line.len();
        while b > a && crate::lex::is_lws(line[b - 1]) {
            b -= 1;
        }
        let a = a.min(b);
        Span::new(usize::from(self.start) + a, usize::from(self.start) + b)
    }
}

/// One value of a multi-value header (Via, Route, Record-Route).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ValueRef {
    /// Index of the header line holding it.
    pub(crate) header: u8,
    pub(crate) span: Span,
}

/// A fixed-capacity list of values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ValueList<const N: usize> {
    pub(crate) items: [ValueRef; N],
    pub(crate) len: u8,
}

impl<const N: usize> Default for ValueList<N> {
    fn default() -> Self {
        ValueList {
            items: [ValueRef::default(); N],
            len: 0,
        }
    }
}

impl<const N: usize> ValueList<N> {
    pub(crate) fn as_slice(&self) -> &[ValueRef] {
        &self.items[..usize::from(self.len).min(N)]
    }
}

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        method: Method<'a>,
        uri: &'a [u8],
        version: &'a [u8],
    },
    /// `SIP/2.0 CODE Reason`
    Response {
        version: &'a [u8],
        code: u16,
        reason: &'a [u8],
    },
}

/// The CSeq header: sequence number and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: Method<'a>,
}

/// One header line: its name as written and its trimmed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub kind: HeaderKind,
    /// The name as written (may be a compact form such as `v`).
    pub name: &'a [u8],
    /// The value, trimmed; may contain folded line breaks.
    pub value: &'a [u8],
}

/// A scanned SIP message: offsets into the borrowed buffer.
///
/// Built by [`scan`](crate::scan) and friends; see the crate docs for what a
/// successful scan guarantees. All accessors are cheap and never panic.
#[derive(Clone)]
pub struct Message<'a> {
    /// The scanned buffer from the start line on; every span is relative
    /// to it.
    pub(crate) buf: &'a [u8],
    /// Line breaks skipped before the start line.
    pub(crate) skipped: u32,
    /// Length of the message from the start line to the end of the body.
    pub(crate) len: u16,
    pub(crate) start_line: StartLine<'a>,
    pub(crate) start_line_span: Span,
    pub(crate) headers: [HeaderEntry; MAX_HEADERS],
    pub(crate) header_count: u8,
    pub(crate) vias: ValueList<MAX_VIAS>,
    pub(crate) routes: ValueList<MAX_ROUTES>,
    pub(crate) record_routes: ValueList<MAX_ROUTES>,
    pub(crate) top_via: Via<'a>,
    pub(crate) call_id: &'a [u8],
    pub(crate) cseq: CSeq<'a>,
    pub(crate) from: NameAddr<'a>,
    pub(crate) to: NameAddr<'a>,
    /// (value, header index)
    pub(crate) max_forwards: Option<(u8, u8)>,
    pub(crate) content_length: Option<u32>,
    pub(crate) content_type: Option<&'a [u8]>,
    /// Offset of the byte after the blank line that ends the headers.
    pub(crate) body_start: u16,
}

impl core::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Message")
            .field("start_line", &text(&self.buf[self.start_line_span.range()]))
            .field(
                "headers",
                &self
                    .headers()
                    .map(|h| (text(h.name), text(h.value)))
                    .collect::<Vec<_>>(),
            )
            .field("body_len", &self.body().len())
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> Message<'a> {
    /// The scanned buffer from the start line on (it may extend past this
    /// message). Line breaks skipped before the start line are not in it.
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// The message's bytes, from the start line to the end of the body.
    pub fn as_bytes(&self) -> &'a [u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Bytes of the scanned buffer that belong to this message: line
    /// breaks skipped before the start line, start line, headers and body.
    /// On a stream, the next message starts this many bytes further.
    pub fn len(&self) -> usize {
        self.skipped as usize + usize::from(self.len)
    }

    /// Never true: a message has at least a start line.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start line.
    pub fn start_line(&self) -> StartLine<'a> {
        self.start_line
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, or `None` for a response.
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start_line {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase, or `None` for a request.
    pub fn reason(&self) -> Option<&'a [u8]> {
        match self.start_line {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The topmost Via value (always present after a successful scan).
    pub fn top_via(&self) -> Via<'a> {
        self.top_via
    }

    /// Number of Via values across all Via header lines.
    pub fn via_count(&self) -> usize {
        self.vias.as_slice().len()
    }

    /// All Via values, top first, parsed. The scan checked the top one (and
    /// the second of a response); the others are parsed here, and the
    /// iteration stops before the first one that does not parse (see
    /// [`Message::validate_all`]). [`Message::via_values`] has them all, raw.
    pub fn vias(&self) -> impl Iterator<Item = Via<'a>> + '_ {
        let buf = self.buf;
        self.vias
            .as_slice()
            .iter()
            .map_while(move |v| Via::parse(&buf[v.span.range()]).ok())
    }

    /// The raw Via values, top first.
    pub fn via_values(&self) -> Values<'a, '_> {
        Values::new(self.buf, self.vias.as_slice())
    }

    /// The Route values, in order, parsed. The scan checked the first one;
    /// the iteration stops before the first one that is not a bracketed
    /// name-addr (see [`Message::validate_all`]).
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        addresses(self.buf, self.routes.as_slice())
    }

    /// The raw Route values, in order.
    pub fn route_values(&self) -> Values<'a, '_> {
        Values::new(self.buf, self.routes.as_slice())
    }

    /// The Record-Route values, in order, parsed here (the scan only splits
    /// them); the iteration stops before the first one that is not a
    /// bracketed name-addr (see [`Message::validate_all`]).
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        addresses(self.buf, self.record_routes.as_slice())
    }

    /// The raw Record-Route values, in order.
    pub fn record_route_values(&self) -> Values<'a, '_> {
        Values::new(self.buf, self.record_routes.as_slice())
    }

    /// Checks what the scan leaves for later: every Via value parses as a
    /// [`Via`] ([`ErrorKind::BadVia`]) and every Route and Record-Route
    /// value is a bracketed [`NameAddr`] ([`ErrorKind::BadRoute`]). The
    /// error's offset is in the scanned buffer, as the scan's are. With
    /// this, a message is held to what the scan alone checked before these
    /// values were made lazy.
    pub fn validate_all(&self) -> Result<(), Error> {
        let at = |v: &ValueRef, kind| Error::new(kind, self.skipped as usize + v.span.start as usize);
        for v in self.vias.as_slice() {
            if Via::parse(&self.buf[v.span.range()]).is_err() {
                return Err(at(v, ErrorKind::BadVia));
            }
        }
        for v in self.routes.as_slice().iter().chain(self.record_routes.as_slice()) {
            if !crate::scan::is_route(&self.buf[v.span.range()]) {
                return Err(at(v, ErrorKind::BadRoute));
            }
        }
        Ok(())
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards.map(|(v, _)| v)
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &'a [u8] {
        self.call_id
    }

    /// The CSeq.
    pub fn cseq(&self) -> CSeq<'a> {
        self.cseq
    }

    /// The From header.
    pub fn from(&self) -> NameAddr<'a> {
        self.from
    }

    /// The To header.
    pub fn to(&self) -> NameAddr<'a> {
        self.to
    }

    /// The From tag.
    pub fn from_tag(&self) -> Option<&'a [u8]> {
        self.from.tag()
    }

    /// The To tag.
    pub fn to_tag(&self) -> Option<&'a [u8]> {
        self.to.tag()
    }

    /// The Contact values, in order. `Contact: *` yields one value whose
    /// URI is `*`.
    pub fn contacts(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        let buf = self.buf;
        self.headers_of(HeaderKind::Contact).flat_map(move |h| {
            crate::lex::CommaSplit::new(h.value).filter_map(move |(a, b)| {
                let v = &h.value[a..b];
                if v == b"*" {
                    return Some(NameAddr {
                        display_name: None,
                        uri: v,
                        bracketed: false,
                        params: &buf[..0],
                    });
                }
                NameAddr::parse(v).ok()
            })
        })
    }

    /// The Content-Length header's value, if present.
    pub fn content_length(&self) -> Option<usize> {
        self.content_length.map(|n| n as usize)
    }

    /// The Content-Type value, if present.
    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.content_type
    }

    /// The body: Content-Length bytes after the headers, or the rest of the
    /// datagram when Content-Length is absent.
    pub fn body(&self) -> &'a [u8] {
        self.buf.get(self.body_start as usize..self.len()).unwrap_or_default()
    }

    /// Offset of the body (the byte after the blank line) in the scanned
    /// buffer.
    pub fn body_offset(&self) -> usize {
        self.skipped as usize + usize::from(self.body_start)
    }

    /// All header lines, in order.
    pub fn headers(&self) -> Headers<'a, '_> {
        Headers {
            buf: self.buf,
            entries: self.entries().iter(),
        }
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.entries().len()
    }

    /// The header lines named `name` (case-insensitive; a known header also
    /// matches its compact form, so `Via` finds `v:` lines).
    pub fn headers_named<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = Header<'a>> + 's {
        let kind = HeaderKind::classify(name);
        let buf = self.buf;
        self.entries()
            .iter()
            .filter(move |e| {
                e.kind == kind && (kind != HeaderKind::Other || buf[e.name().range()].eq_ignore_ascii_case(name))
            })
            .map(move |e| header(buf, e))
    }

    /// The first header line named `name`, as [`Message::headers_named`].
    pub fn header(&self, name: &[u8]) -> Option<Header<'a>> {
        self.headers_named(name).next()
    }

    /// The header lines of a known kind.
    pub fn headers_of(&self, kind: HeaderKind) -> impl Iterator<Item = Header<'a>> + '_ {
        let buf = self.buf;
        self.entries()
            .iter()
            .filter(move |e| e.kind == kind)
            .map(move |e| header(buf, e))
    }

    pub(crate) fn entries(&self) -> &[HeaderEntry] {
        &self.headers[..usize::from(self.header_count).min(MAX_HEADERS)]
    }
}

fn addresses<'a, 'm>(buf: &'a [u8], list: &'m [ValueRef]) -> impl Iterator<Item = NameAddr<'a>> + 'm
where
    'a: 'm,
{
    list.iter()
        .map_while(move |v| NameAddr::parse(&buf[v.span.range()]).ok().filter(|a| a.bracketed))
}

/// Iterator over header lines.
pub struct Headers<'a, 'm> {
    buf: &'a [u8],
    entries: core::slice::Iter<'m, HeaderEntry>,
}

fn header<'a>(buf: &'a [u8], e: &HeaderEntry) -> Header<'a> {
    Header {
        kind: e.kind,
        name: &buf[e.name().range()],
        value: &buf[e.value(buf).range()],
    }
}

impl<'a> Headers<'a, '_> {
    fn header(&self, e: &HeaderEntry) -> Header<'a> {
        header(self.buf, e)
    }
}

impl<'a> Iterator for Headers<'a, '_> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        let e = self.entries.next()?;
        Some(self.header(e))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Headers<'_, '_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let e = self.entries.next_back()?;
        Some(self.header(e))
    }
}

impl ExactSizeIterator for Headers<'_, '_> {}

/// Iterator over the raw values of a multi-value header.
pub struct Values<'a, 'm> {
    buf: &'a [u8],
    items: core::slice::Iter<'m, ValueRef>,
}

impl<'a, 'm> Values<'a, 'm> {
    fn new(buf: &'a [u8], items: &'m [ValueRef]) -> Self {
        Values {
            buf,
            items: items.iter(),
        }
    }
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let v = self.items.next()?;
        Some(&self.buf[v.span.range()])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

/// Backwards iteration reverses a route set (RFC 3261 §12.1.2: the UAC
/// takes the Record-Route values of a response in reverse order).
impl<'a> DoubleEndedIterator for Values<'a, '_> {
    fn next_back(&mut self) -> Option<&'a [u8]> {
        let v = self.items.next_back()?;
        Some(&self.buf[v.span.range()])
    }
}

impl ExactSizeIterator for Values<'_, '_> {}
