//! sipload: a SIPp-like SIP load generator.
//!
//! The crate is split like the engine: sans-IO call state machines
//! ([`uac`], [`uas`]) that take time and datagrams in and put datagrams
//! out, and a [`runtime`] that owns sockets and threads and drives them.
//! [`report`] turns the merged [`stats::Stats`] into text, JSON, SIPp
//! `-trace_stat` CSV and an HTML page.

pub mod sip;
mod slab;
pub mod stats;
pub mod uac;
pub mod uas;

pub mod floor;
pub mod net;
pub mod report;
pub mod runtime;
#[cfg(test)]
mod sim;
