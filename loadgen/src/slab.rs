//! Call storage shared by the state machines: a slab of reusable call
//! records addressed by (slot, generation), and a heap of wake-up times.
//!
//! Contract: a freed record keeps its buffers (so the next call reuses
//! their capacity) and its generation is bumped, so that a stale
//! (slot, generation) pair — from a late datagram or an old heap entry —
//! never reaches the record's new owner.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

struct Entry<T> {
    gen: u32,
    live: bool,
    /// Wake-up time currently in the heap for this record, if any.
    scheduled: Option<Instant>,
    value: T,
}

/// Records addressed by slot and generation, with per-record wake-ups.
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    live: usize,
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl<T: Default> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Takes a free record (contents left from its previous use: the
    /// caller resets what it needs) and returns its address.
    pub(crate) fn insert(&mut self) -> (u32, u32) {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let e = &mut self.entries[slot as usize];
            e.live = true;
            e.scheduled = None;
            return (slot, e.gen);
        }
        self.entries.push(Entry {
            gen: 1,
            live: true,
            scheduled: None,
            value: T::default(),
        });
        ((self.entries.len() - 1) as u32, 1)
    }

    /// The live record at (slot, gen).
    pub(crate) fn get_mut(&mut self, slot: u32, gen: u32) -> Option<&mut T> {
        match self.entries.get_mut(slot as usize) {
            Some(e) if e.live && e.gen == gen => Some(&mut e.value),
            _ => None,
        }
    }

    /// Frees a record; stale addresses stop matching.
    pub(crate) fn remove(&mut self, slot: u32, gen: u32) {
        if let Some(e) = self.entries.get_mut(slot as usize) {
            if e.live && e.gen == gen {
                e.live = false;
                e.gen = e.gen.wrapping_add(1).max(1);
                e.scheduled = None;
                self.free.push(slot);
                self.live -= 1;
            }
        }
    }

    /// Records allocated, live or free (the high-water mark).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Live records.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Makes sure the record wakes up at `at` (or earlier).
    pub(crate) fn schedule(&mut self, slot: u32, gen: u32, at: Option<Instant>) {
        let Some(at) = at else { return };
        if let Some(e) = self.entries.get_mut(slot as usize) {
            if e.live && e.gen == gen && e.scheduled.map_or(true, |s| at < s) {
                e.scheduled = Some(at);
                self.heap.push(Reverse((at, slot, gen)));
            }
        }
    }

    /// The earliest pending wake-up (may be stale: waking up for nothing
    /// is allowed, missing one is not).
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pops the next record due at `now`, if any, clearing its scheduled
    /// mark; the caller handles it and schedules it again.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(u32, u32)> {
        while let Some(&Reverse((t, slot, gen))) = self.heap.peek() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if let Some(e) = self.entries.get_mut(slot as usize) {
                if e.live && e.gen == gen && e.scheduled == Some(t) {
                    e.scheduled = None;
                    return Some((slot, gen));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn generations_and_wakeups() {
        let mut s: Slab<u8> = Slab::new();
        let t0 = Instant::now();
        let (a, ga) = s.insert();
        *s.get_mut(a, ga).unwrap() = 7;
        s.schedule(a, ga, Some(t0 + Duration::from_secs(2)));
        s.schedule(a, ga, Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.pop_due(t0), None);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(1)), Some((a, ga)));
        // The later entry is stale: the record has no mark any more.
        assert_eq!(s.pop_due(t0 + Duration::from_secs(3)), None);
        s.remove(a, ga);
        assert!(s.get_mut(a, ga).is_none());
        let (b, gb) = s.insert();
        assert_eq!(b, a);
        assert_ne!(gb, ga);
        assert_eq!(s.len(), 1);
    }
}
