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

    /// [`HeaderKind::classify`] for a name of letters, digits and dashes
    /// shorter than 16 bytes, given as [`name_key`] of its bytes with
    /// bit 0x20 set in each (which lower-cases letters and leaves digits
    /// and dashes alone): one comparison tree over two words instead of a
    /// dispatch and a byte comparison.
    #[inline]
    #[allow(non_upper_case_globals)]
    pub(crate) fn from_key(key: (u64, u64)) -> HeaderKind {
        macro_rules! table {
            ($($name:literal => $kind:ident,)*) => {{
                $(
                    const $kind: (u64, u64) = name_key($name);
                )*
                match key {
                    $($kind => HeaderKind::$kind,)*
                    _ => HeaderKind::Other,
                }
            }};
        }
        // One arm per long name; the compact forms follow.
        let kind = table! {
            b"via" => Via,
            b"route" => Route,
            b"record-route" => RecordRoute,
            b"max-forwards" => MaxForwards,
            b"call-id" => CallId,
            b"cseq" => CSeq,
            b"from" => From,
            b"to" => To,
            b"contact" => Contact,
            b"content-length" => ContentLength,
            b"content-type" => ContentType,
            b"supported" => Supported,
            b"subject" => Subject,
            b"event" => Event,
            b"allow-events" => AllowEvents,
            b"refer-to" => ReferTo,
            b"referred-by" => ReferredBy,
            b"session-expires" => SessionExpires,
            b"accept-contact" => AcceptContact,
            b"reject-contact" => RejectContact,
            b"identity" => Identity,
            b"expires" => Expires,
        };
        if kind != HeaderKind::Other || key.0 > 0xff {
            return kind;
        }
        // A one-letter (compact) name; `content-encoding` and
        // `request-disposition` are 16 bytes or longer and never get here.
        HeaderKind::classify(&[key.0 as u8])
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

/// The bytes of a name shorter than 16 bytes as two little-endian words,
/// zero past its end (names hold no zero byte, so the key identifies the
/// name and its length).
pub(crate) const fn name_key(name: &[u8]) -> (u64, u64) {
    let mut key = (0u64, 0u64);
    let mut i = 0;
    while i < name.len() && i < 16 {
        if i < 8 {
            key.0 |= (name[i] as u64) << (8 * i);
        } else {
            key.1 |= (name[i] as u64) << (8 * (i - 8));
        }
        i += 1;
    }
    key
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
    fn from_key_agrees_with_classify() {
        let mut names: Vec<Vec<u8>> = (b'a'..=b'z').map(|c| vec![c]).collect();
        for kind in [
            HeaderKind::Via,
            HeaderKind::Route,
            HeaderKind::RecordRoute,
            HeaderKind::MaxForwards,
            HeaderKind::CallId,
            HeaderKind::CSeq,
            HeaderKind::From,
            HeaderKind::To,
            HeaderKind::Contact,
            HeaderKind::ContentLength,
            HeaderKind::ContentType,
            HeaderKind::ContentEncoding,
            HeaderKind::Supported,
            HeaderKind::Subject,
            HeaderKind::Event,
            HeaderKind::AllowEvents,
            HeaderKind::ReferTo,
            HeaderKind::ReferredBy,
            HeaderKind::SessionExpires,
            HeaderKind::AcceptContact,
            HeaderKind::RejectContact,
            HeaderKind::RequestDisposition,
            HeaderKind::Identity,
            HeaderKind::Expires,
        ] {
            let name = kind.canonical_name().unwrap().as_bytes();
            names.push(name.to_vec());
            // Near misses: one byte changed, one dropped, one added.
            for i in 0..name.len() {
                let mut n = name.to_vec();
                n[i] = b'x';
                names.push(n);
                let mut n = name.to_vec();
                n.remove(i);
                names.push(n);
                let mut n = name.to_vec();
                n.insert(i, b'-');
                names.push(n);
            }
        }
        names.extend([&b"Allow"[..], b"User-Agent", b"P-Asserted-Identity", b"X-1", b"0"].map(|n| n.to_vec()));
        for name in names {
            for variant in [name.clone(), name.to_ascii_uppercase(), name.to_ascii_lowercase()] {
                if variant.is_empty() || variant.len() >= 16 {
                    continue;
                }
                let lowered: Vec<u8> = variant.iter().map(|b| b | 0x20).collect();
                assert_eq!(
                    HeaderKind::from_key(name_key(&lowered)),
                    HeaderKind::classify(&variant),
                    "{:?}",
                    String::from_utf8_lossy(&variant)
                );
            }
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
