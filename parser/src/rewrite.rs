//! The rewriter: a scanned message plus edits in, a gather list out.
//!
//! A proxy changes very little of what it relays: it adds or removes a Via,
//! removes its own Route entry, adds a Record-Route, and lowers
//! Max-Forwards. [`rewrite`] expresses the result as an ordered list of
//! slices, pieces of the original buffer interleaved with new bytes, ready
//! for `sendmsg`/`writev` ([`Rewrite::io_slices`]) or for copying into a
//! buffer ([`Rewrite::write_to`]). The body is never copied.
//!
//! Contract: edits refer to the message as scanned, not to each other's
//! output; each target may be removed once (a second removal of the same
//! bytes is [`RewriteError::Conflict`]). Insertions that land at the same
//! offset appear in the order of the edits (with no Record-Route in the
//! message, `[InsertRecordRoute, SetMaxForwards]` on a message without
//! Max-Forwards puts both new lines after the last Via line, Record-Route
//! first). New header lines always end in CRLF.
//! Line breaks skipped before the start line are not part of the output.
//! Values passed in edits are written verbatim: the caller is responsible for
//! their syntax.

use crate::message::{Message, StartLine, ValueRef};
use core::fmt;
use std::io::IoSlice;

/// Most slices one rewrite can produce.
pub const MAX_PIECES: usize = 32;

/// One change to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit<'e> {
    /// Add a Via line with this value above the topmost Via.
    PrependVia(&'e [u8]),
    /// Remove the topmost Via value (the whole line when it is the only
    /// value of its line), as when relaying a response.
    RemoveTopVia,
    /// Remove the first Route value (the whole line when it is alone).
    RemoveFirstRoute,
    /// Remove the whole header line holding the first Route value.
    RemoveFirstRouteHeader,
    /// Add a Record-Route line with this value above the existing ones
    /// (after the Via lines when there is none). Several inserts keep their
    /// order.
    InsertRecordRoute(&'e [u8]),
    /// Set Max-Forwards to this value, adding the header when absent.
    SetMaxForwards(u8),
    /// RFC 3261 §18.2.1 and RFC 3581 on the topmost Via: add
    /// `;received=ADDR` (unless `received` is empty; an existing `received`
    /// value is replaced) and, when the client asked with a bare `;rport`,
    /// fill in `;rport=PORT`.
    TopViaReceived {
        received: &'e [u8],
        rport: Option<&'e [u8]>,
    },
    /// Replace the Request-URI of a request (a response has none:
    /// [`RewriteError::Missing`]).
    SetRequestUri(&'e [u8]),
    /// Add a header line (`Name: value`, without the line break) after the
    /// Via lines.
    InsertHeader(&'e [u8]),
}

/// Why a rewrite could not be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteError {
    /// An edit removes something the message does not have (no Route to
    /// remove, for instance).
    Missing,
    /// Two edits remove overlapping bytes.
    Conflict,
    /// The edits would need more than [`MAX_PIECES`] slices.
    TooManyPieces,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RewriteError::Missing => "edit targets a header the message does not have",
            RewriteError::Conflict => "two edits remove overlapping bytes",
            RewriteError::TooManyPieces => "too many edits for one rewrite",
            RewriteError::BufferTooSmall => "output buffer too small",
        })
    }
}

impl std::error::Error for RewriteError {}

/// The rewritten message as an ordered list of slices.
#[derive(Clone, Debug)]
pub struct Rewrite<'x> {
    pieces: [&'x [u8]; MAX_PIECES],
    count: usize,
    len: usize,
}

impl<'x> Rewrite<'x> {
    /// The slices, in order.
    pub fn pieces(&self) -> &[&'x [u8]] {
        &self.pieces[..self.count]
    }

    /// Total length of the output in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the output is empty (never, for a scanned message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `out` with `IoSlice`s for a gather send; returns how many were
    /// written (at most `out.len()`; pass [`MAX_PIECES`] entries to be safe).
    pub fn io_slices<'s>(&'s self, out: &mut [IoSlice<'s>]) -> usize {
        let n = self.count.min(out.len());
        for (slot, piece) in out.iter_mut().zip(self.pieces()) {
            *slot = IoSlice::new(piece);
        }
        n
    }

    /// Copies the output into `out`; returns the number of bytes written.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, RewriteError> {
        if out.len() < self.len {
            return Err(RewriteError::BufferTooSmall);
        }
        let mut at = 0;
        for p in self.pieces() {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        Ok(at)
    }

    /// The output as a new vector (convenience for tests and tools; the
    /// data path uses [`Rewrite::write_to`] or [`Rewrite::io_slices`]).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in self.pieces() {
            v.extend_from_slice(p);
        }
        v
    }
}

/// A replacement of `start..end` of the original by up to four slices.
#[derive(Clone, Copy)]
struct Cut<'x> {
    start: usize,
    end: usize,
    insert: [&'x [u8]; 4],
    order: usize,
}

const MAX_CUTS: usize = 12;

/// Applies `edits` to `msg`; see the module docs.
pub fn rewrite<'x>(msg: &Message<'x>, edits: &[Edit<'x>]) -> Result<Rewrite<'x>, RewriteError> {
    let buf = msg.buf;
    let entries = msg.entries();
    let line_of = |v: &ValueRef| entries[usize::from(v.header)].line();
    // Where new lines go when there is no better place: after the last Via line.
    let after_vias = msg
        .vias
        .as_slice()
        .last()
        .map_or(msg.start_line_end(), |v| line_of(v).end as usize);

    const E: &[u8] = b"";
    let unused = Cut {
        start: usize::MAX,
        end: usize::MAX,
        insert: [E; 4],
        order: usize::MAX,
    };
    let mut cuts: [Cut<'x>; MAX_CUTS] = [unused; MAX_CUTS];
    let mut ncuts = 0;
    let mut add = |start: usize, end: usize, insert: [&'x [u8]; 4]| -> Result<(), RewriteError> {
        let slot = cuts.get_mut(ncuts).ok_or(RewriteError::TooManyPieces)?;
        *slot = Cut {
            start,
            end,
            insert,
            order: ncuts,
        };
        ncuts += 1;
        Ok(())
    };

    for edit in edits {
        match *edit {
            Edit::PrependVia(value) => {
                let at = msg
                    .vias
                    .as_slice()
                    .first()
                    .map_or(after_vias, |v| line_of(v).start as usize);
                add(at, at, [b"Via: ", value, b"\r\n", E])?;
            }
            Edit::RemoveTopVia => {
                let (s, e) = remove_first_value(msg, msg.vias.as_slice())?;
                add(s, e, [E; 4])?;
            }
            Edit::RemoveFirstRoute => {
                let (s, e) = remove_first_value(msg, msg.routes.as_slice())?;
                add(s, e, [E; 4])?;
            }
            Edit::RemoveFirstRouteHeader => {
                let first = msg.routes.as_slice().first().ok_or(RewriteError::Missing)?;
                let line = line_of(first);
                add(line.start as usize, line.end as usize, [E; 4])?;
            }
            Edit::InsertRecordRoute(value) => {
                let at = msg
                    .record_routes
                    .as_slice()
                    .first()
                    .map_or(after_vias, |v| line_of(v).start as usize);
                add(at, at, [b"Record-Route: ", value, b"\r\n", E])?;
            }
            Edit::SetMaxForwards(n) => match msg.max_forwards {
                Some((_, h)) => {
                    let value = entries[usize::from(h)].value(buf);
                    add(value.start as usize, value.end as usize, [decimal(n), E, E, E])?;
                }
                None => add(after_vias, after_vias, [b"Max-Forwards: ", decimal(n), b"\r\n", E])?,
            },
            Edit::SetRequestUri(uri) => {
                let StartLine::Request { uri: old, .. } = msg.start_line else {
                    return Err(RewriteError::Missing);
                };
                let s = offset_in(buf, old);
                add(s, s + old.len(), [uri, E, E, E])?;
            }
            Edit::InsertHeader(line) => add(after_vias, after_vias, [line, b"\r\n", E, E])?,
            Edit::TopViaReceived { received, rport } => {
                let top = msg.vias.as_slice().first().ok_or(RewriteError::Missing)?;
                let via = msg.top_via;
                if !received.is_empty() {
                    match via.received {
                        Some(old) => {
                            let s = offset_in(buf, old);
                            add(s, s + old.len(), [received, E, E, E])?;
                        }
                        None => {
                            let at = top.span.end as usize;
                            add(at, at, [b";received=", received, E, E])?;
                        }
                    }
                }
                if let (Some(port), crate::Rport::Requested) = (rport, via.rport) {
                    // The flag itself (a Via may also carry an `rport=` with
                    // a value, which is left alone).
                    let flag = via
                        .param_iter()
                        .find(|&(n, v)| v.is_none() && n.eq_ignore_ascii_case(b"rport"));
                    if let Some((name, _)) = flag {
                        let s = offset_in(buf, name);
                        add(s, s + name.len(), [b"rport=", port, E, E])?;
                    }
                }
            }
        }
    }

    let cuts = &mut cuts[..ncuts];
    // Insertion sort: a handful of cuts, usually already in order.
    for i in 1..cuts.len() {
        let mut j = i;
        while j > 0 && (cuts[j - 1].start, cuts[j - 1].order) > (cuts[j].start, cuts[j].order) {
            cuts.swap(j - 1, j);
            j -= 1;
        }
    }

    let mut out = Rewrite {
        pieces: [E; MAX_PIECES],
        count: 0,
        len: 0,
    };
    let mut push = |p: &'x [u8]| -> Result<(), RewriteError> {
        if p.is_empty() {
            return Ok(());
        }
        let slot = out.pieces.get_mut(out.count).ok_or(RewriteError::TooManyPieces)?;
        *slot = p;
        out.count += 1;
        out.len += p.len();
        Ok(())
    };
    let mut cursor = msg.start_line_start();
    for cut in cuts.iter() {
        if cut.start < cursor {
            return Err(RewriteError::Conflict);
        }
        push(&buf[cursor..cut.start])?;
        for p in cut.insert {
            push(p)?;
        }
        cursor = cut.end;
    }
    push(&buf[cursor..usize::from(msg.len)])?;
    Ok(out)
}

/// The bytes to delete to remove the first value of a list: the whole line
/// when it is the only value in its line, else the value up to the next one.
fn remove_first_value(msg: &Message<'_>, list: &[ValueRef]) -> Result<(usize, usize), RewriteError> {
    let first = list.first().ok_or(RewriteError::Missing)?;
    match list.get(1) {
        Some(second) if second.header == first.header => Ok((first.span.start as usize, second.span.start as usize)),
        _ => {
            let line = msg.entries()[usize::from(first.header)].line();
            Ok((line.start as usize, line.end as usize))
        }
    }
}

/// Offset of `sub` inside `buf`; `sub` must be a sub-slice of `buf`.
fn offset_in(buf: &[u8], sub: &[u8]) -> usize {
    (sub.as_ptr() as usize)
        .saturating_sub(buf.as_ptr() as usize)
        .min(buf.len())
}

/// Decimal text of 0..=255 without formatting at run time.
fn decimal(n: u8) -> &'static [u8] {
    let (digits, len) = &DECIMALS[usize::from(n)];
    &digits[..*len]
}

static DECIMALS: [([u8; 3], usize); 256] = {
    let mut table = [([0u8; 3], 0usize); 256];
    let mut n = 0;
    while n < 256 {
        let (h, t, o) = ((n / 100) as u8, ((n / 10) % 10) as u8, (n % 10) as u8);
        table[n] = if n >= 100 {
            ([b'0' + h, b'0' + t, b'0' + o], 3)
        } else if n >= 10 {
            ([b'0' + t, b'0' + o, 0], 2)
        } else {
            ([b'0' + o, 0, 0], 1)
        };
        n += 1;
    }
    table
};

impl Message<'_> {
    pub(crate) fn start_line_start(&self) -> usize {
        self.start_line_span.start as usize
    }

    /// Offset of the first header line (after the start line's line break).
    pub(crate) fn start_line_end(&self) -> usize {
        match self.entries().first() {
            Some(e) => e.start as usize,
            None => usize::from(self.body_start),
        }
    }
}
