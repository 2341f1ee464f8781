//! Dispatcher algorithms: ordering the destinations of a set for requests
//! without load semantics (REGISTER, MESSAGE, ...), as OpenSIPS's and
//! Kamailio's `dispatcher` modules do.
//!
//! # Contract
//! [`order`] is pure: the candidates (their weights, priorities and whether
//! they are up), a hash of the request's key and the caller's random value
//! and round-robin tick go in; the destinations come out best first, as the
//! failover list. Every up candidate appears exactly once; candidates that
//! are down never appear. Nothing here reads a clock or an RNG: the caller
//! injects both, which keeps the engine's simulations reproducible.
//!
//! # Algorithms
//! - [`Algorithm::Hash`]: weighted rendezvous hashing over a key (Call-ID,
//!   From URI or user, To URI, Request-URI). The same key always gets the
//!   same destination while it is up; when a destination goes down, only
//!   the keys it had move, and they spread over all the others in
//!   proportion to their weights (a modulo hash would move nearly every key).
//! - [`Algorithm::RoundRobin`]: weighted round-robin on a shared tick: over
//!   any `sum(weights)` consecutive ticks each destination is first exactly
//!   `weight` times.
//! - [`Algorithm::WeightedRandom`]: first choice with probability
//!   proportional to weight; the failover order is a weighted random
//!   permutation (rendezvous hashing of the random value).
//! - [`Algorithm::Priority`]: highest `priority` first, ties in table order
//!   (OpenSIPS/Kamailio dispatcher priority).
//! - [`Algorithm::Srv`]: as DNS SRV records (RFC 2782): lowest `priority`
//!   value first; inside one priority, a weighted random order.
//!
//! A weight of 0 puts a destination after all weighted ones (used only when
//! every other has failed).

/// What a dispatcher hashes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKey {
    CallId,
    /// The From URI.
    FromUri,
    /// The user part of the From URI.
    FromUser,
    /// The To URI.
    ToUri,
    /// The Request-URI.
    RequestUri,
}

/// A dispatcher algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Hash(HashKey),
    RoundRobin,
    WeightedRandom,
    Priority,
    Srv,
}

impl Algorithm {
    /// Parses a configuration name: `hash-callid`, `hash-from`,
    /// `hash-from-user`, `hash-to`, `hash-ruri`, `round-robin`,
    /// `weighted-random`, `priority`, `srv`; or OpenSIPS's algorithm
    /// number (`0` Call-ID, `1` From, `2` To, `3` R-URI, `4` round-robin,
    /// `6` random, `8` first: here, by priority).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Some(match name {
            "hash-callid" | "0" => Algorithm::Hash(HashKey::CallId),
            "hash-from" | "1" => Algorithm::Hash(HashKey::FromUri),
            "hash-from-user" => Algorithm::Hash(HashKey::FromUser),
            "hash-to" | "2" => Algorithm::Hash(HashKey::ToUri),
            "hash-ruri" | "3" => Algorithm::Hash(HashKey::RequestUri),
            "round-robin" | "4" => Algorithm::RoundRobin,
            "weighted-random" | "6" => Algorithm::WeightedRandom,
            "priority" | "8" => Algorithm::Priority,
            "srv" => Algorithm::Srv,
            _ => return None,
        })
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hash(HashKey::CallId) => "hash-callid",
            Algorithm::Hash(HashKey::FromUri) => "hash-from",
            Algorithm::Hash(HashKey::FromUser) => "hash-from-user",
            Algorithm::Hash(HashKey::ToUri) => "hash-to",
            Algorithm::Hash(HashKey::RequestUri) => "hash-ruri",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRandom => "weighted-random",
            Algorithm::Priority => "priority",
            Algorithm::Srv => "srv",
        }
    }
}

/// `dispatch` flags, as OpenSIPS's `ds_select_dst` spells them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchFlags {
    /// `f`: on a failover code, try the next destination of the order.
    pub failover: bool,
    /// `u`: hash over the user part of the From, To or Request-URI only.
    pub user_only: bool,
}

impl DispatchFlags {
    /// Parses a flag string such as `"fu"`; `None` on an unknown letter.
    pub fn parse(s: &str) -> Option<DispatchFlags> {
        let mut f = DispatchFlags::default();
        for c in s.chars() {
            match c {
                'f' | 'F' => f.failover = true,
                'u' | 'U' => f.user_only = true,
                _ => return None,
            }
        }
        Some(f)
    }
}

/// The bytes a [`HashKey`] hashes in a request (`None`: the header is
/// missing or unparsable; the caller hashes nothing then, which still
/// gives every such request the same destination).
pub fn key_of<'a>(m: &siplb_parser::Message<'a>, key: HashKey, user_only: bool) -> Option<&'a [u8]> {
    let uri = |u: &'a [u8], user: bool| -> Option<&'a [u8]> {
        if user {
            siplb_parser::Uri::parse(u).ok()?.user
        } else {
            Some(u)
        }
    };
    match key {
        HashKey::CallId => Some(m.call_id()),
        HashKey::FromUri => uri(m.from().uri, user_only),
        HashKey::FromUser => uri(m.from().uri, true),
        HashKey::ToUri => uri(m.to().uri, user_only),
        HashKey::RequestUri => uri(m.request_uri()?, user_only),
    }
}

/// One destination of a set, as the dispatcher sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The destination's index in the destination table (returned as is).
    pub index: u16,
    /// The destination's configured id (what rendezvous hashing mixes in,
    /// so the order survives a reload that reorders the table).
    pub id: u32,
    pub weight: u32,
    pub priority: i32,
    /// Enabled and not marked down by probing or an operator.
    pub up: bool,
}

/// Most candidates [`order`] ranks; the rest are ignored.
pub const MAX_CANDIDATES: usize = 64;

/// Writes the failover order of the up `candidates` into `out` (best first)
/// and returns how many were written (at most `out.len()`).
///
/// `key_hash` is a hash of the request's key (for [`Algorithm::Hash`]; see
/// [`key_hash`]), `random` a fresh random value (for `WeightedRandom` and
/// `Srv`), `tick` the set's round-robin counter, incremented once per call
/// by the caller (for `RoundRobin`).
pub fn order(
    alg: Algorithm,
    candidates: &[Candidate],
    key_hash: u64,
    random: u64,
    tick: u64,
    out: &mut [u16],
) -> usize {
    let mut ranked: [(f64, usize); MAX_CANDIDATES] = [(0.0, 0); MAX_CANDIDATES];
    let mut n = 0;
    for (i, c) in candidates.iter().enumerate().take(MAX_CANDIDATES) {
        if c.up {
            ranked[n] = (0.0, i);
            n += 1;
        }
    }
    let ranked = &mut ranked[..n];
    match alg {
        Algorithm::Hash(_) => score_rendezvous(ranked, candidates, key_hash),
        Algorithm::WeightedRandom => score_rendezvous(ranked, candidates, random),
        Algorithm::RoundRobin => score_round_robin(ranked, candidates, tick),
        Algorithm::Priority => {
            for r in ranked.iter_mut() {
                r.0 = f64::from(candidates[r.1].priority);
            }
        }
        Algorithm::Srv => {
            score_rendezvous(ranked, candidates, random);
            for r in ranked.iter_mut() {
                // Lower priority value first; the weighted score, in [0, 1),
                // orders inside one priority.
                r.0 = -f64::from(candidates[r.1].priority) * 2.0 + r.0.clamp(0.0, 1.0);
            }
        }
    }
    // Best score first; ties keep table order (stable sort).
    ranked.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(core::cmp::Ordering::Equal));
    let written = ranked.len().min(out.len());
    for (slot, r) in out.iter_mut().zip(ranked.iter()) {
        *slot = candidates[r.1].index;
    }
    written
}

/// Weighted rendezvous (highest random weight) scores: `w / -ln(u)` with
/// `u` uniform in (0, 1) from hashing the key with the destination id, so
/// the winner is drawn in proportion to the weights, and independently for
/// each key. Scores are mapped into [0, 1) (monotonically) so that Srv can
/// add them to a priority. Weight 0 scores below every weighted candidate.
fn score_rendezvous(ranked: &mut [(f64, usize)], candidates: &[Candidate], key: u64) {
    for r in ranked.iter_mut() {
        let c = &candidates[r.1];
        let h = mix(key ^ mix(u64::from(c.id).wrapping_add(0x9e37_79b9_7f4a_7c15)));
        // 53 random bits, never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(c.weight) / -u.ln();
        // x / (1 + x) keeps the order and lands in [0, 1).
        r.0 = score / (1.0 + score);
    }
}

/// Weighted round-robin: the tick picks a slot in `0..sum(weights)`, the
/// destination owning that slot (cumulative weights in table order) goes
/// first, the others follow in table order after it.
fn score_round_robin(ranked: &mut [(f64, usize)], candidates: &[Candidate], tick: u64) {
    let total: u64 = ranked.iter().map(|r| u64::from(candidates[r.1].weight)).sum();
    let first = if total == 0 {
        (tick % ranked.len().max(1) as u64) as usize
    } else {
        let mut slot = tick % total;
        let mut first = 0;
        for (pos, r) in ranked.iter().enumerate() {
            let w = u64::from(candidates[r.1].weight);
            if slot < w {
                first = pos;
                break;
            }
            slot -= w;
        }
        first
    };
    let n = ranked.len();
    for (pos, r) in ranked.iter_mut().enumerate() {
        // Distance after `first`, wrapping: first gets the highest score.
        let distance = (pos + n - first) % n.max(1);
        r.0 = (n - distance) as f64;
    }
}

/// SplitMix64's finaliser: a fast, well-spread 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of a key (FNV-1a, then mixed): the same bytes give
/// the same value in every process and version, so a key keeps its
/// destination across restarts and across the nodes of a cluster.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate {
                index: i as u16,
                id: 100 + i as u32,
                weight: w,
                priority: 0,
                up: true,
            })
            .collect()
    }

    fn first(alg: Algorithm, c: &[Candidate], key: u64, random: u64, tick: u64) -> u16 {
        let mut out = [0u16; MAX_CANDIDATES];
        assert!(order(alg, c, key, random, tick, &mut out) > 0);
        out[0]
    }

    /// A deterministic stream of "random" values for the tests.
    fn values(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| mix(i.wrapping_mul(0x2545_f491_4f6c_dd1d)))
    }

    #[test]
    fn every_up_candidate_exactly_once_and_down_ones_never() {
        let mut c = set(&[1, 2, 3, 0, 5]);
        c[2].up = false;
        for alg in [
            Algorithm::Hash(HashKey::CallId),
            Algorithm::RoundRobin,
            Algorithm::WeightedRandom,
            Algorithm::Priority,
            Algorithm::Srv,
        ] {
            for v in values(50) {
                let mut out = [0u16; MAX_CANDIDATES];
                let n = order(alg, &c, v, v ^ 1, v, &mut out);
                let mut got = out[..n].to_vec();
                got.sort_unstable();
                assert_eq!(got, [0, 1, 3, 4], "{alg:?}");
                // Weight 0 is last whenever weights matter.
                if matches!(alg, Algorithm::Hash(_) | Algorithm::WeightedRandom) {
                    assert_eq!(out[n - 1], 3, "{alg:?}");
                }
            }
        }
        let mut short = [0u16; 2];
        assert_eq!(order(Algorithm::RoundRobin, &c, 0, 0, 0, &mut short), 2);
    }

    #[test]
    fn hash_is_sticky_and_proportional_to_weight() {
        let c = set(&[1, 1, 2]);
        let mut counts = [0u32; 3];
        for v in values(30_000) {
            let a = first(Algorithm::Hash(HashKey::CallId), &c, v, 0, 0);
            assert_eq!(a, first(Algorithm::Hash(HashKey::CallId), &c, v, 12345, 99), "sticky");
            counts[usize::from(a)] += 1;
        }
        // Expected 7,500 / 7,500 / 15,000; 5 % bounds are > 8 standard deviations.
        assert!((7_125..=7_875).contains(&counts[0]), "{counts:?}");
        assert!((7_125..=7_875).contains(&counts[1]), "{counts:?}");
        assert!((14_250..=15_750).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn a_dead_destination_only_moves_its_own_keys_and_they_spread() {
        let up = set(&[1, 1, 1, 1]);
        let mut down = up.clone();
        down[1].up = false;
        let mut moved_to = [0u32; 4];
        for v in values(20_000) {
            let before = first(Algorithm::Hash(HashKey::FromUri), &up, v, 0, 0);
            let after = first(Algorithm::Hash(HashKey::FromUri), &down, v, 0, 0);
            if before != 1 {
                assert_eq!(before, after, "a key not on the dead destination moved");
            } else {
                moved_to[usize::from(after)] += 1;
            }
        }
        // About 5,000 keys moved, about a third to each survivor.
        let total: u32 = moved_to.iter().sum();
        assert!((4_700..=5_300).contains(&total), "{moved_to:?}");
        for d in [0, 2, 3] {
            assert!(
                moved_to[d] * 3 > total * 9 / 10 && moved_to[d] * 3 < total * 11 / 10,
                "{moved_to:?}"
            );
        }
    }

    #[test]
    fn round_robin_is_exact_over_a_cycle() {
        let c = set(&[1, 2, 3]);
        for start in [0u64, 7, 1_000_003] {
            let mut counts = [0u32; 3];
            for tick in start..start + 6 * 100 {
                counts[usize::from(first(Algorithm::RoundRobin, &c, 0, 0, tick))] += 1;
            }
            assert_eq!(counts, [100, 200, 300]);
        }
        // The failover list goes on in table order after the first.
        let mut out = [0u16; 3];
        order(Algorithm::RoundRobin, &c, 0, 0, 1, &mut out);
        assert_eq!(out, [1, 2, 0]);
        // All weights 0: plain round-robin.
        let z = set(&[0, 0]);
        assert_eq!(
            (
                first(Algorithm::RoundRobin, &z, 0, 0, 0),
                first(Algorithm::RoundRobin, &z, 0, 0, 1)
            ),
            (0, 1)
        );
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let c = set(&[1, 3]);
        let mut counts = [0u32; 2];
        for v in values(40_000) {
            counts[usize::from(first(Algorithm::WeightedRandom, &c, 0, v, 0))] += 1;
        }
        assert!((9_500..=10_500).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn priority_and_srv_orders() {
        let mut c = set(&[1, 1, 1, 1]);
        for (i, p) in [5, 10, 5, 1].into_iter().enumerate() {
            c[i].priority = p;
        }
        let mut out = [0u16; 4];
        order(Algorithm::Priority, &c, 0, 0, 0, &mut out);
        assert_eq!(out, [1, 0, 2, 3], "highest priority first, ties in table order");

        // SRV: lowest value first, weighted random inside priority 5.
        let mut c = set(&[1, 1, 3, 1]);
        for (i, p) in [5, 10, 5, 1].into_iter().enumerate() {
            c[i].priority = p;
        }
        let mut second_was_2 = 0;
        for v in values(8_000) {
            order(Algorithm::Srv, &c, 0, v, 0, &mut out);
            assert_eq!(out[0], 3);
            assert!(matches!((out[1], out[2]), (0, 2) | (2, 0)), "{out:?}");
            assert_eq!(out[3], 1);
            second_was_2 += u32::from(out[1] == 2);
        }
        // Weight 3 against 1: three quarters of the time.
        assert!((5_700..=6_300).contains(&second_was_2), "{second_was_2}");
    }

    #[test]
    fn key_hash_is_stable() {
        // Fixed values: a change here would move every hashed key after an upgrade.
        assert_eq!(key_hash(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(key_hash(b"abc"), key_hash(b"abc"));
        assert_ne!(key_hash(b"abc"), key_hash(b"abd"));
        assert_eq!(
            Algorithm::parse("hash-from-user"),
            Some(Algorithm::Hash(HashKey::FromUser))
        );
        assert_eq!(Algorithm::parse("nope"), None);
    }
}
