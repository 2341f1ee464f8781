//! Sixteen bytes at a time: byte-class masks over a 16-byte block.
//!
//! Each function returns a bit mask with bit `i` set when byte `i` of the
//! block is in the class. On x86_64 that is one unaligned load, a few SSE2
//! compares and one `pmovmskb` (SSE2 is part of the x86_64 baseline, so no
//! run-time detection is needed); elsewhere a plain loop computes the same
//! mask. This is the only module of the crate with `unsafe` code: the
//! intrinsics are `unsafe` to call, and the load takes a pointer.
//!
//! Why not `memchr`: the strings searched here (a header line, a Via value,
//! a URI) are 10-100 bytes long, where a call into `memchr` (dispatch,
//! set-up for 32-byte vectors, alignment) costs more than the search
//! itself; these functions inline into the caller's loop.

#![allow(unsafe_code)]

/// A 16-byte block.
pub(crate) type Block = [u8; 16];

/// Bytes equal to `b`.
#[inline(always)]
pub(crate) fn eq(block: &Block, b: u8) -> u32 {
    imp::eq(block, b)
}

/// Bytes equal to `a` or `b`.
#[inline(always)]
pub(crate) fn eq2(block: &Block, a: u8, b: u8) -> u32 {
    imp::eq2(block, a, b)
}

/// Bytes equal to `a`, `b` or `c`.
#[inline(always)]
pub(crate) fn eq3(block: &Block, a: u8, b: u8, c: u8) -> u32 {
    imp::eq3(block, a, b, c)
}

/// Bytes at or below `max` (unsigned).
#[inline(always)]
pub(crate) fn at_most(block: &Block, max: u8) -> u32 {
    imp::at_most(block, max)
}

/// Bytes that are ASCII letters, digits or `-`: the characters of nearly
/// every header name (a subset of `token`).
#[inline(always)]
pub(crate) fn name_chars(block: &Block) -> u32 {
    imp::name_chars(block)
}

/// Bytes that are ASCII letters, digits, `-`, `.` or `_`: the characters
/// of a host name, and most of those of tokens and parameter values.
#[inline(always)]
pub(crate) fn host_chars(block: &Block) -> u32 {
    name_chars(block) | eq2(block, b'.', b'_')
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod imp {
    use super::Block;
    use core::arch::x86_64::*;

    #[inline(always)]
    fn load(block: &Block) -> __m128i {
        // SAFETY: SSE2 is enabled (checked by the `cfg` above); the
        // unaligned load reads exactly the 16 bytes `block` refers to.
        unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
    }

    #[inline(always)]
    pub(super) fn eq(block: &Block, b: u8) -> u32 {
        let v = load(block);
        // SAFETY: SSE2 is enabled (see the `cfg` above); register-only
        // operations.
        unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8))) as u32 }
    }

    #[inline(always)]
    pub(super) fn at_most(block: &Block, max: u8) -> u32 {
        let v = load(block);
        // SAFETY: as in `eq`.
        unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(max as i8)), v)) as u32 }
    }

    #[inline(always)]
    pub(super) fn eq2(block: &Block, a: u8, b: u8) -> u32 {
        let v = load(block);
        // SAFETY: as in `eq`.
        unsafe {
            let x = _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            );
            _mm_movemask_epi8(x) as u32
        }
    }

    #[inline(always)]
    pub(super) fn eq3(block: &Block, a: u8, b: u8, c: u8) -> u32 {
        let v = load(block);
        // SAFETY: as in `eq`.
        unsafe {
            let x = _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            );
            let x = _mm_or_si128(x, _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)));
            _mm_movemask_epi8(x) as u32
        }
    }

    #[inline(always)]
    pub(super) fn name_chars(block: &Block) -> u32 {
        let v = load(block);
        // SAFETY: as in `eq`.
        unsafe {
            // x in lo..=hi  <=>  min(x - lo, hi - lo) == x - lo (unsigned).
            let in_range = |x: __m128i, lo: u8, hi: u8| {
                let d = _mm_sub_epi8(x, _mm_set1_epi8(lo as i8));
                _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8((hi - lo) as i8)), d)
            };
            // Setting bit 0x20 folds upper-case letters onto lower-case
            // ones and maps no other byte into a..=z.
            let letter = in_range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
            let digit = in_range(v, b'0', b'9');
            let dash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letter, digit), dash)) as u32
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
mod imp {
    use super::Block;

    #[inline(always)]
    fn mask(block: &Block, class: impl Fn(u8) -> bool) -> u32 {
        let mut m = 0;
        for (i, &b) in block.iter().enumerate() {
            m |= u32::from(class(b)) << i;
        }
        m
    }

    #[inline(always)]
    pub(super) fn eq(block: &Block, b: u8) -> u32 {
        mask(block, |x| x == b)
    }

    #[inline(always)]
    pub(super) fn at_most(block: &Block, max: u8) -> u32 {
        mask(block, |x| x <= max)
    }

    #[inline(always)]
    pub(super) fn eq2(block: &Block, a: u8, b: u8) -> u32 {
        mask(block, |x| x == a || x == b)
    }

    #[inline(always)]
    pub(super) fn eq3(block: &Block, a: u8, b: u8, c: u8) -> u32 {
        mask(block, |x| x == a || x == b || x == c)
    }

    #[inline(always)]
    pub(super) fn name_chars(block: &Block) -> u32 {
        mask(block, |x| x.is_ascii_alphanumeric() || x == b'-')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(block: &Block, class: impl Fn(u8) -> bool) -> u32 {
        block
            .iter()
            .enumerate()
            .fold(0, |m, (i, &b)| m | u32::from(class(b)) << i)
    }

    #[test]
    fn masks_match_a_plain_loop_for_every_byte_at_every_position() {
        let mut block = *b"Via: SIP/2.0/UDP";
        for i in 0..16 {
            for b in 0..=255u8 {
                let old = block[i];
                block[i] = b;
                assert_eq!(eq(&block, b'\n'), plain(&block, |x| x == b'\n'));
                assert_eq!(eq(&block, b), plain(&block, |x| x == b));
                for max in [0, 0x1f, 0x20, b, 0x7f, 0xff] {
                    assert_eq!(at_most(&block, max), plain(&block, |x| x <= max));
                }
                assert_eq!(eq2(&block, b'"', b'\\'), plain(&block, |x| matches!(x, b'"' | b'\\')));
                assert_eq!(
                    eq3(&block, b',', b'"', b'<'),
                    plain(&block, |x| matches!(x, b',' | b'"' | b'<'))
                );
                assert_eq!(
                    host_chars(&block),
                    plain(&block, |x| x.is_ascii_alphanumeric() || matches!(x, b'-' | b'.' | b'_'))
                );
                assert_eq!(
                    name_chars(&block),
                    plain(&block, |x| x.is_ascii_alphanumeric() || x == b'-'),
                    "{block:?}"
                );
                block[i] = old;
            }
        }
    }
}
