//! A hashed timer wheel with an overflow heap.
//!
//! Deadlines are rounded *up* to a tick (default 10 ms): a timer never
//! fires early and at most one tick late. Deadlines within the wheel's span
//! (slots × tick, 40.96 s by default: every retransmission, `fr_timeout`
//! and transaction linger) go to a slot in O(1); later ones (dialog
//! lifetimes, long `fr_inv_timeout`) wait in a heap and move into the wheel
//! when they come within the span. A bitmap of non-empty slots finds the
//! next deadline without scanning empty slots one by one.
//!
//! Cancellation is lazy: the owner ignores entries that no longer match
//! its state (the proxy checks generations and deadlines).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;

/// Timers carrying values of type `T`.
#[derive(Debug)]
pub struct TimerWheel<T> {
    origin: Option<Instant>,
    tick: Duration,
    /// All ticks below this one have fired.
    current: u64,
    slots: Vec<Vec<T>>,
    occupied: [u64; WORDS],
    far: BinaryHeap<Reverse<(u64, u64, T)>>,
    seq: u64,
    len: usize,
}

impl<T: Ord> TimerWheel<T> {
    /// An empty wheel with the given tick.
    pub fn new(tick: Duration) -> TimerWheel<T> {
        TimerWheel {
            origin: None,
            tick: tick.max(Duration::from_micros(1)),
            current: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            far: BinaryHeap::new(),
            seq: 0,
            len: 0,
        }
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries beyond the wheel's span (in the heap).
    pub fn far_len(&self) -> usize {
        self.far.len()
    }

    /// Drops the entries beyond the wheel's span that `keep` rejects: the
    /// owner's way to sweep entries it has cancelled (lazily) long before
    /// they come due. O(entries beyond the span).
    pub fn retain_far(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let before = self.far.len();
        self.far.retain(|Reverse((_, _, v))| keep(v));
        self.len -= before - self.far.len();
    }

    /// Anchors the wheel's time axis; call with the current time before
    /// inserting (later calls do nothing).
    pub fn observe(&mut self, now: Instant) {
        self.origin.get_or_insert(now);
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let origin = self.origin.unwrap_or(at);
        let d = at.saturating_duration_since(origin);
        let t = self.tick.as_nanos();
        (d.as_nanos().div_ceil(t)) as u64
    }

    fn instant_of(&self, tick: u64) -> Option<Instant> {
        Some(self.origin? + self.tick * u32::try_from(tick).unwrap_or(u32::MAX))
    }

    /// Adds an entry due at `at` (rounded up to a tick; never before the
    /// next unprocessed tick).
    pub fn insert(&mut self, at: Instant, value: T) {
        self.observe(at);
        let tick = self.tick_of(at).max(self.current);
        self.len += 1;
        if tick < self.current + SLOTS as u64 {
            self.put(tick, value);
        } else {
            self.seq += 1;
            self.far.push(Reverse((tick, self.seq, value)));
        }
    }

    fn put(&mut self, tick: u64, value: T) {
        let slot = (tick % SLOTS as u64) as usize;
        self.slots[slot].push(value);
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    /// The earliest pending deadline (a tick boundary), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let near = self.next_occupied_tick();
        let far = self.far.peek().map(|Reverse((t, _, _))| *t);
        let tick = match (near, far) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        self.instant_of(tick)
    }

    /// The first tick >= current whose slot has entries.
    fn next_occupied_tick(&self) -> Option<u64> {
        let start = (self.current % SLOTS as u64) as usize;
        // Scan the bitmap from `start`, wrapping once.
        for step in 0..=WORDS {
            let word_index = (start / 64 + step) % WORDS;
            let mut word = self.occupied[word_index];
            if step == 0 {
                word &= u64::MAX << (start % 64);
            } else if step == WORDS {
                // Back at the first word: only the bits below `start`.
                word &= !(u64::MAX << (start % 64));
            }
            if word != 0 {
                let slot = word_index * 64 + word.trailing_zeros() as usize;
                let ahead = (slot + SLOTS - start) % SLOTS;
                return Some(self.current + ahead as u64);
            }
        }
        None
    }

    /// Moves every entry due at or before `now` into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        let Some(origin) = self.origin else { return };
        // Ticks whose boundary is <= now.
        let now_tick = (now.saturating_duration_since(origin).as_nanos() / self.tick.as_nanos()) as u64;
        if self.len == 0 {
            self.current = self.current.max(now_tick + 1);
            return;
        }
        while self.current <= now_tick {
            // Jump over empty stretches.
            let next = match (self.next_occupied_tick(), self.far.peek().map(|Reverse((t, _, _))| *t)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => {
                    self.current = now_tick + 1;
                    break;
                }
            };
            if next > now_tick {
                self.current = now_tick + 1;
                break;
            }
            self.current = next;
            // Far entries now within the span move into the wheel.
            while let Some(Reverse((t, _, _))) = self.far.peek() {
                if *t >= self.current + SLOTS as u64 {
                    break;
                }
                let Some(Reverse((t, _, v))) = self.far.pop() else {
                    break;
                };
                self.put(t.max(self.current), v);
            }
            let slot = (self.current % SLOTS as u64) as usize;
            let drained = std::mem::take(&mut self.slots[slot]);
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            self.len -= drained.len();
            out.extend(drained);
            self.current += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_never_early_at_most_a_tick_late() {
        let tick = Duration::from_millis(10);
        let base = Instant::now();
        let mut w = TimerWheel::new(tick);
        w.observe(base);
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut due = Vec::new();
        for id in 0..5000u64 {
            // Mostly near deadlines, some far beyond the span.
            let ms = if next() % 10 == 0 {
                next() % 200_000
            } else {
                next() % 40_000
            };
            due.push(ms);
            w.insert(base + Duration::from_millis(ms), id);
        }
        assert_eq!(w.len(), 5000);
        let mut fired = vec![None; due.len()];
        let mut now = base;
        let mut out = Vec::new();
        while let Some(d) = w.next_deadline() {
            assert!(d >= now);
            now = d;
            w.expire(now, &mut out);
            assert!(!out.is_empty(), "next_deadline pointed at nothing");
            for id in out.drain(..) {
                fired[id as usize] = Some(now);
            }
        }
        assert!(w.is_empty());
        for (id, ms) in due.iter().enumerate() {
            let at = fired[id].expect("every timer fires");
            let deadline = base + Duration::from_millis(*ms);
            assert!(at >= deadline, "timer {id} fired early");
            assert!(at < deadline + tick, "timer {id} fired late");
        }
    }

    #[test]
    fn inserts_in_the_past_fire_at_once_and_expire_is_idempotent() {
        let base = Instant::now();
        let mut w = TimerWheel::new(Duration::from_millis(10));
        w.observe(base);
        let mut out = Vec::new();
        w.expire(base + Duration::from_secs(5), &mut out);
        w.insert(base + Duration::from_secs(1), 1u32);
        assert_eq!(w.next_deadline(), Some(base + Duration::from_millis(5010)));
        w.expire(base + Duration::from_millis(5010), &mut out);
        assert_eq!(out, vec![1]);
        w.expire(base + Duration::from_millis(5010), &mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(w.next_deadline(), None);
    }
}
