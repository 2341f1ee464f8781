//! What a tracked dialog remembers of its call, for `dlg_list` and for the
//! BYEs of `dlg_end`: Call-ID, From/To (values and tags), both contacts and
//! both route sets, packed in one buffer.
//!
//! Contract: one allocation per dialog for all the text (two when the 2xx
//! brings more than the first estimate left room for). A field set twice
//! (To, at the INVITE and again at the 2xx) leaves its old bytes in the
//! buffer; only the latest is returned. A route set is kept as one
//! `Route`-ready value, its entries joined with `", "` in the order the
//! BYE must list them (RFC 3261 §12.2.1.1). Nothing here parses or
//! checks the text: it is stored as the scanner delimited it.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Local, Transport};

/// A text field of a dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    CallId,
    /// The From header value (with the caller's tag).
    From,
    /// The To header value (with the callee's tag once confirmed).
    To,
    FromTag,
    ToTag,
    CallerContact,
    CalleeContact,
    /// Route set towards the caller (the INVITE's Record-Route, in order).
    CallerRoutes,
    /// Route set towards the callee (the 2xx's Record-Route above ours, reversed).
    CalleeRoutes,
}

const FIELDS: usize = 9;

/// Room kept at the INVITE for what the 2xx adds (To with tag, contact).
const CONFIRM_ROOM: usize = 160;

/// The remembered call; see the module docs.
#[derive(Clone, Debug)]
pub(super) struct DialogInfo {
    pub start: Instant,
    text: Vec<u8>,
    spans: [(u32, u32); FIELDS],
    /// Socket and address the INVITE came from.
    pub caller: (Local, SocketAddr),
    /// Where the INVITE went, and over which transport.
    pub callee: Option<(SocketAddr, Transport)>,
    /// Highest CSeq seen from each side.
    pub caller_cseq: u32,
    pub callee_cseq: u32,
}

impl DialogInfo {
    /// An empty record (an adopted dialog knows none of the text); `room`:
    /// bytes of text expected, to allocate once.
    pub fn new(start: Instant, caller: (Local, SocketAddr), room: usize) -> DialogInfo {
        DialogInfo {
            start,
            text: Vec::with_capacity(if room == 0 { 0 } else { room + CONFIRM_ROOM }),
            spans: [(0, 0); FIELDS],
            caller,
            callee: None,
            caller_cseq: 0,
            callee_cseq: 0,
        }
    }

    /// The latest value of `f` (empty when never set).
    pub fn text(&self, f: Field) -> &[u8] {
        let (start, end) = self.spans[f as usize];
        self.text.get(start as usize..end as usize).unwrap_or_default()
    }

    /// Sets `f` to `value`.
    pub fn set(&mut self, f: Field, value: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(value);
        self.spans[f as usize] = (offset(start), offset(self.text.len()));
    }

    /// Sets route set `f` to `routes`, in order.
    pub fn set_routes<'a>(&mut self, f: Field, routes: impl Iterator<Item = &'a [u8]>) {
        let start = self.text.len();
        for (i, r) in routes.enumerate() {
            if i > 0 {
                self.text.extend_from_slice(b", ");
            }
            self.text.extend_from_slice(r);
        }
        self.spans[f as usize] = (offset(start), offset(self.text.len()));
    }
}

/// Spans are u32: a dialog's text is bounded by the message size limit
/// (twice at most), far below 4 GiB; saturate rather than wrap regardless.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_latest_value() {
        let caller = (Local::Internal, SocketAddr::from(([127, 0, 0, 1], 5060)));
        let mut i = DialogInfo::new(Instant::now(), caller, 64);
        assert_eq!(i.text(Field::To), b"");
        i.set(Field::CallId, b"abc@host");
        i.set(Field::To, b"<sip:b@x>");
        i.set(Field::To, b"<sip:b@x>;tag=9");
        i.set_routes(Field::CallerRoutes, [&b"<sip:p1;lr>"[..], b"<sip:p2;lr>"].into_iter());
        i.set_routes(Field::CalleeRoutes, std::iter::empty());
        assert_eq!(i.text(Field::CallId), b"abc@host");
        assert_eq!(i.text(Field::To), b"<sip:b@x>;tag=9");
        assert_eq!(i.text(Field::CallerRoutes), b"<sip:p1;lr>, <sip:p2;lr>");
        assert_eq!(i.text(Field::CalleeRoutes), b"");
    }
}
