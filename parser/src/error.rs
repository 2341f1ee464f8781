//! The parser's error type: small, `Copy`, and precise about what and where.

use core::fmt;

/// What is wrong with a message, and at which byte offset of the scanned
/// buffer the problem was found.
///
/// The offset points at the start of the offending element (the start line,
/// the header line, the value) so that a tool can show the bytes around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    /// What is wrong.
    pub kind: ErrorKind,
    /// Byte offset into the scanned buffer where the problem was found.
    pub offset: usize,
}

impl Error {
    pub(crate) const fn new(kind: ErrorKind, offset: usize) -> Self {
        Error { kind, offset }
    }
}

/// The headers whose absence makes a message unusable for a proxy
/// (RFC 3261 §8.1.1: To, From, CSeq, Call-ID and Via; Max-Forwards is
/// inserted by the proxy when absent, so it is not listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mandatory {
    Via,
    CallId,
    CSeq,
    From,
    To,
}

/// The kind of problem found while scanning or parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The buffer holds nothing but line breaks (a keep-alive) or nothing at all.
    Empty,
    /// The message is larger than [`Limits::max_message_size`](crate::Limits).
    TooLarge,
    /// A datagram ended before the message did: no blank line after the
    /// headers, or fewer body bytes than Content-Length announces
    /// (RFC 3261 §18.3). Streams report this as [`Status::Partial`](crate::Status).
    Truncated,
    /// A line ended in a bare LF while [`Options::allow_bare_lf`](crate::Options) is off.
    BareLineFeed,
    /// The first line is neither `METHOD URI SIP/2.0` nor `SIP/2.0 CODE REASON`.
    BadStartLine,
    /// The request method is not a valid token.
    BadMethod,
    /// The Request-URI is empty or contains forbidden characters.
    BadRequestUri,
    /// The protocol version is not `SIP/2.0`.
    BadVersion,
    /// The status code is not three digits in 100..=699.
    BadStatusCode,
    /// A header line has no name, a name with forbidden characters, or no colon.
    BadHeader,
    /// More header lines than [`Limits::max_headers`](crate::Limits).
    TooManyHeaders,
    /// More Via values than [`Limits::max_vias`](crate::Limits).
    TooManyVias,
    /// More Route or Record-Route values than [`Limits::max_routes`](crate::Limits).
    TooManyRoutes,
    /// A Via value does not follow `SIP/2.0/TRANSPORT host[:port][;params]`.
    BadVia,
    /// A Route or Record-Route value is not a name-addr.
    BadRoute,
    /// The Call-ID is empty or contains white space.
    BadCallId,
    /// CSeq is not `NUMBER METHOD` with a number below 2**31.
    BadCSeq,
    /// The CSeq method of a request differs from its request method.
    CSeqMethodMismatch,
    /// From is not a name-addr or addr-spec.
    BadFrom,
    /// To is not a name-addr or addr-spec.
    BadTo,
    /// A Contact value is neither `*` nor a name-addr or addr-spec.
    BadContact,
    /// Max-Forwards is not a number in 0..=255.
    BadMaxForwards,
    /// Content-Length is not a decimal number, is negative, or is too large.
    BadContentLength,
    /// A message on a stream has no Content-Length (RFC 3261 §18.3).
    MissingContentLength,
    /// A header that may appear only once (Call-ID, CSeq, From, To,
    /// Max-Forwards) appears twice, or Content-Length twice with different values.
    DuplicateHeader,
    /// A mandatory header is absent.
    MissingHeader(Mandatory),
    /// A URI does not follow the sip/sips/tel grammar.
    BadUri,
}

impl ErrorKind {
    /// A short, stable, lower-case description, used in logs and by `sipscan`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Empty => "empty message",
            ErrorKind::TooLarge => "message too large",
            ErrorKind::Truncated => "truncated message",
            ErrorKind::BareLineFeed => "bare LF line ending",
            ErrorKind::BadStartLine => "bad start line",
            ErrorKind::BadMethod => "bad method",
            ErrorKind::BadRequestUri => "bad request-uri",
            ErrorKind::BadVersion => "bad SIP version",
            ErrorKind::BadStatusCode => "bad status code",
            ErrorKind::BadHeader => "bad header line",
            ErrorKind::TooManyHeaders => "too many headers",
            ErrorKind::TooManyVias => "too many Via values",
            ErrorKind::TooManyRoutes => "too many Route/Record-Route values",
            ErrorKind::BadVia => "bad Via",
            ErrorKind::BadRoute => "bad Route/Record-Route",
            ErrorKind::BadCallId => "bad Call-ID",
            ErrorKind::BadCSeq => "bad CSeq",
            ErrorKind::CSeqMethodMismatch => "CSeq method does not match request method",
            ErrorKind::BadFrom => "bad From",
            ErrorKind::BadTo => "bad To",
            ErrorKind::BadContact => "bad Contact",
            ErrorKind::BadMaxForwards => "bad Max-Forwards",
            ErrorKind::BadContentLength => "bad Content-Length",
            ErrorKind::MissingContentLength => "missing Content-Length on a stream",
            ErrorKind::DuplicateHeader => "duplicate header",
            ErrorKind::MissingHeader(Mandatory::Via) => "missing Via",
            ErrorKind::MissingHeader(Mandatory::CallId) => "missing Call-ID",
            ErrorKind::MissingHeader(Mandatory::CSeq) => "missing CSeq",
            ErrorKind::MissingHeader(Mandatory::From) => "missing From",
            ErrorKind::MissingHeader(Mandatory::To) => "missing To",
            ErrorKind::BadUri => "bad URI",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for Error {}
