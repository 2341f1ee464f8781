//! Lexical helpers shared by the scanner and the value parsers.
//!
//! All functions work on borrowed bytes and return sub-slices or offsets;
//! none of them allocates or panics on any input.

use crate::simd;

/// RFC 3261 `token` characters: alphanum and `-.!%*_+`'~`.
#[inline]
pub(crate) const fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// A 256-entry lookup table, built at compile time, true for the bytes `b`
/// for which `$class` holds.
macro_rules! byte_table {
    (|$b:ident| $class:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            t[i] = $class;
            i += 1;
        }
        t
    }};
}

static TOKEN: [bool; 256] = byte_table!(|b| matches!(b,
    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
    | b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'));

/// Characters of a host name (RFC 3261 `hostname`, plus `_` as seen in
/// the wild): alphanum and `-._`.
#[inline]
pub(crate) const fn is_host_char(b: u8) -> bool {
    HOST[b as usize]
}

static HOST: [bool; 256] = byte_table!(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_'));

/// Characters of an unquoted Via parameter value: token, and the `:[]` of
/// IPv6 addresses in `received`/`maddr`.
#[inline]
pub(crate) const fn is_via_param_value(b: u8) -> bool {
    VIA_PARAM[b as usize]
}

static VIA_PARAM: [bool; 256] = byte_table!(|b| TOKEN[b as usize] || matches!(b, b':' | b'[' | b']'));

/// True when `s` holds a byte at or below SP (white space, line breaks,
/// control characters). Eight bytes at a time: a URI or a Call-ID is
/// 20-60 bytes long and this runs for several per message.
#[inline]
pub(crate) fn has_space_or_control(s: &[u8]) -> bool {
    has_low_byte::<false>(s)
}

/// [`has_space_or_control`], or DEL (0x7f), in one pass.
#[inline]
pub(crate) fn has_space_control_or_del(s: &[u8]) -> bool {
    has_low_byte::<true>(s)
}

/// A byte at or below SP, or (with `DEL`) a 0x7f, sixteen bytes at a time.
#[inline]
fn has_low_byte<const DEL: bool>(s: &[u8]) -> bool {
    find_mask(s, 0, |block| {
        let low = simd::at_most(block, b' ');
        if DEL {
            low | simd::eq(block, 0x7f)
        } else {
            low
        }
    })
    .is_some()
}

/// True when `s` holds a control character other than HT (bytes below SP,
/// and DEL): what a start line must not contain.
#[inline]
pub(crate) fn has_control(s: &[u8]) -> bool {
    find_mask(s, 0, |block| {
        simd::at_most(block, 0x1f) & !simd::eq(block, b'\t') | simd::eq(block, 0x7f)
    })
    .is_some()
}

/// The end of the run of bytes from `i` on for which `class` holds, where
/// `class` includes every byte [`simd::host_chars`] flags (letters,
/// digits, `-.\_`): sixteen bytes at a time over those, byte by byte over
/// the others (token punctuation such as `!%*+`, the `:[]` of an IPv6
/// address).
#[inline(always)]
pub(crate) fn skip_run(s: &[u8], mut i: usize, class: impl Fn(u8) -> bool) -> usize {
    loop {
        if i >= s.len() {
            return i;
        }
        i = find_mask(s, i, |block| !simd::host_chars(block) & 0xffff).unwrap_or(s.len());
        match s.get(i) {
            Some(&b) if class(b) => i += 1,
            _ => return i,
        }
    }
}

/// Linear white space as it appears inside a (possibly folded) header value.
pub(crate) const fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims linear white space (including folded line breaks) at both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_lws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_lws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Offset of the first non-LWS byte at or after `i`, or `s.len()`.
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

pub(crate) fn all_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// Parses an unsigned decimal number of at most `max_digits` digits.
pub(crate) fn parse_u32(s: &[u8], max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits {
        return None;
    }
    let mut n: u32 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(n)
}

/// Finds the next separator `sep` at nesting depth zero: outside quoted
/// strings (with backslash escapes) and outside `<...>`. Returns its offset.
/// An unterminated quote or angle bracket hides the rest of the input.
#[inline]
pub(crate) fn find_unquoted(s: &[u8], from: usize, sep: u8) -> Option<usize> {
    let mut i = from;
    loop {
        let j = find_mask(s, i, |block| simd::eq3(block, sep, b'"', b'<'))?;
        match s[j] {
            b if b == sep => return Some(j),
            b'"' => i = closing_quote(s, j)? + 1,
            _ => i = find_byte(s, j + 1, b'>')? + 1,
        }
    }
}

/// Offset of the `"` closing the quoted string that opens at `s[open]`.
pub(crate) fn closing_quote(s: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        let j = find_mask(s, i, |block| simd::eq2(block, b'"', b'\\'))?;
        if s[j] == b'"' {
            return Some(j);
        }
        i = j + 2;
    }
}

/// Iterator over the comma-separated values of one header value, as
/// `(start, end)` offsets relative to the value, trimmed of LWS. Commas
/// inside quoted strings and `<...>` do not split. Empty elements are skipped.
pub(crate) struct CommaSplit<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> CommaSplit<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        CommaSplit { s, pos: 0 }
    }
}

impl Iterator for CommaSplit<'_> {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        while self.pos <= self.s.len() {
            let start = self.pos;
            let end = find_unquoted(self.s, start, b',').unwrap_or(self.s.len());
            self.pos = end + 1;
            let mut a = start;
            let mut b = end;
            while a < b && is_lws(self.s[a]) {
                a += 1;
            }
            while b > a && is_lws(self.s[b - 1]) {
                b -= 1;
            }
            if a < b {
                return Some((a, b));
            }
        }
        None
    }
}

/// Iterator over `;name[=value]` parameters, as found in Via, name-addr and
/// URI parameter lists. Names and values are trimmed of LWS; a value may be
/// a quoted string (returned with its quotes).
#[derive(Clone)]
pub struct Params<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Params<'a> {
    /// Parameters in `s`, which starts at (or before) the first `;`.
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Params { s, pos: 0 }
    }

    /// The value of the first parameter named `name` (case-insensitive):
    /// `Some(Some(value))`, `Some(None)` for a flag, `None` when absent.
    pub fn value_of(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.clone()
            .find(|&(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl<'a> Iterator for Params<'a> {
    /// `(name, value)`; the value is `None` for a flag parameter such as `lr`.
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        loop {
            if self.pos >= s.len() {
                return None;
            }
            // One pass: note the first '=', stop at ';' outside quotes.
            let start = self.pos;
            let mut eq = None;
            let mut i = start;
            let end = loop {
                let j = find_mask(s, i, |block| simd::eq3(block, b';', b'=', b'"')).unwrap_or(s.len());
                match s.get(j) {
                    None | Some(b';') => break j,
                    Some(b'=') => {
                        eq = eq.or(Some(j));
                        i = j + 1;
                    }
                    // A quote: skip the quoted string (all of the rest when
                    // it is not closed).
                    Some(_) => i = closing_quote(s, j).map_or(s.len(), |close| close + 1),
                }
            };
            self.pos = end + 1;
            let (name, value) = match eq {
                Some(eq) => (trim(&s[start..eq]), Some(trim(&s[eq + 1..end]))),
                None => (trim(&s[start..end]), None),
            };
            if !name.is_empty() {
                return Some((name, value));
            }
        }
    }
}

/// Offset of the first LF at or after `from`.
#[inline]
pub(crate) fn find_lf(s: &[u8], from: usize) -> Option<usize> {
    find_byte(s, from, b'\n')
}

/// Offset of the first `byte` at or after `from`, sixteen bytes at a time
/// (see [`crate::simd`]; for the 10-100-byte strings of a SIP message this
/// is cheaper than a call to `memchr`).
#[inline]
pub(crate) fn find_byte(s: &[u8], from: usize, byte: u8) -> Option<usize> {
    find_mask(s, from, |block| simd::eq(block, byte))
}

/// Offset of the first byte at or after `from` whose bit `mask` sets in
/// its 16-byte block. Whole blocks first; the last partial block is read
/// as the final 16 bytes of `s` (overlapping what was already searched,
/// whose bits are masked off), so there is no byte-by-byte tail unless `s`
/// is shorter than a block.
#[inline(always)]
pub(crate) fn find_mask(s: &[u8], from: usize, mask: impl Fn(&simd::Block) -> u32) -> Option<usize> {
    let mut blocks = s.get(from..)?.chunks_exact(16);
    let mut i = from;
    for block in &mut blocks {
        let m = mask(block.try_into().unwrap_or(&[0; 16]));
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    if blocks.remainder().is_empty() {
        return None;
    }
    let last = s.len().checked_sub(16);
    let (base, block) = match last.and_then(|l| Some((l, s.last_chunk::<16>()?))) {
        Some(found) => found,
        None => {
            // Shorter than a block: padded, and bits past the end ignored.
            let mut block = [0u8; 16];
            block[..s.len()].copy_from_slice(s);
            return first_set(mask(&block), i, s.len());
        }
    };
    let m = mask(block) >> (i - base);
    if m != 0 {
        Some(i + m.trailing_zeros() as usize)
    } else {
        None
    }
}

/// Offset of the last `byte` in `s`, sixteen bytes at a time from the end.
#[inline]
pub(crate) fn rfind_byte(s: &[u8], byte: u8) -> Option<usize> {
    let mut end = s.len();
    while let Some(block) = s[..end].last_chunk::<16>() {
        let m = simd::eq(block, byte);
        if m != 0 {
            return Some(end + 15 - m.leading_zeros() as usize);
        }
        end -= 16;
    }
    s[..end].iter().rposition(|&b| b == byte)
}

/// The first set bit of `m` at or after `from`, if below `len`.
#[inline(always)]
fn first_set(m: u32, from: usize, len: usize) -> Option<usize> {
    let m = m >> from;
    if m == 0 {
        return None;
    }
    let at = from + m.trailing_zeros() as usize;
    (at < len).then_some(at)
}

/// Case-insensitive ASCII comparison.
#[inline]
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `a` equals `lower` ignoring ASCII case, where `lower` is a lower-case
/// constant. Compares whole words: a letter of `lower` matches either case
/// of itself, every other byte must match exactly (the case bit is only
/// ignored where `lower` holds a letter). Tails are covered by overlapping
/// fixed-size loads, so there is no per-byte loop and no memcpy call.
#[inline]
pub(crate) fn eq_lower(a: &[u8], lower: &[u8]) -> bool {
    let n = a.len();
    if n != lower.len() {
        return false;
    }
    macro_rules! same {
        ($ty:ty, $at:expr) => {{
            const W: usize = core::mem::size_of::<$ty>();
            let mut x = [0u8; W];
            x.copy_from_slice(&a[$at..$at + W]);
            let mut l = [0u8; W];
            l.copy_from_slice(&lower[$at..$at + W]);
            let l = <$ty>::from_le_bytes(l);
            // 0x20 where `lower` has a letter (bit 0x40 set), 0 elsewhere.
            let case = (l & (<$ty>::MAX / 0xff * 0x40)) >> 1;
            <$ty>::from_le_bytes(x) | case == l
        }};
    }
    match n {
        0 => true,
        1 => same!(u8, 0),
        2..=3 => same!(u16, 0) && same!(u16, n - 2),
        4..=7 => same!(u32, 0) && same!(u32, n - 4),
        _ => {
            let mut i = 0;
            while i + 8 <= n {
                if !same!(u64, i) {
                    return false;
                }
                i += 8;
            }
            i == n || same!(u64, n - 8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `check` on every prefix ending at, and the whole of, `s` with
    /// each byte in turn replaced by every value.
    fn each_byte_changed(mut s: Vec<u8>, check: impl Fn(&[u8])) {
        for i in 0..s.len() {
            let old = s[i];
            for b in 0..=255u8 {
                s[i] = b;
                for len in [i + 1, s.len()] {
                    check(&s[..len]);
                }
            }
            s[i] = old;
        }
    }

    #[test]
    fn has_space_or_control_matches_a_plain_search() {
        each_byte_changed(b"sip:alice@atlanta.example.com:5060;transport=udp".to_vec(), |part| {
            assert_eq!(has_space_or_control(part), part.iter().any(|&c| c <= b' '), "{part:?}");
            assert_eq!(
                has_space_control_or_del(part),
                part.iter().any(|&c| c <= b' ' || c == 0x7f),
                "{part:?}"
            );
        });
        assert!(!has_space_or_control(b""));
        each_byte_changed(
            b"INVITE sip:+15551234567@lb.carrier.example.net;user=phone SIP/2.0".to_vec(),
            |part| {
                let plain = part.iter().any(|&c| c < b' ' && c != b'\t' || c == 0x7f);
                assert_eq!(has_control(part), plain, "{part:?}");
            },
        );
    }

    /// Params as a byte-by-byte loop, for comparison.
    fn params_plain(s: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let start = pos;
            let mut eq = None;
            let mut i = start;
            while i < s.len() {
                match s[i] {
                    b';' => break,
                    b'=' if eq.is_none() => eq = Some(i),
                    b'"' => match closing_quote(s, i) {
                        Some(close) => i = close,
                        None => i = s.len() - 1,
                    },
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(s.len());
            pos = end + 1;
            let (name, value) = match eq {
                Some(eq) => (trim(&s[start..eq]), Some(trim(&s[eq + 1..end]))),
                None => (trim(&s[start..end]), None),
            };
            if !name.is_empty() {
                out.push((name, value));
            }
        }
        out
    }

    #[test]
    fn params_match_a_plain_loop() {
        let text = b";tag=as4f9c2e1b ; lr;x=\"a;b=\\\"c\";;==;ftag=a=b;q=\"open;w=0;d=17;transport=udp;maddr=[::1]";
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let s = &text[a..b];
                assert_eq!(
                    Params::new(s).collect::<Vec<_>>(),
                    params_plain(s),
                    "{:?}",
                    String::from_utf8_lossy(s)
                );
            }
        }
    }

    #[test]
    fn skip_run_matches_a_plain_loop() {
        let text = b"z9hG4bK-524287-1---7b2e4c1d9a;rport=5060;received=[2001:db8::1]:x!y%z*w+v`u'~t a\"b";
        for len in 0..=text.len() {
            let text = &text[..len];
            for from in 0..text.len() + 2 {
                for class in [is_token, is_host_char, is_via_param_value] {
                    let mut i = from;
                    while i < text.len() && class(text[i]) {
                        i += 1;
                    }
                    assert_eq!(skip_run(text, from, class), i, "len {len} from {from}");
                }
            }
        }
    }

    #[test]
    fn find_lf_matches_a_plain_search() {
        let text = b"ab\ncdefghijklmnop\n\nqrstuvwxyz0123456789\x8a\x0b\nABCDEFGHIJKLMNOPQRSTUVWXYZ-+-+-+-+-+-+-+\n";
        for len in 0..=text.len() {
            let text = &text[..len];
            for from in 0..text.len() + 2 {
                let expected = text
                    .get(from..)
                    .and_then(|t| t.iter().position(|&b| b == b'\n'))
                    .map(|p| p + from);
                assert_eq!(find_lf(text, from), expected, "len {len} from {from}");
                let expected = text
                    .get(from..)
                    .and_then(|t| t.iter().position(|&b| b == 0))
                    .map(|p| p + from);
                assert_eq!(find_byte(text, from, 0), expected, "len {len} from {from}");
            }
        }
        for len in 0..=text.len() {
            let text = &text[..len];
            for b in [b'\n', b'a', b'+', 0] {
                assert_eq!(rfind_byte(text, b), text.iter().rposition(|&c| c == b), "len {len}");
            }
        }
        assert_eq!(find_lf(b"", 0), None);
        assert_eq!(find_lf(b"abc", 5), None);
    }

    #[test]
    fn eq_lower_agrees_with_eq_ignore_ascii_case_for_every_byte() {
        let names: [&[u8]; 8] = [
            b"v",
            b"to",
            b"via",
            b"cseq",
            b"call-id",
            b"sip/2.0/",
            b"record-route",
            b"request-disposition",
        ];
        for lower in names {
            let mut a = lower.to_vec();
            for i in 0..a.len() {
                for b in 0..=255u8 {
                    a[i] = b;
                    assert_eq!(eq_lower(&a, lower), a.eq_ignore_ascii_case(lower), "{a:?} vs {lower:?}");
                }
                a[i] = lower[i];
            }
        }
    }

    #[test]
    fn eq_lower_is_exact_outside_letters() {
        assert!(eq_lower(b"Content-Length", b"content-length"));
        assert!(eq_lower(b"CONTENT-LENGTH", b"content-length"));
        assert!(eq_lower(b"SIP/2.0/", b"sip/2.0/"));
        assert!(!eq_lower(b"Content\rLength", b"content-length"));
        assert!(!eq_lower(b"sip/2\x0e0/", b"sip/2.0/"));
        assert!(!eq_lower(b"Content-Lengt", b"content-length"));
        assert!(!eq_lower(b"Contenu-Length", b"content-length"));
        assert!(eq_lower(b"", b""));
        for (a, b) in [
            (&b"Via"[..], &b"via"[..]),
            (b"vIA", b"via"),
            (b"Vi@", b"via"),
            (b"Record-Route", b"record-route"),
        ] {
            assert_eq!(eq_lower(a, b), a.eq_ignore_ascii_case(b), "{a:?}");
        }
    }
}
