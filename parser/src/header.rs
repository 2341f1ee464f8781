//! Header names: the ones the scanner knows, their compact forms, and methods.

use crate::lex;

/// The headers the scanner recognises. Any other name is [`HeaderKind::Other`]
/// and still reachable through [`Message::headers`](crate::Message::headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderKind {
    /// Any header the scanner does not know. First, so that it is the zero
    /// value: the scan's empty header index is then plain zeroed memory.
    #[default]
    Other,
    Via,
    Route,
    RecordRoute,
    MaxForwards,
    CallId,
    CSeq,
    From,
    To,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    Supported,
    Subject,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    AcceptContact,
    RejectContact,
    RequestDisposition,
    Identity,
    Expires,
}

impl HeaderKind {
    /// Classifies a header name, case-insensitively, including RFC 3261
    /// §7.3.3 compact forms and later registered ones.
    pub fn classify(name: &[u8]) -> HeaderKind {
        if name.is_empty() {
            return HeaderKind::Other;
        }
        if name.len() == 1 {
            return match name[0] | 0x20 {
                b'v' => HeaderKind::Via,
                b'i' => HeaderKind::CallId,
                b'm' => HeaderKind::Contact,
                b'f' => HeaderKind::From,
                b't' => HeaderKind::To,
                b'l' => HeaderKind::ContentLength,
                b'c' => HeaderKind::ContentType,
                b'e' => HeaderKind::ContentEncoding,
                b'k' => HeaderKind::Supported,
                b's' => HeaderKind::Subject,
                b'o' => HeaderKind::Event,
                b'u' => HeaderKind::AllowEvents,
                b'r' => HeaderKind::ReferTo,
                b'b' => HeaderKind::ReferredBy,
                b'x' => HeaderKind::SessionExpires,
                b'a' => HeaderKind::AcceptContact,
                b'j' => HeaderKind::RejectContact,
                b'd' => HeaderKind::RequestDisposition,
                b'y' => HeaderKind::Identity,
                _ => HeaderKind::Other,
            };
        }
        // One candidate per (length, first letter): a single comparison.
        let (lower, kind): (&[u8], HeaderKind) = match (name.len(), name[0] | 0x20) {
            (2, b't') => (b"to", HeaderKind::To),
            (3, b'v') => (b"via", HeaderKind::Via),
            (4, b'f') => (b"from", HeaderKind::From),
            (4, b'c') => (b"cseq", HeaderKind::CSeq),
            (5, b'r') => (b"route", HeaderKind::Route),
            (5, b'e') => (b"event", HeaderKind::Event),
            (7, b'c') if name[1] | 0x20 == b'a' => (b"call-id", HeaderKind::CallId),
            (7, b'c') => (b"contact", HeaderKind::Contact),
            (7, b's') => (b"subject", HeaderKind::Subject),
            (7, b'e') => (b"expires", HeaderKind::Expires),
            (8, b'r') => (b"refer-to", HeaderKind::ReferTo),
            (8, b'i') => (b"identity", HeaderKind::Identity),
            (9, b's') => (b"supported", HeaderKind::Supported),
            (11, b'r') => (b"referred-by", HeaderKind::ReferredBy),
            (12, b'r') => (b"record-route", HeaderKind::RecordRoute),
            (12, b'm') => (b"max-forwards", HeaderKind::MaxForwards),
            (12, b'c') => (b"content-type", HeaderKind::ContentType),
            (12, b'a') => (b"allow-events", HeaderKind::AllowEvents),
            (14, b'c') => (b"content-length", HeaderKind::ContentLength),
            (14, b'a') => (b"accept-contact", HeaderKind::AcceptContact),
            (14, b'r') => (b"reject-contact", HeaderKind::RejectContact),
            (15, b's') => (b"session-expires", HeaderKind::SessionExpires),
            (16, b'c') => (b"content-encoding", HeaderKind::ContentEncoding),
            (19, b'r') => (b"request-disposition", HeaderKind::RequestDisposition),
            _ => return HeaderKind::Other,
        };
        if lex::eq_lower(name, lower) {
            kind
        } else {
            HeaderKind::Other
        }
    }

    /// The canonical (long) name, or `None` for [`HeaderKind::Other`].
    pub const fn canonical_name(self) -> Option<&'static str> {
        Some(match self {
            HeaderKind::Via => "Via",
            HeaderKind::Route => "Route",
            HeaderKind::RecordRoute => "Record-Route",
            HeaderKind::MaxForwards => "Max-Forwards",
            HeaderKind::CallId => "Call-ID",
            HeaderKind::CSeq => "CSeq",
            HeaderKind::From => "From",
            HeaderKind::To => "To",
            HeaderKind::Contact => "Contact",
            HeaderKind::ContentLength => "Content-Length",
            HeaderKind::ContentType => "Content-Type",
            HeaderKind::ContentEncoding => "Content-Encoding",
            HeaderKind::Supported => "Supported",
            HeaderKind::Subject => "Subject",
            HeaderKind::Event => "Event",
            HeaderKind::AllowEvents => "Allow-Events",
            HeaderKind::ReferTo => "Refer-To",
            HeaderKind::ReferredBy => "Referred-By",
            HeaderKind::SessionExpires => "Session-Expires",
            HeaderKind::AcceptContact => "Accept-Contact",
            HeaderKind::RejectContact => "Reject-Contact",
            HeaderKind::RequestDisposition => "Request-Disposition",
            HeaderKind::Identity => "Identity",
            HeaderKind::Expires => "Expires",
            HeaderKind::Other => return None,
        })
    }
}

/// A SIP request method. Unknown extension methods are kept as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    /// Any other token, as written.
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    /// Classifies a method token. Methods are case-sensitive (RFC 3261
    /// §7.1), so `invite` is an extension method, not INVITE.
    pub fn from_token(t: &'a [u8]) -> Method<'a> {
        match t {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            other => Method::Other(other),
        }
    }

    /// The method token.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Options => b"OPTIONS",
            Method::Register => b"REGISTER",
            Method::Prack => b"PRACK",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Publish => b"PUBLISH",
            Method::Info => b"INFO",
            Method::Refer => b"REFER",
            Method::Message => b"MESSAGE",
            Method::Update => b"UPDATE",
            Method::Other(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_forms() {
        for (name, kind) in [
            (&b"v"[..], HeaderKind::Via),
            (b"V", HeaderKind::Via),
            (b"VIA", HeaderKind::Via),
            (b"i", HeaderKind::CallId),
            (b"call-id", HeaderKind::CallId),
            (b"m", HeaderKind::Contact),
            (b"f", HeaderKind::From),
            (b"t", HeaderKind::To),
            (b"l", HeaderKind::ContentLength),
            (b"c", HeaderKind::ContentType),
            (b"k", HeaderKind::Supported),
            (b"s", HeaderKind::Subject),
            (b"e", HeaderKind::ContentEncoding),
            (b"o", HeaderKind::Event),
            (b"u", HeaderKind::AllowEvents),
            (b"record-ROUTE", HeaderKind::RecordRoute),
            (b"max-forwards", HeaderKind::MaxForwards),
            (b"cseq", HeaderKind::CSeq),
            (b"X-Custom", HeaderKind::Other),
            (b"z", HeaderKind::Other),
        ] {
            assert_eq!(HeaderKind::classify(name), kind, "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn methods_round_trip() {
        for m in [
            &b"INVITE"[..],
            b"ACK",
            b"BYE",
            b"CANCEL",
            b"OPTIONS",
            b"REGISTER",
            b"PRACK",
            b"UPDATE",
            b"FOO",
        ] {
            assert_eq!(Method::from_token(m).as_bytes(), m);
        }
        assert_eq!(Method::from_token(b"invite"), Method::Other(b"invite"));
    }
}
