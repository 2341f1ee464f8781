//! Address values: `name-addr` and `addr-spec` with header parameters, as
//! used by From, To, Contact, Route and Record-Route (RFC 3261 §20.10, §25.1).
//!
//! Contract: [`NameAddr::parse`] separates the optional display name (a
//! quoted string or tokens), the URI (inside `<...>`, or up to the first `;`
//! in the addr-spec form, where parameters belong to the header) and the
//! header parameters. The URI itself is not parsed; call
//! [`NameAddr::parsed_uri`] for that.

use crate::error::{Error, ErrorKind};
use crate::lex::{self, Params};
use crate::uri::Uri;

/// A parsed address value; every slice borrows from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name, with its quotes when quoted, or `None`.
    pub display_name: Option<&'a [u8]>,
    /// The URI, without angle brackets.
    pub uri: &'a [u8],
    /// True when the URI was written inside `<...>`.
    pub bracketed: bool,
    /// The raw header parameters, starting at the first `;`, or empty.
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses one address value (no top-level commas). The error kind is
    /// [`ErrorKind::BadUri`]; callers map it to the header's own kind.
    pub fn parse(value: &'a [u8]) -> Result<NameAddr<'a>, Error> {
        let bad = Error::new(ErrorKind::BadUri, 0);
        let s = lex::trim(value);
        if s.is_empty() {
            return Err(bad);
        }
        let (display_name, after_name) = if s[0] == b'"' {
            let end = lex::closing_quote(s, 0).ok_or(bad)?;
            (Some(&s[..=end]), &s[end + 1..])
        } else {
            match lex::find_byte(s, 0, b'<') {
                None => (None, s),
                Some(lt) => {
                    let name = lex::trim(&s[..lt]);
                    (if name.is_empty() { None } else { Some(name) }, &s[lt..])
                }
            }
        };
        let rest = lex::trim(after_name);
        if let Some(inner) = rest.strip_prefix(b"<") {
            let gt = lex::find_byte(inner, 0, b'>').ok_or(bad)?;
            let uri = lex::trim(&inner[..gt]);
            if uri.is_empty() || lex::has_space_or_control(uri) {
                return Err(bad);
            }
            let params = lex::trim(&inner[gt + 1..]);
            if !params.is_empty() && params[0] != b';' {
                return Err(bad);
            }
            return Ok(NameAddr {
                display_name,
                uri,
                bracketed: true,
                params,
            });
        }
        if display_name.is_some() {
            // A display name must be followed by <uri>.
            return Err(bad);
        }
        let semi = lex::find_byte(rest, 0, b';').unwrap_or(rest.len());
        let uri = lex::trim(&rest[..semi]);
        if uri.is_empty()
            || uri
                .iter()
                .any(|&b| lex::is_lws(b) || b == b'<' || b == b'>' || b == b'"')
        {
            return Err(bad);
        }
        Ok(NameAddr {
            display_name: None,
            uri,
            bracketed: false,
            params: &rest[semi..],
        })
    }

    /// Iterates over the header parameters.
    pub fn param_iter(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// The value of header parameter `name`; `Some(None)` for a flag.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.param_iter().value_of(name)
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param(b"tag").flatten()
    }

    /// Parses the URI.
    pub fn parsed_uri(&self) -> Result<Uri<'a>, Error> {
        Uri::parse(self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse(b"Bob <sip:bob@biloxi.com>;tag=a6c85cf").unwrap();
        assert_eq!(a.display_name, Some(&b"Bob"[..]));
        assert_eq!(a.uri, b"sip:bob@biloxi.com");
        assert_eq!(a.tag(), Some(&b"a6c85cf"[..]));
        let a = NameAddr::parse(b"\"Alice \\\"A\\\" <x>\" <sip:alice@atlanta.com>;tag=1928301774").unwrap();
        assert_eq!(a.display_name, Some(&b"\"Alice \\\"A\\\" <x>\""[..]));
        assert_eq!(a.uri, b"sip:alice@atlanta.com");
        assert_eq!(a.tag(), Some(&b"1928301774"[..]));
        let a = NameAddr::parse(b"sip:carol@chicago.com;tag=887s").unwrap();
        assert_eq!(
            (a.uri, a.tag(), a.bracketed),
            (&b"sip:carol@chicago.com"[..], Some(&b"887s"[..]), false)
        );
        let a = NameAddr::parse(b"<sip:p1.example.com;lr>").unwrap();
        assert_eq!(a.uri, b"sip:p1.example.com;lr");
        assert!(a.parsed_uri().unwrap().is_loose_route());
        let a = NameAddr::parse(b"  < sip:x@[::1]:5060 > ; expires = 60 ").unwrap();
        assert_eq!(a.uri, b"sip:x@[::1]:5060");
        assert_eq!(a.param(b"expires"), Some(Some(&b"60"[..])));
    }

    #[test]
    fn invalid() {
        for bad in [
            &b""[..],
            b"<sip:a",
            b"\"unterminated <sip:a>",
            b"Name sip:a",
            b"<>",
            b"<sip:a> junk",
            b"<sip:a b>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
