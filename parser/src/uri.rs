//! SIP, SIPS and tel URIs over borrowed bytes (RFC 3261 §19.1, RFC 3966).
//!
//! Contract: [`Uri::parse`] checks the overall shape (scheme, optional
//! userinfo, a non-empty host or IPv6 reference, an optional numeric port,
//! parameters and headers) and returns slices of the input. It does not
//! unescape `%XX` sequences, does not validate host names against DNS rules
//! beyond the allowed characters, and does not interpret parameter values.

use crate::error::{Error, ErrorKind};
use crate::lex::{self, Params};

/// The URI scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

/// A parsed URI. Every field borrows from the parsed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme,
    /// The user part (`sip:USER@host`), or the number of a `tel:` URI.
    /// Still %-escaped. May contain user parameters (`+1234;npdi`).
    pub user: Option<&'a [u8]>,
    /// The password part (`sip:user:PASSWORD@host`), discouraged but legal.
    pub password: Option<&'a [u8]>,
    /// The host: a name, an IPv4 address, or an IPv6 reference with its
    /// brackets (`[2001:db8::1]`). Empty for `tel:` URIs.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// The raw parameter list, starting with `;`, or empty.
    pub params: &'a [u8],
    /// The raw header list after `?`, without the `?`, or empty.
    pub headers: &'a [u8],
}

impl<'a> Uri<'a> {
    /// Parses `s`, which must hold only the URI (no angle brackets, no
    /// surrounding white space).
    pub fn parse(s: &'a [u8]) -> Result<Uri<'a>, Error> {
        let bad = Error::new(ErrorKind::BadUri, 0);
        // The scheme is the first four bytes (`sip:`, `tel:`) or five
        // (`sips:`).
        let (scheme, colon) = match s.get(..4) {
            Some(x) if lex::eq_lower(x, b"sip:") => (Scheme::Sip, 3),
            Some(x) if lex::eq_lower(x, b"tel:") => (Scheme::Tel, 3),
            _ => match s.get(..5) {
                Some(x) if lex::eq_lower(x, b"sips:") => (Scheme::Sips, 4),
                _ => return Err(bad),
            },
        };
        let rest = &s[colon + 1..];
        if rest.is_empty() || lex::has_space_control_or_del(rest) {
            return Err(bad);
        }
        if scheme == Scheme::Tel {
            let end = lex::find_byte(rest, 0, b';').unwrap_or(rest.len());
            if end == 0 {
                return Err(bad);
            }
            return Ok(Uri {
                scheme,
                user: Some(&rest[..end]),
                password: None,
                host: &[],
                port: None,
                params: &rest[end..],
                headers: &[],
            });
        }
        // Headers start at the first '?', which cannot appear in the
        // userinfo, host or parameters.
        let (main, headers) = match lex::find_byte(rest, 0, b'?') {
            Some(q) => (&rest[..q], &rest[q + 1..]),
            None => (rest, &[][..]),
        };
        // The userinfo ends at the last '@' (user may contain ';', '=', ...).
        let (user, password, hostport) = match lex::rfind_byte(main, b'@') {
            Some(at) => {
                let userinfo = &main[..at];
                if userinfo.is_empty() {
                    return Err(bad);
                }
                let (user, password) = match lex::find_byte(userinfo, 0, b':') {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                (Some(user), password, &main[at + 1..])
            }
            None => (None, None, main),
        };
        let (host, after_host) = split_host(hostport).ok_or(bad)?;
        let (port, params) = match after_host.first() {
            None => (None, &[][..]),
            Some(b';') => (None, after_host),
            Some(b':') => {
                let p = &after_host[1..];
                let end = lex::find_byte(p, 0, b';').unwrap_or(p.len());
                let port = lex::parse_u32(&p[..end], 5)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or(bad)?;
                (Some(port), &p[end..])
            }
            Some(_) => return Err(bad),
        };
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Iterates over the URI parameters (`;lr`, `;transport=tcp`, ...).
    pub fn param_iter(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// The value of parameter `name` (case-insensitive); `Some(None)` for
    /// a flag such as `lr`.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.param_iter().value_of(name)
    }

    /// True when the URI carries the `lr` (loose routing) parameter.
    pub fn is_loose_route(&self) -> bool {
        self.param(b"lr").is_some()
    }

    /// The `transport` parameter, if any.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param(b"transport").flatten()
    }

    /// The host as an IP address, when it is one (IPv4, or IPv6 in
    /// brackets); `None` for a host name.
    pub fn host_ip(&self) -> Option<std::net::IpAddr> {
        host_ip(self.host)
    }

    /// The `maddr` parameter, if any.
    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.param(b"maddr").flatten()
    }
}

/// Parses an IP host as written in SIP: `192.0.2.1` or `[2001:db8::1]`.
pub fn host_ip(host: &[u8]) -> Option<std::net::IpAddr> {
    let text = std::str::from_utf8(host).ok()?;
    match text.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(Into::into),
        None => text.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

/// Splits `host[...]` off the front of `s`, returning the host and the rest
/// (which starts with `:`, `;` or is empty).
pub(crate) fn split_host(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if s.first() == Some(&b'[') {
        let close = lex::find_byte(s, 0, b']')?;
        let inner = &s[1..close];
        if inner.is_empty() || !inner.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        return Some((&s[..=close], &s[close + 1..]));
    }
    let end = lex::skip_run(s, 0, lex::is_host_char);
    let host = &s[..end];
    if host.is_empty()
        || !matches!(
            s.get(end),
            None | Some(b':' | b';' | b'?' | b' ' | b'\t' | b'\r' | b'\n')
        )
    {
        return None;
    }
    Some((host, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sip_uri() {
        let u =
            Uri::parse(b"sip:alice:secret@atlanta.com:5061;transport=tcp;lr?subject=project&priority=urgent").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host, b"atlanta.com");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert!(u.is_loose_route());
        assert_eq!(u.headers, b"subject=project&priority=urgent");
    }

    #[test]
    fn rfc3261_examples() {
        let u = Uri::parse(b"sips:1212@gateway.com").unwrap();
        assert_eq!(
            (u.scheme, u.user, u.host, u.port),
            (Scheme::Sips, Some(&b"1212"[..]), &b"gateway.com"[..], None)
        );
        let u = Uri::parse(b"sip:alice@192.0.2.4").unwrap();
        assert_eq!(u.host, b"192.0.2.4");
        let u = Uri::parse(b"sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com").unwrap();
        assert_eq!(u.user, None);
        assert_eq!(u.param(b"method"), Some(Some(&b"REGISTER"[..])));
        assert_eq!(u.headers, b"to=alice%40atlanta.com");
        let u = Uri::parse(b"sip:+1-212-555-1212:1234@gateway.com;user=phone").unwrap();
        assert_eq!(u.user, Some(&b"+1-212-555-1212"[..]));
        assert_eq!(u.password, Some(&b"1234"[..]));
        let u = Uri::parse(b"sip:alice;day=tuesday@atlanta.com").unwrap();
        assert_eq!(u.user, Some(&b"alice;day=tuesday"[..]));
        assert_eq!(u.host, b"atlanta.com");
    }

    #[test]
    fn ipv6_host() {
        let u = Uri::parse(b"sip:bob@[2001:db8::10]:5070;maddr=[2001:db8::1]").unwrap();
        assert_eq!(u.host, b"[2001:db8::10]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.maddr(), Some(&b"[2001:db8::1]"[..]));
        let u = Uri::parse(b"sip:[::1]").unwrap();
        assert_eq!((u.host, u.port), (&b"[::1]"[..], None));
    }

    #[test]
    fn host_as_ip() {
        let ip = |u: &[u8]| Uri::parse(u).unwrap().host_ip();
        assert_eq!(ip(b"sip:a@192.0.2.1:5060"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(ip(b"sip:[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(ip(b"sip:example.com"), None);
        assert_eq!(host_ip(b"2001:db8::1"), None, "IPv6 in a URI host needs brackets");
        assert_eq!(host_ip(b"999.1.1.1"), None);
    }

    #[test]
    fn tel_uri() {
        let u = Uri::parse(b"tel:+358-555-1234567;postd=pp22").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+358-555-1234567"[..]));
        assert_eq!(u.param(b"postd"), Some(Some(&b"pp22"[..])));
    }

    #[test]
    fn invalid() {
        for bad in [
            &b""[..],
            b"sip:",
            b"http://x",
            b"sip:@host",
            b"sip:host:99999",
            b"sip:host:abc",
            b"sip:[zz::1]",
            b"sip:[::1",
            b"sip:ho st",
            b"sip:user@",
            b"tel:",
            b"sip:host\x7f",
            b"sip:a@averylonghostname.example.com;x=\x7f",
            b"sip:a@averylonghostname.example.com;x=\x01y",
            b"sipx:host",
            b"si:host",
            b"s1p:host",
            b"sip;host",
            b"sips;host",
        ] {
            assert!(Uri::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for (good, scheme) in [
            (&b"SIP:host"[..], Scheme::Sip),
            (b"Sips:host", Scheme::Sips),
            (b"TEL:+1234", Scheme::Tel),
        ] {
            assert_eq!(Uri::parse(good).map(|u| u.scheme), Ok(scheme));
        }
    }
}
