//! What the core tells the replicator, and what it is given back on a
//! takeover (see `crate::ha`).
//!
//! A proxy built with replication on (`[ha]` configured) queues a
//! [`DialogEvent`] when a dialog is confirmed and when a confirmed dialog
//! ends (BYE, expiry, admin end; not at shutdown: a node that stops leaves
//! its records for the node that takes over). The runtime drains them with
//! `Proxy::poll_event` into the HA thread's queue; nothing here waits.
//!
//! A dialog loaded from Redis comes back as an [`Adopted`]: the proxy
//! counts its load on the destination again and indexes it by Call-ID, so
//! in-dialog requests whose Record-Route `did` names another process (or a
//! stale slot) still find it.

use std::time::{Duration, Instant};

use crate::lb::Hold;

/// A dialog state change for replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEvent {
    /// A dialog was confirmed (2xx to its INVITE).
    Confirmed(Confirmed),
    /// A confirmed dialog ended.
    Ended {
        /// Hash of its Call-ID (`core::msg::hash`), the record's key.
        call_id_hash: u64,
    },
}

/// A confirmed dialog, as replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Hash of the Call-ID (`core::msg::hash`).
    pub call_id_hash: u64,
    /// The Call-ID.
    pub call_id: Vec<u8>,
    /// From tag (caller).
    pub from_tag: Vec<u8>,
    /// To tag (callee).
    pub to_tag: Vec<u8>,
    /// The load it holds.
    pub hold: Hold,
    /// The worker that owns it.
    pub worker: u16,
    /// Time left until its lifetime expires.
    pub lifetime: Duration,
}

/// A replicated dialog handed to a worker on takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Hash of its Call-ID (`core::msg::hash`).
    pub call_id_hash: u64,
    /// The load to count again (no capacity check: the call exists).
    pub hold: Hold,
    /// When its lifetime ends.
    pub expires: Instant,
}
