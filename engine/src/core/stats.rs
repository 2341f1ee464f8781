//! Per-worker statistics: written by one worker, read by anyone (relaxed
//! atomics); the admin API sums them over workers.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one worker.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// `(name, value)` pairs, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

stats! {
    /// Datagrams received from the network (hand-offs not counted twice).
    rx_datagrams,
    /// Datagrams sent (relayed, local replies, retransmissions, ACKs).
    tx_datagrams,
    /// Requests received.
    rx_requests,
    /// Responses received.
    rx_responses,
    /// Requests relayed (first sends, not retransmissions).
    relayed_requests,
    /// Responses relayed.
    relayed_responses,
    /// Replies generated locally (100 Trying excluded).
    local_replies,
    /// Retransmissions sent by siplb's timers.
    retransmissions,
    /// Retransmitted requests absorbed by a server transaction.
    absorbed,
    /// Calls moved to another destination.
    failovers,
    /// Dialogs in the early state now.
    early_dialogs,
    /// Confirmed dialogs now (OpenSIPS `active_dialogs`).
    active_dialogs,
    /// Dialogs created so far.
    processed_dialogs,
    /// Dialogs ended by lifetime expiry.
    expired_dialogs,
    /// Dialogs that failed before confirmation.
    failed_dialogs,
    /// Dropped: not parseable and no 400 could be addressed.
    drop_malformed,
    /// Dropped: larger than the limit.
    drop_too_big,
    /// Dropped: a response with no transaction and no Via of ours.
    drop_stray_response,
    /// Dropped: an ACK matching nothing.
    drop_stray_ack,
    /// Dropped: next hop cannot be resolved (not an IP address).
    drop_unroutable,
    /// Dropped: a late 2xx from a destination the call left.
    drop_late_2xx,
    /// 400 replies to malformed requests.
    bad_requests,
    /// 481 replies (unknown dialog or transaction).
    unknown_dialogs,
    /// 483 replies (Max-Forwards exhausted).
    too_many_hops,
    /// 503 replies because every destination was full.
    full,
    /// Replies because no destination was eligible.
    no_destination,
    /// Requests refused because the transaction table was full.
    table_full,
    /// Datagrams passed to their owner worker.
    handoffs,
    /// Dropped: the owner worker's hand-off queue was full.
    drop_handoff,
    /// Datagrams the kernel refused to send.
    drop_send,
    /// Responses sent (relayed or local, retransmissions included), 1xx.
    replies_1xx,
    /// ... 2xx.
    replies_2xx,
    /// ... 3xx.
    replies_3xx,
    /// ... 4xx.
    replies_4xx,
    /// ... 5xx.
    replies_5xx,
    /// ... 6xx.
    replies_6xx,
    /// Stream (TCP and TLS) connections open now, inbound and outbound.
    tcp_connections,
    /// Inbound stream connections accepted.
    tcp_accepted,
    /// Outbound stream connections opened to backends (or to UAs).
    tcp_connected,
    /// Connections refused: the process-wide limit was reached.
    tcp_refused_total_limit,
    /// Connections refused: the per-source-address limit was reached.
    tcp_refused_per_ip_limit,
    /// Outbound connections that failed (connect error, timeout, TLS
    /// handshake error towards a backend).
    tcp_connect_failed,
    /// Inbound TLS handshakes that failed (bad or missing client
    /// certificate, protocol errors).
    tls_handshake_failed,
    /// Connections closed after `tcp.idle_timeout` without traffic.
    tcp_idle_closed,
    /// Connections cut off because a message took longer than
    /// `tcp.message_timeout` to arrive in full (slow senders).
    tcp_slow_closed,
    /// Connections closed on a framing error (missing or bad
    /// Content-Length, garbage between messages) or an oversized message.
    tcp_framing_errors,
    /// RFC 5626 keep-alive pings answered.
    tcp_keepalive_pings,
    /// Messages to a connection that had closed, sent on a new one (RFC
    /// 3261 §18.2.2) or, for requests, dropped.
    tcp_send_fallbacks,
    /// Messages dropped because no connection could carry them.
    tcp_drop_send,
}

// A worker's counters have exactly one writer, the worker's thread (its
// proxy, sockets and connections), so an increment is a plain load and
// store: no locked read-modify-write on every datagram. Readers (admin,
// metrics) see each value whole, at worst one update late.
impl Stats {
    /// Adds one. Only the owning worker's thread may write.
    pub fn inc(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Subtracts one, saturating. Only the owning worker's thread may write.
    pub fn dec(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed);
    }

    /// Reads.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
