//! Counters and latency histograms of one engine (one thread), mergeable.
//!
//! Each worker thread keeps its own [`Stats`] and adds it into a shared
//! copy a few times per second; the reports read only the shared copy.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a call failed. Each failed call has exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// No final response to the INVITE within the answer timeout.
    Timeout,
    /// INVITE retransmitted until Timer B without any response.
    RetransmissionLimit,
    /// A final response other than 2xx to the INVITE.
    UnexpectedCode(u16),
    /// BYE retransmitted until Timer F without a final response.
    ByeRetransmissionLimit,
    /// A final response other than 2xx to the BYE.
    ByeUnexpectedCode(u16),
    /// UAS: the final response was retransmitted until Timer H without ACK.
    AckTimeout,
    /// CANCEL retransmitted until Timer F, or no final response after it.
    CancelTimeout,
    /// UAS: a confirmed call got no BYE within the longest dialog time.
    ByeTimeout,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Timeout => f.write_str("timeout"),
            FailureReason::RetransmissionLimit => f.write_str("retransmission_limit"),
            FailureReason::UnexpectedCode(c) => write!(f, "unexpected_code_{c}"),
            FailureReason::ByeRetransmissionLimit => f.write_str("bye_retransmission_limit"),
            FailureReason::ByeUnexpectedCode(c) => write!(f, "bye_unexpected_code_{c}"),
            FailureReason::AckTimeout => f.write_str("ack_timeout"),
            FailureReason::CancelTimeout => f.write_str("cancel_timeout"),
            FailureReason::ByeTimeout => f.write_str("bye_timeout"),
        }
    }
}

/// The latency histograms kept, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// INVITE sent → first 100 Trying.
    InviteTo100,
    /// INVITE sent → first 180/183.
    InviteTo180,
    /// INVITE sent → first 2xx.
    InviteTo200,
    /// BYE sent → its 2xx.
    ByeTo200,
    /// INVITE sent → BYE answered (SIPp's CallLength).
    CallLength,
}

impl Latency {
    /// All kinds, in report order.
    pub const ALL: [Latency; 5] = [
        Latency::InviteTo100,
        Latency::InviteTo180,
        Latency::InviteTo200,
        Latency::ByeTo200,
        Latency::CallLength,
    ];

    /// Name used in reports (`invite_to_200`...).
    pub fn name(self) -> &'static str {
        match self {
            Latency::InviteTo100 => "invite_to_100",
            Latency::InviteTo180 => "invite_to_180",
            Latency::InviteTo200 => "invite_to_200",
            Latency::ByeTo200 => "bye_to_200",
            Latency::CallLength => "call_length",
        }
    }
}

/// Counters and histograms.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Calls started (UAC: INVITEs sent; UAS: new INVITEs received).
    pub calls_started: u64,
    /// Calls that ended as the scenario intends (including intended
    /// CANCELs and, at the UAS, configured rejections).
    pub calls_succeeded: u64,
    /// Calls that failed; see `failures`.
    pub calls_failed: u64,
    /// Of the succeeded calls: ended by an intended CANCEL.
    pub calls_cancelled: u64,
    /// Of the succeeded calls (UAS): rejected with the configured code.
    pub calls_rejected: u64,
    /// Failed calls by reason.
    pub failures: BTreeMap<FailureReason, u64>,
    /// Our own retransmissions (requests or responses).
    pub retransmissions: u64,
    /// Retransmissions from the peer that we absorbed or answered again.
    pub retransmissions_received: u64,
    /// Datagrams that did not parse as SIP.
    pub malformed: u64,
    /// Messages that matched no live call (answered statelessly when
    /// possible, otherwise dropped).
    pub out_of_call: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    histograms: Vec<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits: cannot fail with these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            histograms: (0..Latency::ALL.len()).map(|_| histogram()).collect(),
            ..Stats::counters_only()
        }
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// Records one latency sample.
    pub fn record(&mut self, kind: Latency, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // In bounds by the clamp above.
        let _ = self.histograms[kind as usize].record(us);
    }

    /// Counts a failed call.
    pub fn fail(&mut self, reason: FailureReason) {
        self.calls_failed += 1;
        *self.failures.entry(reason).or_default() += 1;
    }

    /// The histogram of one latency, in microseconds.
    pub fn histogram(&self, kind: Latency) -> &Histogram<u64> {
        &self.histograms[kind as usize]
    }

    /// Percentiles of one latency in milliseconds.
    pub fn percentiles(&self, kind: Latency) -> Percentiles {
        let h = self.histogram(kind);
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// Calls that have an outcome.
    pub fn calls_ended(&self) -> u64 {
        self.calls_succeeded + self.calls_failed
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.calls_started += other.calls_started;
        self.calls_succeeded += other.calls_succeeded;
        self.calls_failed += other.calls_failed;
        self.calls_cancelled += other.calls_cancelled;
        self.calls_rejected += other.calls_rejected;
        for (r, n) in &other.failures {
            *self.failures.entry(*r).or_default() += n;
        }
        self.retransmissions += other.retransmissions;
        self.retransmissions_received += other.retransmissions_received;
        self.malformed += other.malformed;
        self.out_of_call += other.out_of_call;
        self.datagrams_received += other.datagrams_received;
        self.datagrams_sent += other.datagrams_sent;
        self.send_errors += other.send_errors;
        for (a, b) in self.histograms.iter_mut().zip(other.histograms.iter()) {
            // Same bounds on both sides: cannot fail.
            let _ = a.add(b);
        }
    }

    /// Zeroes everything, keeping the histogram allocations.
    pub fn reset(&mut self) {
        let mut histograms = std::mem::take(&mut self.histograms);
        histograms.iter_mut().for_each(Histogram::reset);
        *self = Stats {
            histograms,
            ..Stats::counters_only()
        };
    }

    fn counters_only() -> Stats {
        Stats {
            calls_started: 0,
            calls_succeeded: 0,
            calls_failed: 0,
            calls_cancelled: 0,
            calls_rejected: 0,
            failures: BTreeMap::new(),
            retransmissions: 0,
            retransmissions_received: 0,
            malformed: 0,
            out_of_call: 0,
            datagrams_received: 0,
            datagrams_sent: 0,
            send_errors: 0,
            histograms: Vec::new(),
        }
    }

    /// Failures keyed by their report names.
    pub fn failures_by_reason(&self) -> BTreeMap<String, u64> {
        self.failures.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_reset() {
        let mut a = Stats {
            calls_started: 3,
            ..Stats::default()
        };
        a.fail(FailureReason::UnexpectedCode(486));
        a.record(Latency::InviteTo200, Duration::from_millis(2));
        let mut b = Stats::default();
        b.merge(&a);
        b.merge(&a);
        assert_eq!(b.calls_started, 6);
        assert_eq!(b.failures_by_reason()["unexpected_code_486"], 2);
        assert_eq!(b.percentiles(Latency::InviteTo200).count, 2);
        b.reset();
        assert_eq!(b.calls_started, 0);
        assert_eq!(b.percentiles(Latency::InviteTo200).count, 0);
        b.record(Latency::ByeTo200, Duration::from_millis(1));
        assert_eq!(b.percentiles(Latency::ByeTo200).count, 1);
    }
}
