//! Reports: text summary, JSON, SIPp `-trace_stat` CSV and a
//! self-contained HTML page with inline SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::runtime::{RunResult, Sample};
use crate::stats::{FailureReason, Latency, Percentiles, Stats};

/// The `--json` object.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `uac` or `uas`.
    pub mode: String,
    /// Requested calls per second (UAC; 0 for the UAS).
    pub target_rate: f64,
    /// Calls placed (UAC) or received (UAS) per second while placing.
    pub achieved_cps: f64,
    pub calls_attempted: u64,
    pub calls_succeeded: u64,
    pub calls_failed: u64,
    /// Succeeded calls that ended with an intended CANCEL.
    pub calls_cancelled: u64,
    /// UAS: calls rejected with the configured failure code.
    pub calls_rejected: u64,
    /// Succeeded / ended, in percent (100 when nothing ended).
    pub success_percent: f64,
    pub failures_by_reason: BTreeMap<String, u64>,
    pub duration_s: f64,
    /// Latencies in milliseconds.
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub retransmissions_sent: u64,
    pub retransmissions_received: u64,
    pub malformed: u64,
    pub out_of_call: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_errors: u64,
    pub threads: usize,
    /// CPU time of the worker threads.
    pub cpu_s: f64,
    /// Worker CPU per attempted call, in microseconds.
    pub cpu_us_per_call: f64,
}

impl Summary {
    /// Builds the summary of a run.
    pub fn new(mode: &str, target_rate: f64, threads: usize, r: &RunResult) -> Summary {
        let s = &r.stats;
        let placing = r.placing.as_secs_f64().max(1e-9);
        let ended = s.calls_ended();
        Summary {
            mode: mode.into(),
            target_rate,
            achieved_cps: s.calls_started as f64 / placing,
            calls_attempted: s.calls_started,
            calls_succeeded: s.calls_succeeded,
            calls_failed: s.calls_failed,
            calls_cancelled: s.calls_cancelled,
            calls_rejected: s.calls_rejected,
            success_percent: if ended == 0 {
                100.0
            } else {
                100.0 * s.calls_succeeded as f64 / ended as f64
            },
            failures_by_reason: s.failures_by_reason(),
            duration_s: r.elapsed.as_secs_f64(),
            latency_ms: Latency::ALL
                .iter()
                .map(|k| (k.name().to_string(), s.percentiles(*k)))
                .collect(),
            retransmissions_sent: s.retransmissions,
            retransmissions_received: s.retransmissions_received,
            malformed: s.malformed,
            out_of_call: s.out_of_call,
            datagrams_sent: s.datagrams_sent,
            datagrams_received: s.datagrams_received,
            send_errors: s.send_errors,
            threads,
            cpu_s: r.cpu.as_secs_f64(),
            cpu_us_per_call: if s.calls_started == 0 {
                0.0
            } else {
                r.cpu.as_secs_f64() * 1e6 / s.calls_started as f64
            },
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "sipload {}: {} calls in {:.2} s ({:.1} calls/s{})",
            self.mode,
            self.calls_attempted,
            self.duration_s,
            self.achieved_cps,
            if self.target_rate > 0.0 {
                format!(", target {}", self.target_rate)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            t,
            "  succeeded {} ({:.3} %), failed {}, cancelled {}, rejected {}",
            self.calls_succeeded, self.success_percent, self.calls_failed, self.calls_cancelled, self.calls_rejected
        );
        for (r, n) in &self.failures_by_reason {
            let _ = writeln!(t, "  failure {r}: {n}");
        }
        let _ = writeln!(
            t,
            "  retransmissions sent {}, received {}; malformed {}; out-of-call {}; send errors {}",
            self.retransmissions_sent,
            self.retransmissions_received,
            self.malformed,
            self.out_of_call,
            self.send_errors
        );
        let _ = writeln!(
            t,
            "  {:<14}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}  (ms)",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in &self.latency_ms {
            if p.count == 0 {
                continue;
            }
            let _ = writeln!(
                t,
                "  {:<14}{:>8}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}",
                name, p.count, p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        let _ = writeln!(
            t,
            "  cpu {:.3} s on {} threads ({:.1} µs per call)",
            self.cpu_s, self.threads, self.cpu_us_per_call
        );
        t
    }
}

/// The live progress line (written with a leading `\r`).
pub fn progress_line(sample: &Sample, total: &Stats) -> String {
    let i = &sample.interval;
    let p = i.percentiles(Latency::InviteTo200);
    let b = if p.count == 0 {
        i.percentiles(Latency::ByeTo200)
    } else {
        p
    };
    format!(
        "\r{:>6.1}s  rate {:>8.1}/s  calls {:>9}  ok {:>9}  failed {:>6}  current {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms ",
        sample.elapsed,
        i.calls_started as f64 / sample.period.max(1e-9),
        total.calls_started,
        total.calls_succeeded,
        total.calls_failed,
        sample.current_calls,
        b.p50,
        b.p99
    )
}

/// Writes SIPp `-trace_stat` lines: same header, `;` delimited, one line
/// per sampling period.
pub struct TraceStat<W: Write> {
    out: W,
    start: SystemTime,
    last_reset: SystemTime,
    target_rate: f64,
    total: Stats,
}

const HEADER: &str = "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;CallRate(P);CallRate(C);IncomingCall(P);IncomingCall(C);OutgoingCall(P);OutgoingCall(C);TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);FailedCannotSendMessage(P);FailedCannotSendMessage(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);FailedTcpConnect(P);FailedTcpConnect(C);FailedTcpClosed(P);FailedTcpClosed(C);FailedUnexpectedMessage(P);FailedUnexpectedMessage(C);FailedCallRejected(P);FailedCallRejected(C);FailedCmdNotSent(P);FailedCmdNotSent(C);FailedRegexpDoesntMatch(P);FailedRegexpDoesntMatch(C);FailedRegexpShouldntMatch(P);FailedRegexpShouldntMatch(C);FailedRegexpHdrNotFound(P);FailedRegexpHdrNotFound(C);FailedOutboundCongestion(P);FailedOutboundCongestion(C);FailedTimeoutOnRecv(P);FailedTimeoutOnRecv(C);FailedTimeoutOnSend(P);FailedTimeoutOnSend(C);FailedTestDoesntMatch(P);FailedTestDoesntMatch(C);FailedTestShouldntMatch(P);FailedTestShouldntMatch(C);FailedStrcmpDoesntMatch(P);FailedStrcmpDoesntMatch(C);FailedStrcmpShouldntMatch(P);FailedStrcmpShouldntMatch(C);OutOfCallMsgs(P);OutOfCallMsgs(C);DeadCallMsgs(P);DeadCallMsgs(C);Retransmissions(P);Retransmissions(C);AutoAnswered(P);AutoAnswered(C);Warnings(P);Warnings(C);FatalErrors(P);FatalErrors(C);WatchdogMajor(P);WatchdogMajor(C);WatchdogMinor(P);WatchdogMinor(C);ResponseTime1(P);ResponseTime1(C);ResponseTime1StDev(P);ResponseTime1StDev(C);CallLength(P);CallLength(C);CallLengthStDev(P);CallLengthStDev(C);ResponseTimeRepartition1;ResponseTimeRepartition1_<10;ResponseTimeRepartition1_<20;ResponseTimeRepartition1_<30;ResponseTimeRepartition1_<40;ResponseTimeRepartition1_<50;ResponseTimeRepartition1_<100;ResponseTimeRepartition1_<150;ResponseTimeRepartition1_<200;ResponseTimeRepartition1_>=200;CallLengthRepartition;CallLengthRepartition_<10;CallLengthRepartition_<50;CallLengthRepartition_<100;CallLengthRepartition_<500;CallLengthRepartition_<1000;CallLengthRepartition_<5000;CallLengthRepartition_<10000;CallLengthRepartition_>=10000;";

/// SIPp's failure columns that sipload can fill.
fn failure_columns(s: &Stats) -> (u64, u64, u64) {
    let (mut retrans, mut unexpected, mut timeout) = (0, 0, 0);
    for (r, n) in &s.failures {
        match r {
            FailureReason::RetransmissionLimit | FailureReason::ByeRetransmissionLimit => retrans += n,
            FailureReason::UnexpectedCode(_) | FailureReason::ByeUnexpectedCode(_) => unexpected += n,
            FailureReason::Timeout
            | FailureReason::AckTimeout
            | FailureReason::CancelTimeout
            | FailureReason::ByeTimeout => timeout += n,
        }
    }
    (retrans, unexpected, timeout)
}

impl<W: Write> TraceStat<W> {
    /// Writes the header line.
    pub fn new(mut out: W, target_rate: f64) -> io::Result<Self> {
        writeln!(out, "{HEADER}")?;
        let now = SystemTime::now();
        Ok(TraceStat {
            out,
            start: now,
            last_reset: now,
            target_rate,
            total: Stats::default(),
        })
    }

    /// Writes one line for a sample.
    pub fn sample(&mut self, sample: &Sample, incoming: bool) -> io::Result<()> {
        let p = &sample.interval;
        self.total.merge(p);
        let c = &self.total;
        let now = SystemTime::now();
        let mut l = String::with_capacity(1024);
        let _ = write!(
            l,
            "{};{};{};{};{};{};",
            sipp_time(self.start),
            sipp_time(self.last_reset),
            sipp_time(now),
            hms(Duration::from_secs_f64(sample.period)),
            hms(Duration::from_secs_f64(sample.elapsed)),
            self.target_rate
        );
        let rate = |n: u64, secs: f64| n as f64 / secs.max(1e-9);
        let (inc_p, inc_c, out_p, out_c) = if incoming {
            (p.calls_started, c.calls_started, 0, 0)
        } else {
            (0, 0, p.calls_started, c.calls_started)
        };
        let _ = write!(
            l,
            "{:.5};{:.5};{inc_p};{inc_c};{out_p};{out_c};{};{};{};{};{};{};",
            rate(p.calls_started, sample.period),
            rate(c.calls_started, sample.elapsed),
            c.calls_started,
            sample.current_calls,
            p.calls_succeeded,
            c.calls_succeeded,
            p.calls_failed,
            c.calls_failed
        );
        let (rp, up, tp) = failure_columns(p);
        let (rc, uc, tc) = failure_columns(c);
        // FailedCannotSendMessage, FailedMaxUDPRetrans, FailedTcpConnect,
        // FailedTcpClosed, FailedUnexpectedMessage, FailedCallRejected,
        // FailedCmdNotSent, 3x FailedRegexp*, FailedOutboundCongestion,
        // FailedTimeoutOnRecv, FailedTimeoutOnSend, 2x FailedTest*,
        // 2x FailedStrcmp*.
        let pairs: [(u64, u64); 17] = [
            (0, 0),
            (rp, rc),
            (0, 0),
            (0, 0),
            (up, uc),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (tp, tc),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ];
        for (a, b) in pairs {
            let _ = write!(l, "{a};{b};");
        }
        // OutOfCallMsgs, DeadCallMsgs, Retransmissions, AutoAnswered,
        // Warnings, FatalErrors, WatchdogMajor, WatchdogMinor.
        let _ = write!(
            l,
            "{};{};0;0;{};{};0;0;0;0;0;0;0;0;0;0;",
            p.out_of_call, c.out_of_call, p.retransmissions, c.retransmissions
        );
        let mean = |s: &Stats, k: Latency| Duration::from_secs_f64(s.histogram(k).mean() / 1e6);
        let dev = |s: &Stats, k: Latency| Duration::from_secs_f64(s.histogram(k).stdev() / 1e6);
        let _ = write!(
            l,
            "{};{};{};{};{};{};{};{};",
            hmsu(mean(p, Latency::InviteTo200)),
            hmsu(mean(c, Latency::InviteTo200)),
            hmsu(dev(p, Latency::InviteTo200)),
            hmsu(dev(c, Latency::InviteTo200)),
            hmsu(mean(p, Latency::CallLength)),
            hmsu(mean(c, Latency::CallLength)),
            hmsu(dev(p, Latency::CallLength)),
            hmsu(dev(c, Latency::CallLength)),
        );
        l.push(';');
        repartition(
            &mut l,
            c.histogram(Latency::InviteTo200),
            &[10, 20, 30, 40, 50, 100, 150, 200],
        );
        l.push(';');
        repartition(
            &mut l,
            c.histogram(Latency::CallLength),
            &[10, 50, 100, 500, 1000, 5000, 10000],
        );
        writeln!(self.out, "{l}")?;
        self.out.flush()
    }
}

/// Counts per SIPp repartition bucket (bounds in ms), `;`-terminated.
fn repartition(l: &mut String, h: &hdrhistogram::Histogram<u64>, bounds_ms: &[u64]) {
    let mut lo = 0u64;
    for b in bounds_ms {
        let hi = b * 1000;
        let n = if hi > lo { h.count_between(lo, hi - 1) } else { 0 };
        let _ = write!(l, "{n};");
        lo = hi;
    }
    let _ = write!(l, "{};", h.count_between(lo, u64::MAX / 2));
}

/// `YYYY-MM-DD\tHH:MM:SS.uuuuuu\tEPOCH.uuuuuu`, as SIPp writes times.
fn sipp_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let us = d.subsec_micros();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}\t{:02}:{:02}:{:02}.{us:06}\t{secs}.{us:06}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn hmsu(d: Duration) -> String {
    format!("{}:{:06}", hms(d), d.subsec_micros())
}

/// A self-contained HTML report: summary table and inline SVG plots of
/// rate, success and INVITE→200 percentiles over time.
pub fn html(summary: &Summary, samples: &[Sample]) -> String {
    let x: Vec<f64> = samples.iter().map(|s| s.elapsed).collect();
    let per_s = |f: &dyn Fn(&Stats) -> u64| -> Vec<f64> {
        samples
            .iter()
            .map(|s| f(&s.interval) as f64 / s.period.max(1e-9))
            .collect()
    };
    let rate = chart(
        "Calls per second",
        "calls/s",
        &x,
        &[
            ("attempted", "#1f77b4", per_s(&|s| s.calls_started)),
            ("succeeded", "#2ca02c", per_s(&|s| s.calls_succeeded)),
            ("failed", "#d62728", per_s(&|s| s.calls_failed)),
        ],
    );
    let success: Vec<f64> = samples
        .iter()
        .map(|s| {
            let e = s.interval.calls_ended();
            if e == 0 {
                100.0
            } else {
                100.0 * s.interval.calls_succeeded as f64 / e as f64
            }
        })
        .collect();
    let success = chart("Success", "%", &x, &[("success", "#2ca02c", success)]);
    let lat = |k: Latency, f: fn(&Percentiles) -> f64| -> Vec<f64> {
        samples.iter().map(|s| f(&s.interval.percentiles(k))).collect()
    };
    let latency = chart(
        "INVITE → 200 latency",
        "ms",
        &x,
        &[
            ("p50", "#1f77b4", lat(Latency::InviteTo200, |p| p.p50)),
            ("p90", "#ff7f0e", lat(Latency::InviteTo200, |p| p.p90)),
            ("p99", "#d62728", lat(Latency::InviteTo200, |p| p.p99)),
        ],
    );
    let bye = chart(
        "BYE → 200 latency",
        "ms",
        &x,
        &[
            ("p50", "#1f77b4", lat(Latency::ByeTo200, |p| p.p50)),
            ("p99", "#d62728", lat(Latency::ByeTo200, |p| p.p99)),
        ],
    );
    let json = serde_json::to_string_pretty(summary).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sipload report</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:960px}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}svg{{display:block;margin:1em 0}}</style></head><body>\n<h1>sipload {mode} report</h1>\n<pre>{text}</pre>\n{rate}\n{success}\n{latency}\n{bye}\n<h2>JSON summary</h2><pre>{json}</pre>\n</body></html>\n",
        mode = escape(&summary.mode),
        text = escape(&summary.text()),
        json = escape(&json),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One line chart as inline SVG.
fn chart(title: &str, unit: &str, x: &[f64], series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, ml, mr, mt, mb) = (900.0, 260.0, 70.0, 20.0, 30.0, 40.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let xmax = x.iter().copied().fold(1e-9, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
<text x=\"{ml}\" y=\"18\" font-size=\"15\" font-weight=\"bold\">{}</text>\
<rect x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>",
        escape(title)
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = mt + ph - ph * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            ml + pw,
            ml - 5.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    for i in 0..=5 {
        let v = xmax * f64::from(i) / 5.0;
        let xp = ml + pw * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            "<text x=\"{xp:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{v:.0}s</text>",
            mt + ph + 15.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"14\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        mt + ph / 2.0,
        mt + ph / 2.0,
        escape(unit)
    );
    for (k, (name, color, ys)) in series.iter().enumerate() {
        let pts: Vec<String> = x
            .iter()
            .zip(ys.iter())
            .filter(|(_, y)| y.is_finite())
            .map(|(xv, yv)| format!("{:.1},{:.1}", ml + pw * xv / xmax, mt + ph - ph * yv / ymax))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{color}\">{}</text>",
            pts.join(" "),
            ml + 10.0 + 110.0 * k as f64,
            mt + ph + 32.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_000), (2022, 1, 8));
        assert_eq!(hmsu(Duration::from_micros(3_723_000_042)), "01:02:03:000042");
    }

    #[test]
    fn trace_stat_columns_match_header() {
        let mut buf = Vec::new();
        let mut ts = TraceStat::new(&mut buf, 10.0).unwrap();
        let mut interval = Stats::default();
        interval.calls_started = 5;
        interval.fail(FailureReason::UnexpectedCode(486));
        interval.record(Latency::InviteTo200, Duration::from_millis(15));
        let sample = Sample {
            elapsed: 1.0,
            period: 1.0,
            interval,
            current_calls: 2,
        };
        ts.sample(&sample, false).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        let line = lines.next().unwrap();
        assert_eq!(header.split(';').count(), line.split(';').count());
        let cols: Vec<&str> = header.split(';').collect();
        let vals: Vec<&str> = line.split(';').collect();
        let col = |name: &str| vals[cols.iter().position(|c| *c == name).unwrap()];
        assert_eq!(col("OutgoingCall(C)"), "5");
        assert_eq!(col("FailedUnexpectedMessage(C)"), "1");
        assert_eq!(col("CurrentCall"), "2");
        assert!(col("ResponseTime1(C)").starts_with("00:00:00:0150"));
        assert_eq!(col("ResponseTimeRepartition1_<20"), "1");
    }

    #[test]
    fn html_is_self_contained() {
        let r = RunResult {
            stats: Stats::default(),
            elapsed: Duration::from_secs(1),
            placing: Duration::from_secs(1),
            cpu: Duration::ZERO,
            samples: Vec::new(),
            local: Vec::new(),
        };
        let s = Summary::new("uac", 10.0, 1, &r);
        let page = html(&s, &[]);
        assert!(page.contains("<svg"));
        assert!(!page.contains("src=\"http"));
    }
}
