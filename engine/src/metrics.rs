//! Prometheus text exposition (format 0.0.4) of siplb's counters, served
//! at `GET /metrics` on the admin port.
//!
//! Names carry the `siplb_` prefix and base units; counters end in
//! `_total`. Every family is written with `# HELP` and `# TYPE` even when
//! it has no sample yet, so the set of names is stable. Per-worker
//! counters keep their `worker` label (sum them in queries); per
//! destination series carry `group` and `destination` (the id), plus
//! `resource` for load and capacity. The README's metrics table lists
//! every family; `engine/tests/ops.rs` fails when the two differ.

use std::fmt::Write as _;
use std::time::Instant;

use crate::core::Stats;
use crate::lb::{ProbeResult, Reason, Table};

/// `counter` or `gauge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Where a per-worker statistic goes: family, and one extra label.
fn family_of(stat: &str) -> Option<(&'static str, Option<(&'static str, &'static str)>)> {
    let reason = |r| Some(("reason", r));
    Some(match stat {
        "rx_datagrams" => ("siplb_datagrams_received_total", None),
        "tx_datagrams" => ("siplb_datagrams_sent_total", None),
        "rx_requests" => ("siplb_requests_received_total", None),
        "rx_responses" => ("siplb_responses_received_total", None),
        "relayed_requests" => ("siplb_requests_relayed_total", None),
        "relayed_responses" => ("siplb_responses_relayed_total", None),
        "local_replies" => ("siplb_local_replies_total", None),
        "replies_1xx" => ("siplb_replies_sent_total", Some(("class", "1xx"))),
        "replies_2xx" => ("siplb_replies_sent_total", Some(("class", "2xx"))),
        "replies_3xx" => ("siplb_replies_sent_total", Some(("class", "3xx"))),
        "replies_4xx" => ("siplb_replies_sent_total", Some(("class", "4xx"))),
        "replies_5xx" => ("siplb_replies_sent_total", Some(("class", "5xx"))),
        "replies_6xx" => ("siplb_replies_sent_total", Some(("class", "6xx"))),
        "retransmissions" => ("siplb_retransmissions_total", None),
        "absorbed" => ("siplb_retransmissions_absorbed_total", None),
        "failovers" => ("siplb_failovers_total", None),
        "early_dialogs" => ("siplb_dialogs", Some(("state", "early"))),
        "active_dialogs" => ("siplb_dialogs", Some(("state", "active"))),
        "processed_dialogs" => ("siplb_dialogs_processed_total", None),
        "expired_dialogs" => ("siplb_dialogs_expired_total", None),
        "failed_dialogs" => ("siplb_dialogs_failed_total", None),
        "drop_malformed" => ("siplb_dropped_total", reason("malformed")),
        "drop_too_big" => ("siplb_dropped_total", reason("too_big")),
        "drop_stray_response" => ("siplb_dropped_total", reason("stray_response")),
        "drop_stray_ack" => ("siplb_dropped_total", reason("stray_ack")),
        "drop_unroutable" => ("siplb_dropped_total", reason("unroutable")),
        "drop_late_2xx" => ("siplb_dropped_total", reason("late_2xx")),
        "drop_handoff" => ("siplb_dropped_total", reason("handoff_queue_full")),
        "drop_send" => ("siplb_dropped_total", reason("send_failed")),
        "bad_requests" => ("siplb_refused_total", reason("bad_request")),
        "unknown_dialogs" => ("siplb_refused_total", reason("unknown_dialog")),
        "too_many_hops" => ("siplb_refused_total", reason("too_many_hops")),
        "full" => ("siplb_refused_total", reason("full")),
        "no_destination" => ("siplb_refused_total", reason("no_destination")),
        "table_full" => ("siplb_refused_total", reason("table_full")),
        "handoffs" => ("siplb_handoffs_total", None),
        "tcp_connections" => ("siplb_connections", None),
        "tcp_accepted" => ("siplb_connections_opened_total", Some(("direction", "inbound"))),
        "tcp_connected" => ("siplb_connections_opened_total", Some(("direction", "outbound"))),
        "tcp_refused_total_limit" => ("siplb_connections_refused_total", reason("total_limit")),
        "tcp_refused_per_ip_limit" => ("siplb_connections_refused_total", reason("per_ip_limit")),
        "tcp_connect_failed" => ("siplb_connections_failed_total", reason("connect")),
        "tls_handshake_failed" => ("siplb_connections_failed_total", reason("tls_handshake")),
        "tcp_idle_closed" => ("siplb_connections_closed_total", reason("idle")),
        "tcp_slow_closed" => ("siplb_connections_closed_total", reason("slow_sender")),
        "tcp_framing_errors" => ("siplb_connections_closed_total", reason("framing")),
        "tcp_keepalive_pings" => ("siplb_keepalive_pings_total", None),
        "tcp_send_fallbacks" => ("siplb_connection_fallbacks_total", None),
        "tcp_drop_send" => ("siplb_dropped_total", reason("no_connection")),
        _ => return None,
    })
}

/// Every family siplb exposes: (name, kind, help). A per-worker statistic
/// without an entry in `family_of` is exposed as `siplb_NAME_total`.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    ("siplb_build_info", Kind::Gauge, "Always 1; the version is a label."),
    ("siplb_uptime_seconds", Kind::Gauge, "Seconds since siplb started."),
    (
        "siplb_datagrams_received_total",
        Kind::Counter,
        "Datagrams received, per worker.",
    ),
    (
        "siplb_datagrams_sent_total",
        Kind::Counter,
        "Datagrams sent, per worker.",
    ),
    ("siplb_requests_received_total", Kind::Counter, "SIP requests received."),
    (
        "siplb_responses_received_total",
        Kind::Counter,
        "SIP responses received.",
    ),
    (
        "siplb_requests_relayed_total",
        Kind::Counter,
        "Requests relayed (first sends, not retransmissions).",
    ),
    ("siplb_responses_relayed_total", Kind::Counter, "Responses relayed."),
    (
        "siplb_local_replies_total",
        Kind::Counter,
        "Replies generated locally (100 Trying excluded).",
    ),
    (
        "siplb_replies_sent_total",
        Kind::Counter,
        "Responses sent, relayed or local, by class.",
    ),
    (
        "siplb_retransmissions_total",
        Kind::Counter,
        "Retransmissions sent by siplb's timers.",
    ),
    (
        "siplb_retransmissions_absorbed_total",
        Kind::Counter,
        "Retransmitted requests absorbed.",
    ),
    (
        "siplb_failovers_total",
        Kind::Counter,
        "Calls moved to another destination.",
    ),
    ("siplb_dialogs", Kind::Gauge, "Dialogs now, by state (early, active)."),
    ("siplb_dialogs_processed_total", Kind::Counter, "Dialogs created."),
    (
        "siplb_dialogs_expired_total",
        Kind::Counter,
        "Dialogs ended by lifetime expiry.",
    ),
    (
        "siplb_dialogs_failed_total",
        Kind::Counter,
        "Dialogs that failed before confirmation.",
    ),
    ("siplb_dropped_total", Kind::Counter, "Datagrams dropped, by reason."),
    (
        "siplb_refused_total",
        Kind::Counter,
        "Requests refused with a local reply, by reason.",
    ),
    (
        "siplb_handoffs_total",
        Kind::Counter,
        "Datagrams passed to their owner worker.",
    ),
    (
        "siplb_connections",
        Kind::Gauge,
        "TCP and TLS connections open now (inbound and outbound).",
    ),
    (
        "siplb_connections_opened_total",
        Kind::Counter,
        "TCP and TLS connections accepted (inbound) or opened (outbound).",
    ),
    (
        "siplb_connections_refused_total",
        Kind::Counter,
        "Connections closed at once over a limit (total_limit, per_ip_limit).",
    ),
    (
        "siplb_connections_failed_total",
        Kind::Counter,
        "Connections that failed to come up (connect, tls_handshake).",
    ),
    (
        "siplb_connections_closed_total",
        Kind::Counter,
        "Connections siplb closed, by reason (idle, slow_sender, framing).",
    ),
    (
        "siplb_keepalive_pings_total",
        Kind::Counter,
        "RFC 5626 keep-alive pings answered.",
    ),
    (
        "siplb_connection_fallbacks_total",
        Kind::Counter,
        "Messages whose connection had closed (responses resent per RFC 3261 18.2.2).",
    ),
    (
        "siplb_destination_up",
        Kind::Gauge,
        "1 when the destination takes new calls.",
    ),
    (
        "siplb_destination_load",
        Kind::Gauge,
        "Calls held on a destination's resource.",
    ),
    (
        "siplb_destination_capacity",
        Kind::Gauge,
        "Capacity of a destination's resource.",
    ),
    (
        "siplb_destination_calls_total",
        Kind::Counter,
        "Calls (attempts) sent to a destination.",
    ),
    (
        "siplb_destination_status_changes_total",
        Kind::Counter,
        "Up/down changes, by reason.",
    ),
    (
        "siplb_destination_probes_total",
        Kind::Counter,
        "Health probes, by result (ok, failed, timeout).",
    ),
    (
        "siplb_load_underflows_total",
        Kind::Counter,
        "Releases that found a zero counter (a bug if not 0).",
    ),
];

/// Label value escaping (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The exposition text for one scrape.
pub fn render(table: &Table, stats: &[std::sync::Arc<Stats>], started: Instant) -> String {
    // Samples per family, in FAMILIES order; extra families after.
    let mut samples: Vec<(String, Kind, String, Vec<String>)> = FAMILIES
        .iter()
        .map(|(n, k, h)| (n.to_string(), *k, h.to_string(), Vec::new()))
        .collect();
    let mut push = |family: &str, kind: Kind, line: String| match samples.iter_mut().find(|f| f.0 == family) {
        Some(f) => f.3.push(line),
        None => samples.push((
            family.to_string(),
            kind,
            "Undocumented worker statistic.".into(),
            vec![line],
        )),
    };
    push(
        "siplb_build_info",
        Kind::Gauge,
        format!(
            "siplb_build_info{} 1",
            labels(&[("version", env!("CARGO_PKG_VERSION"))])
        ),
    );
    push(
        "siplb_uptime_seconds",
        Kind::Gauge,
        format!("siplb_uptime_seconds {:.3}", started.elapsed().as_secs_f64()),
    );
    for (w, s) in stats.iter().enumerate() {
        let worker = w.to_string();
        for (name, v) in s.snapshot() {
            let (family, extra) = match family_of(name) {
                Some(f) => (f.0.to_string(), f.1),
                None => (format!("siplb_{name}_total"), None),
            };
            let mut l = vec![("worker", worker.as_str())];
            l.extend(extra);
            let kind = FAMILIES.iter().find(|f| f.0 == family).map_or(Kind::Counter, |f| f.1);
            push(&family, kind, format!("{family}{} {v}", labels(&l)));
        }
    }
    let names = table.resource_names();
    for (_, d) in table.configured() {
        let (g, id) = (d.config.group.to_string(), d.config.id.to_string());
        let base = [("group", g.as_str()), ("destination", id.as_str())];
        push(
            "siplb_destination_up",
            Kind::Gauge,
            format!("siplb_destination_up{} {}", labels(&base), u8::from(d.enabled())),
        );
        for &(rid, _) in &d.config.resources {
            if let (Some(c), Some(r)) = (d.counter(rid), names.get(rid)) {
                let l = labels(&[base[0], base[1], ("resource", r)]);
                push(
                    "siplb_destination_load",
                    Kind::Gauge,
                    format!("siplb_destination_load{l} {}", c.load()),
                );
                push(
                    "siplb_destination_capacity",
                    Kind::Gauge,
                    format!("siplb_destination_capacity{l} {}", c.capacity()),
                );
            }
        }
        push(
            "siplb_destination_calls_total",
            Kind::Counter,
            format!("siplb_destination_calls_total{} {}", labels(&base), d.calls()),
        );
        for r in Reason::ALL {
            let l = labels(&[base[0], base[1], ("reason", r.as_str())]);
            push(
                "siplb_destination_status_changes_total",
                Kind::Counter,
                format!("siplb_destination_status_changes_total{l} {}", d.changes(r)),
            );
        }
        for (result, n) in ProbeResult::LABELS.iter().zip(d.probes()) {
            let l = labels(&[base[0], base[1], ("result", result)]);
            push(
                "siplb_destination_probes_total",
                Kind::Counter,
                format!("siplb_destination_probes_total{l} {n}"),
            );
        }
    }
    push(
        "siplb_load_underflows_total",
        Kind::Counter,
        format!("siplb_load_underflows_total {}", table.underflows()),
    );
    let mut out = String::new();
    for (name, kind, help, lines) in samples {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    #[test]
    fn every_statistic_has_a_documented_family() {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        for (stat, _) in Stats::default().snapshot() {
            let (family, _) = family_of(stat).unwrap_or_else(|| panic!("statistic {stat} has no metric family"));
            assert!(names.contains(&family), "{family} is not in FAMILIES");
        }
    }

    #[test]
    fn exposition_is_well_formed() {
        let c = Config::parse(include_str!("../../examples/siplb.toml")).unwrap();
        let t = Table::new(&c.destinations, &c.resource_names);
        let stats = vec![Arc::new(Stats::default()), Arc::new(Stats::default())];
        Stats::inc(&stats[1].replies_2xx);
        let text = render(&t, &stats, Instant::now());
        assert!(
            text.contains("siplb_replies_sent_total{worker=\"1\",class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("siplb_destination_load{group=\"1\",destination=\"2\",resource=\"vm\"} 0\n"));
        assert!(text.contains("# TYPE siplb_dialogs gauge\n"));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
                assert!(!declared.contains(&name.to_string()), "{name} declared twice");
                declared.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last(), Some(&name.to_string()), "{line} outside its family");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
