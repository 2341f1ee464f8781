//! Zero-copy SIP message scanner and rewriter.
//!
//! `siplb-parser` finds, in one pass over a SIP message, everything a proxy
//! needs (start line, Via, Route, Record-Route, Max-Forwards, Call-ID, CSeq,
//! From/To tags, Contact, Content-Length, Content-Type, the body) and records
//! it as offsets into the caller's buffer. Nothing is copied and nothing is
//! allocated: the [`Message`] view borrows the input. The [`rewrite`] module
//! turns a view plus a list of [`Edit`]s into an ordered list of slices ready
//! for a gather send, again without copying the body.
//!
//! ```
//! use siplb_parser::{scan_datagram, Method};
//!
//! let msg = b"OPTIONS sip:lb.example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
//!     From: <sip:probe@example.com>;tag=1\r\nTo: <sip:lb.example.com>\r\n\
//!     Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let m = scan_datagram(msg).unwrap();
//! assert_eq!(m.method(), Some(Method::Options));
//! assert_eq!(m.top_via().branch, Some(&b"z9hG4bK1"[..]));
//! ```
//!
//! # Contract
//!
//! **What a successful scan guarantees.** Every accessor of [`Message`] is
//! total: none panics, and each returns slices of the scanned buffer. The
//! start line is well formed (`METHOD SP Request-URI SP SIP/2.0` with a token
//! method and a Request-URI without white space, or `SIP/2.0 SP 3DIGIT SP
//! reason` with a code in 100..=699). Every header line has a token name and
//! a colon. The mandatory headers Via, Call-ID, CSeq, From and To are present;
//! Call-ID, CSeq, From, To and Max-Forwards appear at most once. The top
//! Via value parses as a [`Via`] (in a response, the second one too: it is
//! where a proxy relays the response), the first Route value as a bracketed
//! [`NameAddr`], From and To as [`NameAddr`], CSeq as a number below 2^31
//! and a method equal to the request method, Max-Forwards as a number in
//! 0..=255, Content-Length as a number. Via, Route and Record-Route values
//! are all split (commas inside quotes and `<...>` do not split) and
//! counted: the counts of headers, Via values and Route/Record-Route values
//! are within [`Limits`], and the message is at most
//! [`Limits::max_message_size`] bytes.
//!
//! **What it checks only when asked (lazily).** The other Via values (below
//! the top one, or the top two of a response), the other Route values and
//! all Record-Route values are parsed when an accessor asks for them, as
//! Kamailio and OpenSIPS do: a proxy relays them untouched.
//! [`Message::vias`], [`Message::routes`] and [`Message::record_routes`]
//! stop before the first value that does not parse;
//! [`Message::via_values`], [`Message::route_values`] and
//! [`Message::record_route_values`] return every value raw, checked or not
//! (copy them, do not interpret them, unless you parse them yourself);
//! [`Message::validate_all`] checks them all, with the errors the scan
//! would have given. Contact values are split and parsed only when
//! [`Message::contacts`] is called; values that do not parse are skipped
//! there.
//!
//! **What it does not check.** URIs (the Request-URI and those inside
//! addresses) are not parsed by the scan: call [`Uri::parse`] when you need
//! their parts. Header values other than those above are not validated
//! (control characters in an unknown header pass). `%` escapes are not
//! decoded, quoted strings are not unescaped. Content-Type is not compared
//! with the body. Branch values are not required to carry the RFC 3261 magic
//! cookie.
//!
//! **Framing.** [`scan`] treats the buffer as the start of a stream or as a
//! datagram: when the header block or the body announced by Content-Length
//! is not all there, it returns [`Status::Partial`]. When Content-Length is
//! absent the body is the rest of the buffer (the datagram rule of RFC 3261
//! §18.3). [`scan_datagram`] turns `Partial` into [`ErrorKind::Truncated`];
//! [`scan_stream`] also rejects a message without Content-Length. Octets
//! after the announced body are not part of the message: [`Message::len`]
//! says where the next message starts.
//!
//! **Leniencies** (see [`Options`]): line breaks before the start line are
//! skipped (RFC 3261 §7.5); bare LF line endings are accepted unless
//! [`Options::allow_bare_lf`] is turned off; linear white space is accepted
//! around `:`, `;`, `,`, `=` and `/` in the headers that are parsed, and
//! obsolete line folding is accepted in every header.

// `unsafe` is denied everywhere but in `simd`, where each block says why
// it is sound.
#![deny(unsafe_code)]

mod addr;
mod error;
mod header;
mod lex;
mod message;
pub mod rewrite;
mod scan;
mod simd;
pub mod stream;
mod uri;
mod via;

pub use addr::NameAddr;
pub use error::{Error, ErrorKind, Mandatory};
pub use header::{HeaderKind, Method};
pub use lex::Params;
pub use message::{CSeq, Header, Headers, Message, StartLine, Values};
pub use rewrite::{Edit, Rewrite};
pub use stream::{frame, Frame};
pub use uri::{host_ip, Scheme, Uri};
pub use via::{Rport, Transport, Via};

/// Capacity of the per-message header index. [`Limits::max_headers`] can
/// lower it, not raise it.
pub const MAX_HEADERS: usize = 64;
/// Capacity of the per-message Via index.
pub const MAX_VIAS: usize = 16;
/// Capacity of each of the Route and Record-Route indexes.
pub const MAX_ROUTES: usize = 16;

/// Limits that protect the process from hostile or broken peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, headers and body, in bytes (at most
    /// 65,535, the largest UDP payload; larger values act as 65,535).
    pub max_message_size: usize,
    /// Most header lines (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Most Via values (at most [`MAX_VIAS`]).
    pub max_vias: usize,
    /// Most values in each of Route and Record-Route (at most [`MAX_ROUTES`]).
    pub max_routes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 65_535,
            max_headers: MAX_HEADERS,
            max_vias: MAX_VIAS,
            max_routes: MAX_ROUTES,
        }
    }
}

/// Scanner options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Accept lines that end in a bare LF instead of CRLF. On by default:
    /// some test tools and hand-written messages use them, and accepting
    /// them costs nothing. Turn it off to get [`ErrorKind::BareLineFeed`].
    pub allow_bare_lf: bool,
    /// Size and count limits.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_bare_lf: true,
            limits: Limits::default(),
        }
    }
}

/// The outcome of scanning a buffer that may not hold a whole message yet.
// The size difference between the variants is deliberate: boxing the view
// would allocate once per message, which is what this crate avoids.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Status<'a> {
    /// A whole message; [`Message::len`] bytes of the buffer belong to it.
    Complete(Message<'a>),
    /// More bytes are needed (stream framing).
    Partial,
}

/// Scans `buf` with default [`Options`]; see the crate docs for framing.
pub fn scan(buf: &[u8]) -> Result<Status<'_>, Error> {
    scan_with(buf, &Options::default())
}

/// [`scan`] with explicit options.
pub fn scan_with<'a>(buf: &'a [u8], options: &Options) -> Result<Status<'a>, Error> {
    framed(scan::scan(buf, options, false))
}

/// Scans one UDP datagram with default [`Options`]: a message that is not
/// all there is an [`ErrorKind::Truncated`] error.
#[inline]
pub fn scan_datagram(buf: &[u8]) -> Result<Message<'_>, Error> {
    scan::scan(buf, &Options::default(), false)
}

/// [`scan_datagram`] with explicit options.
#[inline]
pub fn scan_datagram_with<'a>(buf: &'a [u8], options: &Options) -> Result<Message<'a>, Error> {
    scan::scan(buf, options, false)
}

/// Scans the front of a stream buffer (TCP/TLS) with default [`Options`]:
/// Content-Length is required.
pub fn scan_stream(buf: &[u8]) -> Result<Status<'_>, Error> {
    scan_stream_with(buf, &Options::default())
}

/// [`scan_stream`] with explicit options.
pub fn scan_stream_with<'a>(buf: &'a [u8], options: &Options) -> Result<Status<'a>, Error> {
    framed(scan::scan(buf, options, true))
}

fn framed(result: Result<Message<'_>, Error>) -> Result<Status<'_>, Error> {
    match result {
        Ok(m) => Ok(Status::Complete(m)),
        Err(Error {
            kind: ErrorKind::Truncated,
            ..
        }) => Ok(Status::Partial),
        Err(e) => Err(e),
    }
}
