//! One Via value (RFC 3261 §20.42, RFC 3581 `rport`).
//!
//! Contract: [`Via::parse`] accepts `SIP / 2.0 / TRANSPORT SP sent-by
//! *(; param)` with linear white space around `/`, `:`, `;` and `=`, and an
//! IPv6 reference as host. It checks that the protocol is SIP/2.0, that the
//! transport is a token, that the host is well formed and that the port and
//! the `rport` value are numbers below 65536. It does not check that the
//! branch starts with the RFC 3261 magic cookie (old RFC 2543 peers exist)
//! nor the syntax of other parameter values.

use crate::error::{Error, ErrorKind};
use crate::lex::{self, Params};

/// The transport named in a Via value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Sctp,
    Ws,
    Wss,
    Other,
}

impl Transport {
    /// Classifies a transport token, case-insensitively.
    pub fn from_token(t: &[u8]) -> Transport {
        match t {
            x if lex::eq_ic(x, b"UDP") => Transport::Udp,
            x if lex::eq_ic(x, b"TCP") => Transport::Tcp,
            x if lex::eq_ic(x, b"TLS") => Transport::Tls,
            x if lex::eq_ic(x, b"SCTP") => Transport::Sctp,
            x if lex::eq_ic(x, b"WS") => Transport::Ws,
            x if lex::eq_ic(x, b"WSS") => Transport::Wss,
            _ => Transport::Other,
        }
    }
}

/// The `rport` parameter of RFC 3581.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rport {
    /// No `rport` parameter.
    #[default]
    Absent,
    /// `;rport` without a value: the client asks for it to be filled in.
    Requested,
    /// `;rport=PORT`, as filled in by the server.
    Value(u16),
}

/// A parsed Via value; every slice borrows from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole value, trimmed.
    pub value: &'a [u8],
    /// The transport token as written (`UDP`, `tcp`, `TLS`...).
    pub transport_token: &'a [u8],
    /// The sent-by host; an IPv6 reference keeps its brackets.
    pub host: &'a [u8],
    /// The sent-by port, if written.
    pub port: Option<u16>,
    /// The `branch` parameter.
    pub branch: Option<&'a [u8]>,
    /// The `received` parameter.
    pub received: Option<&'a [u8]>,
    /// The `rport` parameter.
    pub rport: Rport,
    /// The raw parameter list, starting at the first `;`, or empty.
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// Parses one Via value (no commas).
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, Error> {
        let bad = Error::new(ErrorKind::BadVia, 0);
        let s = lex::trim(value);
        let (transport_token, i) = match protocol_fast(s) {
            Some(found) => found,
            None => protocol_slow(s).ok_or(bad)?,
        };
        // sent-by = host [ COLON port ], then *( SEMI via-params ), in one
        // forward pass (this runs for every Via of every message).
        let (host, mut i) = sent_by_host(s, i).ok_or(bad)?;
        i = lex::skip_lws(s, i);
        let mut port = None;
        if s.get(i) == Some(&b':') {
            i = lex::skip_lws(s, i + 1);
            let start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            port = Some(
                lex::parse_u32(&s[start..i], 5)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or(bad)?,
            );
            i = lex::skip_lws(s, i);
        }
        let mut via = Via {
            value: s,
            transport_token,
            host,
            port,
            branch: None,
            received: None,
            rport: Rport::Absent,
            params: &s[i..],
        };
        while i < s.len() {
            if s[i] != b';' {
                return Err(bad);
            }
            i = lex::skip_lws(s, i + 1);
            let name_start = i;
            while i < s.len() && lex::is_token(s[i]) {
                i += 1;
            }
            let name = &s[name_start..i];
            if name.is_empty() {
                return Err(bad);
            }
            i = lex::skip_lws(s, i);
            let mut value = None;
            if s.get(i) == Some(&b'=') {
                i = lex::skip_lws(s, i + 1);
                let value_start = i;
                if s.get(i) == Some(&b'"') {
                    i = lex::closing_quote(s, i).ok_or(bad)? + 1;
                } else {
                    i = lex::skip_run(s, i, lex::is_via_param_value);
                }
                value = Some(&s[value_start..i]);
                i = lex::skip_lws(s, i);
            }
            match (name.len(), name[0] | 0x20) {
                (6, b'b') if lex::eq_lower(name, b"branch") => {
                    via.branch = Some(value.filter(|v| !v.is_empty()).ok_or(bad)?);
                }
                (8, b'r') if lex::eq_lower(name, b"received") => {
                    via.received = Some(value.filter(|v| !v.is_empty()).ok_or(bad)?);
                }
                (5, b'r') if lex::eq_lower(name, b"rport") => {
                    via.rport = match value {
                        None => Rport::Requested,
                        Some(p) => Rport::Value(lex::parse_u32(p, 5).and_then(|n| u16::try_from(n).ok()).ok_or(bad)?),
                    };
                }
                _ => {}
            }
        }
        Ok(via)
    }

    /// The transport, classified.
    pub fn transport(&self) -> Transport {
        Transport::from_token(self.transport_token)
    }

    /// Iterates over all parameters.
    pub fn param_iter(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// The value of parameter `name`; `Some(None)` for a flag.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.param_iter().value_of(name)
    }
}

/// `SIP/2.0/TOKEN SP` exactly as nearly everyone writes it: returns the
/// transport and the offset after the blank(s).
#[inline]
fn protocol_fast(s: &[u8]) -> Option<(&[u8], usize)> {
    let prefix = s.get(..8)?;
    if !lex::eq_lower(prefix, b"sip/2.0/") {
        return None;
    }
    let mut i = 8;
    while i < s.len() && lex::is_token(s[i]) {
        i += 1;
    }
    let end = i;
    if end == 8 || !matches!(s.get(i), Some(b' ' | b'\t')) {
        return None;
    }
    while i < s.len() && lex::is_lws(s[i]) {
        i += 1;
    }
    Some((&s[8..end], i))
}

/// protocol-name / protocol-version / transport with LWS around the slashes.
fn protocol_slow(s: &[u8]) -> Option<(&[u8], usize)> {
    let mut i = 0;
    let mut parts: [&[u8]; 3] = [&[]; 3];
    for (n, part) in parts.iter_mut().enumerate() {
        i = lex::skip_lws(s, i);
        let start = i;
        while i < s.len() && lex::is_token(s[i]) {
            i += 1;
        }
        *part = &s[start..i];
        if part.is_empty() {
            return None;
        }
        let before = i;
        i = lex::skip_lws(s, i);
        if n < 2 {
            if s.get(i) != Some(&b'/') {
                return None;
            }
            i += 1;
        } else if i == before || i == s.len() {
            // The transport must be followed by white space and a host.
            return None;
        }
    }
    if !lex::eq_ic(parts[0], b"SIP") || parts[1] != b"2.0" {
        return None;
    }
    Some((parts[2], i))
}

/// The sent-by host starting at `s[i]`: an IPv6 reference or a run of
/// host-name characters. Returns it and the offset after it.
#[inline]
fn sent_by_host(s: &[u8], i: usize) -> Option<(&[u8], usize)> {
    let (host, _) = crate::uri::split_host(s.get(i..)?)?;
    Some((host, i + host.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical() {
        let v = Via::parse(b"SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds").unwrap();
        assert_eq!(v.transport(), Transport::Udp);
        assert_eq!(v.host, b"pc33.atlanta.com");
        assert_eq!(v.port, None);
        assert_eq!(v.branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(v.rport, Rport::Absent);
    }

    #[test]
    fn rport_received_and_spacing() {
        let v = Via::parse(b"SIP / 2.0 / tcp 192.0.2.1 : 5090 ; branch = z9hG4bKx ; received=10.0.0.1 ;rport").unwrap();
        assert_eq!(v.transport(), Transport::Tcp);
        assert_eq!(v.transport_token, b"tcp");
        assert_eq!((v.host, v.port), (&b"192.0.2.1"[..], Some(5090)));
        assert_eq!(v.branch, Some(&b"z9hG4bKx"[..]));
        assert_eq!(v.received, Some(&b"10.0.0.1"[..]));
        assert_eq!(v.rport, Rport::Requested);
        let v = Via::parse(b"SIP/2.0/UDP h;rport=5060;branch=z9hG4bK1").unwrap();
        assert_eq!(v.rport, Rport::Value(5060));
    }

    #[test]
    fn ipv6_sent_by() {
        let v = Via::parse(b"SIP/2.0/UDP [2001:db8::9:1]:5062;branch=z9hG4bKas3-111").unwrap();
        assert_eq!((v.host, v.port), (&b"[2001:db8::9:1]"[..], Some(5062)));
        let v = Via::parse(b"SIP/2.0/TLS [::1];branch=z9hG4bKa").unwrap();
        assert_eq!((v.host, v.port, v.transport()), (&b"[::1]"[..], None, Transport::Tls));
    }

    #[test]
    fn invalid() {
        for bad in [
            &b""[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP ",
            b"SIP/3.0/UDP host",
            b"HTTP/2.0/UDP host",
            b"SIP/2.0 host",
            b"SIP/2.0/UDPhost",
            b"SIP/2.0/UDP host:99999",
            b"SIP/2.0/UDP host:;branch=1",
            b"SIP/2.0/UDP host;branch",
            b"SIP/2.0/UDP host;rport=x",
            b"SIP/2.0/UDP [::1;branch=1",
            b"SIP/2.0/UDP host;br@nch=1",
        ] {
            assert!(Via::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
