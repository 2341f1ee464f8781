//! Framing SIP on a stream (TCP, TLS): messages and RFC 5626 keep-alives.
//!
//! A stream carries messages back to back, each delimited by its
//! Content-Length (RFC 3261 §18.3), with line breaks allowed between them
//! (§7.5) and used as keep-alives (RFC 5626 §3.5.1: a double CRLF "ping",
//! answered by a single CRLF "pong"). [`frame`] looks at the front of a
//! receive buffer and says what is there and how many bytes it takes.
//!
//! Contract: [`Frame::consumed`] bytes are to be removed from the front of
//! the buffer after handling a frame; a [`Frame::Partial`] consumes nothing
//! (read more and call again). A message without Content-Length is an error
//! on a stream ([`ErrorKind::MissingContentLength`]), as is one larger than
//! the size limit ([`ErrorKind::TooLarge`], also raised when the header
//! block alone grows past it): a caller should close the connection on any
//! error, since the stream cannot be resynchronised.

use crate::{scan_stream_with, Error, ErrorKind, Message, Options, Status};

/// What the front of a stream buffer holds.
// The size difference between variants is deliberate (see `Status`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame<'a> {
    /// A whole message.
    Message(Message<'a>),
    /// A keep-alive "ping" (CRLF CRLF, 4 bytes): answer with a single CRLF.
    Ping,
    /// A single CRLF that is not part of a ping: a "pong", or a line break
    /// between messages; nothing to answer.
    Pong,
    /// Not enough bytes yet to tell.
    Partial,
}

impl Frame<'_> {
    /// How many bytes of the buffer this frame takes.
    pub fn consumed(&self) -> usize {
        match self {
            Frame::Message(m) => m.len(),
            Frame::Ping => 4,
            Frame::Pong => 2,
            Frame::Partial => 0,
        }
    }
}

/// Looks at the front of a stream buffer; see the module docs.
pub fn frame<'a>(buf: &'a [u8], options: &Options) -> Result<Frame<'a>, Error> {
    match buf {
        [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(Frame::Partial),
        [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Frame::Ping),
        [b'\r', b'\n', ..] => return Ok(Frame::Pong),
        [b'\r', ..] | [b'\n', ..] => return Err(Error::new(ErrorKind::BadStartLine, 0)),
        _ => {}
    }
    match scan_stream_with(buf, options)? {
        Status::Complete(m) => Ok(Frame::Message(m)),
        Status::Partial => Ok(Frame::Partial),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
To: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 2\r\n\r\nok";

    fn kinds(mut buf: &[u8]) -> Vec<&'static str> {
        let mut out = Vec::new();
        loop {
            let f = frame(buf, &Options::default()).unwrap();
            out.push(match f {
                Frame::Message(_) => "message",
                Frame::Ping => "ping",
                Frame::Pong => "pong",
                Frame::Partial => "partial",
            });
            if f.consumed() == 0 {
                return out;
            }
            buf = &buf[f.consumed()..];
        }
    }

    #[test]
    fn messages_and_keep_alives_back_to_back() {
        let mut buf = b"\r\n\r\n".to_vec();
        buf.extend_from_slice(MSG);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(MSG);
        buf.extend_from_slice(b"\r\n\r\n\r\n");
        buf.extend_from_slice(&MSG[..20]);
        assert_eq!(
            kinds(&buf),
            ["ping", "message", "pong", "message", "ping", "pong", "partial"]
        );
    }

    #[test]
    fn every_prefix_is_partial_and_the_whole_is_a_message() {
        for cut in 0..MSG.len() {
            assert!(
                matches!(frame(&MSG[..cut], &Options::default()), Ok(Frame::Partial)),
                "cut {cut}"
            );
        }
        let Ok(Frame::Message(m)) = frame(MSG, &Options::default()) else {
            panic!("expected a message")
        };
        assert_eq!((m.len(), m.body()), (MSG.len(), &b"ok"[..]));
    }

    #[test]
    fn errors_that_close_the_connection() {
        let no_length = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
To: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(
            frame(no_length, &Options::default()).unwrap_err().kind,
            ErrorKind::MissingContentLength
        );
        assert_eq!(
            frame(b"\n\n", &Options::default()).unwrap_err().kind,
            ErrorKind::BadStartLine
        );
        assert_eq!(
            frame(b"\rX", &Options::default()).unwrap_err().kind,
            ErrorKind::BadStartLine
        );
        let endless = [b"OPTIONS sip:x SIP/2.0\r\nX: ".to_vec(), vec![b'y'; 70_000]].concat();
        assert_eq!(
            frame(&endless, &Options::default()).unwrap_err().kind,
            ErrorKind::TooLarge
        );
    }
}
