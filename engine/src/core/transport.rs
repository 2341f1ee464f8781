//! Transports and connection identities, as the sans-IO core sees them.
//!
//! The core never touches a socket. It learns where a message came from
//! (a [`super::Local`]: a UDP socket, or a stream connection named by a
//! [`ConnId`]) and says where a message goes: back on a connection, out of
//! a UDP socket, or "to this address over this transport" (the runtime
//! reuses a connection to that peer or opens one). What the core decides
//! from transports: the Via it adds (`SIP/2.0/TCP ...;alias` on streams),
//! no retransmission timers on reliable transports (RFC 3261 §17.1.1.2),
//! single or double Record-Route (RFC 5658), and the next hop's transport
//! (`sips:`, `;transport=`).

use siplb_parser::{Scheme, Uri};

/// A SIP transport siplb speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Transport {
    /// UDP datagrams.
    #[default]
    Udp,
    /// A TCP stream.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// True for TCP and TLS: no retransmissions, Content-Length framing.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// The Via token: `UDP`, `TCP`, `TLS`.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The URI `transport` parameter value: `udp`, `tcp`, `tls`.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The default port (5060, or 5061 for TLS).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }

    /// The transport a URI asks for explicitly (`sips:` or
    /// `;transport=tcp|tls|udp`), `None` when it does not say.
    pub fn of_uri(uri: &Uri<'_>) -> Option<Transport> {
        if uri.scheme == Scheme::Sips {
            return Some(Transport::Tls);
        }
        Transport::from_param(uri.transport()?)
    }

    /// Parses a `transport` parameter value (case-insensitive); `None`
    /// for transports siplb does not speak (SCTP, WS...).
    pub fn from_param(p: &[u8]) -> Option<Transport> {
        match p {
            x if x.eq_ignore_ascii_case(b"udp") => Some(Transport::Udp),
            x if x.eq_ignore_ascii_case(b"tcp") => Some(Transport::Tcp),
            x if x.eq_ignore_ascii_case(b"tls") => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The transport named by a URI's bytes (UDP when it does not say).
    pub fn of_uri_bytes(uri: &[u8]) -> Transport {
        // The common case, a plain `sip:` URI without parameters, costs a
        // byte search, not a parse.
        if !uri.contains(&b';') && !uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case(b"sips")) {
            return Transport::Udp;
        }
        Uri::parse(uri)
            .ok()
            .and_then(|u| Transport::of_uri(&u))
            .unwrap_or_default()
    }
}

/// A stream connection, as named by the runtime: which worker owns it
/// (connections belong to one worker) and its handle there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// TCP or TLS.
    pub transport: Transport,
    /// The worker that owns the socket.
    pub worker: u16,
    /// The runtime's handle (slot and generation); opaque to the core.
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_from_uris() {
        let t = |u: &str| Transport::of_uri_bytes(u.as_bytes());
        assert_eq!(t("sip:10.0.0.1:5080"), Transport::Udp);
        assert_eq!(t("sip:10.0.0.1:5080;transport=TCP"), Transport::Tcp);
        assert_eq!(t("sip:10.0.0.1;lr;transport=tls"), Transport::Tls);
        assert_eq!(t("sips:10.0.0.1"), Transport::Tls);
        assert_eq!(t("sip:10.0.0.1;transport=sctp"), Transport::Udp);
        assert_eq!(Transport::Tls.default_port(), 5061);
    }
}
