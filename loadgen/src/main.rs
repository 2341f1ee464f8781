//! `sipload`: SIPp-like SIP load generator (UAC, UAS and ramp modes).

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};

use sipload::report::{self, Summary, TraceStat};
use sipload::runtime::{self, RunOptions, RunResult, Sample, UacRun};
use sipload::sip::Timers;
use sipload::stats::{Latency, Stats};
use sipload::uac::UacConfig;
use sipload::uas::UasConfig;

#[derive(Parser)]
#[command(name = "sipload", version, about = "SIPp-like SIP load generator bundled with siplb")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Place calls: INVITE → 100/180/200 → ACK → hold → BYE → 200.
    Uac(UacArgs),
    /// Answer calls.
    Uas(UasArgs),
    /// Find the highest rate that still succeeds (steps, then bisection).
    Ramp(RampArgs),
    /// Measure the UDP floor: CPU per datagram of a bare recvmmsg/sendmmsg
    /// ping-pong between two pinned threads on loopback.
    Floor(FloorArgs),
}

#[derive(Args)]
struct FloorArgs {
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Datagram size in bytes (a SIP INVITE with SDP is about 800).
    #[arg(long, default_value_t = 800)]
    size: usize,
    /// Datagrams in flight.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Do not pin the two threads to cores 0 and 1.
    #[arg(long)]
    no_pin: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Common {
    /// Worker threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Cores to pin the threads to, e.g. `1` or `0,1` (default: all, in
    /// order). Give a UAC and a UAS on one machine different cores.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write SIPp -trace_stat style CSV (`;` delimited) to FILE.
    #[arg(long, value_name = "FILE")]
    trace_stat: Option<PathBuf>,
    /// Write a self-contained HTML report to FILE.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Sampling period of the progress line, CSV and report, in seconds.
    #[arg(long, default_value_t = 1.0)]
    period: f64,
    /// Log every message sent and received to FILE.N (thread N), like
    /// SIPp's -trace_msg. Slow: for debugging.
    #[arg(long, value_name = "FILE")]
    trace_msg: Option<PathBuf>,
    /// RFC 3261 T1 in milliseconds (T2 is 8·T1).
    #[arg(long, default_value_t = 500)]
    t1: u64,
}

#[derive(Args, Clone)]
struct CallArgs {
    /// Call hold time in milliseconds (ACK → BYE).
    #[arg(short = 'd', long = "hold", default_value_t = 0, value_name = "HOLD_MS")]
    hold_ms: u64,
    /// Most calls alive at once (0 = no limit).
    #[arg(short = 'l', long = "limit", default_value_t = 0, value_name = "MAX_CONCURRENT")]
    max_concurrent: usize,
    /// Request-URI user part (e.g. VM_1 or a number).
    #[arg(short = 's', long, default_value = "service")]
    service: String,
    /// Send a realistic SDP offer (`--sdp false` to send none).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    sdp: bool,
    /// Local IP to bind (default: the one that routes to the target).
    #[arg(short = 'i', long = "local-ip")]
    local_ip: Option<IpAddr>,
    /// First local port; thread N binds PORT+N (default: any).
    #[arg(short = 'p', long = "local-port", default_value_t = 0)]
    local_port: u16,
    /// A call without final response after this many ms fails with
    /// `timeout` (and is CANCELled).
    #[arg(long = "timeout", default_value_t = 32_000, value_name = "MS")]
    timeout_ms: u64,
    /// Fraction of calls (0..1) to CANCEL during ringing.
    #[arg(long, default_value_t = 0.0)]
    cancel_ratio: f64,
    /// Delay in ms from the 180 to the CANCEL.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    cancel_after: u64,
}

#[derive(Args)]
struct UacArgs {
    /// Target (proxy or UAS) as HOST:PORT (port 5060 if omitted).
    target: String,
    /// Calls per second.
    #[arg(short = 'r', long, default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many calls.
    #[arg(short = 'm', long = "calls")]
    calls: Option<u64>,
    /// Stop placing calls after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    #[command(flatten)]
    call: CallArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct UasArgs {
    /// Port to listen on (0 = any free port; the bound address is printed).
    #[arg(short = 'p', long, default_value_t = 5060)]
    port: u16,
    /// IP to listen on.
    #[arg(short = 'i', long = "ip", default_value = "0.0.0.0")]
    ip: IpAddr,
    /// Final response code for answered calls.
    #[arg(long, default_value_t = 200)]
    answer_code: u16,
    /// Delay between 180 and the final response, in ms.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    ring_delay: u64,
    /// Fraction of calls (0..1) rejected with --fail-code.
    #[arg(long, default_value_t = 0.0)]
    fail_ratio: f64,
    /// Code for rejected calls (e.g. 486, 503).
    #[arg(long, default_value_t = 486)]
    fail_code: u16,
    /// Never answer (100/180 only): callers time out or cancel.
    #[arg(long)]
    no_answer: bool,
    /// Hang up answered calls ourselves after this many ms (callee BYE).
    #[arg(long, value_name = "MS")]
    bye_after: Option<u64>,
    /// Do not send 100 Trying.
    #[arg(long)]
    no_trying: bool,
    /// Do not send 180 Ringing.
    #[arg(long)]
    no_ringing: bool,
    /// Answer with SDP (`--sdp false` for none).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    sdp: bool,
    /// Forget an answered call that got no BYE after this many seconds
    /// (failure `bye_timeout`).
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    max_dialog: f64,
    /// Exit after this many calls ended.
    #[arg(short = 'm', long = "calls")]
    calls: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RampArgs {
    /// Target as HOST:PORT.
    target: String,
    /// First rate (calls/s).
    #[arg(long, default_value_t = 1000.0)]
    start: f64,
    /// Rate increment between steps.
    #[arg(long, default_value_t = 1000.0)]
    step: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// Bisection rounds after the first failing step.
    #[arg(long, default_value_t = 4)]
    bisect: u32,
    /// A step passes with at least this success percentage...
    #[arg(long, default_value_t = 99.9)]
    min_success: f64,
    /// ...and p99 INVITE→200 at most this many ms.
    #[arg(long, default_value_t = 200.0)]
    max_p99_ms: f64,
    /// Pause between steps in ms, so that an overloaded target drains.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pause: u64,
    #[command(flatten)]
    call: CallArgs,
    #[command(flatten)]
    common: Common,
}

fn main() {
    let cli = Cli::parse();
    runtime::install_signal_handlers();
    let result = match cli.mode {
        Mode::Uac(a) => uac(a),
        Mode::Uas(a) => uas(a),
        Mode::Ramp(a) => ramp(a),
        Mode::Floor(a) => floor(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sipload: {e:#}");
            std::process::exit(2);
        }
    }
}

fn resolve(target: &str) -> Result<SocketAddr> {
    let with_port = if target.parse::<SocketAddr>().is_ok()
        || target
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:5060")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .with_context(|| format!("no address for {target}"))
}

/// A duration option in ms, capped at ten days so that adding it to a
/// clock reading cannot overflow.
fn ms(v: u64) -> Duration {
    Duration::from_millis(v.min(10 * 86_400_000))
}

/// A duration option in seconds, clamped to `lo..=hi` (NaN → `lo`).
fn secs(v: f64, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(if v.is_nan() { lo } else { v.clamp(lo, hi) })
}

fn timers(t1_ms: u64) -> Timers {
    let t1 = Duration::from_millis(t1_ms.clamp(1, 60_000));
    Timers { t1, t2: t1 * 8 }
}

fn uac_run(target: SocketAddr, rate: f64, call: &CallArgs, common: &Common) -> Result<UacRun> {
    if !rate.is_finite() || rate <= 0.0 {
        bail!("rate must be positive");
    }
    let local_ip = call.local_ip.unwrap_or_else(|| runtime::local_ip_for(target));
    let mut config = UacConfig::new(target, SocketAddr::new(local_ip, 0));
    config.service = call.service.clone();
    config.hold = ms(call.hold_ms);
    config.sdp = call.sdp;
    config.answer_timeout = ms(call.timeout_ms);
    config.cancel_ratio = call.cancel_ratio.clamp(0.0, 1.0);
    config.cancel_after = ms(call.cancel_after);
    config.timers = timers(common.t1);
    Ok(UacRun {
        config,
        local_ip,
        local_port: call.local_port,
        rate,
        max_concurrent: call.max_concurrent,
    })
}

fn run_options(common: &Common, calls: Option<u64>, duration: Option<f64>) -> RunOptions {
    RunOptions {
        threads: common.threads.unwrap_or_else(runtime::default_threads).max(1),
        pin: !common.no_pin,
        cpus: common.cpus.clone(),
        trace_msg: common.trace_msg.clone(),
        period: secs(common.period, 0.05, 3600.0),
        duration: duration.map(|d| secs(d, 0.0, 864_000.0)),
        calls,
    }
}

/// Progress line on a terminal, CSV lines if asked.
struct Observer {
    tty: bool,
    trace: Option<TraceStat<BufWriter<File>>>,
    incoming: bool,
    error: Option<std::io::Error>,
}

impl Observer {
    fn new(common: &Common, target_rate: f64, incoming: bool) -> Result<Observer> {
        let trace = match &common.trace_stat {
            Some(p) => {
                let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
                Some(TraceStat::new(BufWriter::new(f), target_rate)?)
            }
            None => None,
        };
        Ok(Observer {
            tty: std::io::stderr().is_terminal(),
            trace,
            incoming,
            error: None,
        })
    }

    fn observe(&mut self, sample: &Sample, total: &Stats) {
        if self.tty {
            eprint!("{}", report::progress_line(sample, total));
        }
        if let Some(t) = self.trace.as_mut() {
            if let Err(e) = t.sample(sample, self.incoming) {
                self.error.get_or_insert(e);
            }
        }
    }

    fn finish(self) -> Result<()> {
        if self.tty {
            eprintln!();
        }
        match self.error {
            Some(e) => Err(e).context("writing the trace-stat file"),
            None => Ok(()),
        }
    }
}

fn output(mode: &str, rate: f64, threads: usize, r: &RunResult, common: &Common) -> Result<i32> {
    let summary = Summary::new(mode, rate, threads, r);
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.text());
    }
    if let Some(p) = &common.report {
        std::fs::write(p, report::html(&summary, &r.samples))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(if summary.calls_failed == 0 { 0 } else { 1 })
}

fn uac(a: UacArgs) -> Result<i32> {
    let target = resolve(&a.target)?;
    let run = uac_run(target, a.rate, &a.call, &a.common)?;
    if a.calls.is_none() && a.duration.is_none() {
        eprintln!("sipload: no -m or --duration given: placing calls until interrupted (Ctrl-C)");
    }
    let opts = run_options(&a.common, a.calls, a.duration);
    let mut obs = Observer::new(&a.common, a.rate, false)?;
    let r = runtime::run_uac(&run, &opts, &mut |s, t| obs.observe(s, t)).context("uac")?;
    obs.finish()?;
    output("uac", a.rate, opts.threads, &r, &a.common)
}

fn uas(a: UasArgs) -> Result<i32> {
    let opts = run_options(&a.common, a.calls, a.duration);
    let (socks, bound) = runtime::bind_uas(SocketAddr::new(a.ip, a.port), opts.threads)
        .with_context(|| format!("cannot bind {}:{}", a.ip, a.port))?;
    eprintln!("sipload uas listening on {bound}");
    let _ = std::io::stderr().flush();
    let mut config = UasConfig::new(bound);
    config.answer_code = a.answer_code;
    config.ring_delay = ms(a.ring_delay);
    config.failure_ratio = a.fail_ratio.clamp(0.0, 1.0);
    config.failure_code = a.fail_code;
    config.no_answer = a.no_answer;
    config.bye_after = a.bye_after.map(ms);
    config.trying = !a.no_trying;
    config.ringing = !a.no_ringing;
    config.sdp = a.sdp;
    config.timers = timers(a.common.t1);
    config.max_dialog = secs(a.max_dialog, 1.0, 864_000.0);
    let mut obs = Observer::new(&a.common, 0.0, true)?;
    let r = runtime::run_uas(socks, &config, &opts, &mut |s, t| obs.observe(s, t)).context("uas")?;
    obs.finish()?;
    output("uas", 0.0, opts.threads, &r, &a.common)
}

#[derive(serde::Serialize)]
struct Step {
    rate: f64,
    achieved_cps: f64,
    calls: u64,
    success_percent: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_call: f64,
    pass: bool,
}

fn ramp(a: RampArgs) -> Result<i32> {
    let target = resolve(&a.target)?;
    if !(a.step.is_finite() && a.step > 0.0 && a.start.is_finite() && a.start > 0.0) {
        bail!("--start and --step must be positive");
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut run_step = |rate: f64| -> Result<bool> {
        let run = uac_run(target, rate, &a.call, &a.common)?;
        let calls = (rate * a.step_secs).ceil().max(1.0) as u64;
        let opts = run_options(&a.common, Some(calls), None);
        let mut obs = Observer::new(
            &Common {
                trace_stat: None,
                ..a.common.clone()
            },
            rate,
            false,
        )?;
        let r = runtime::run_uac(&run, &opts, &mut |s, t| obs.observe(s, t))?;
        obs.finish()?;
        let s = Summary::new("uac", rate, opts.threads, &r);
        let p = r.stats.percentiles(Latency::InviteTo200);
        let pass = s.success_percent >= a.min_success && p.p99 <= a.max_p99_ms && s.achieved_cps >= 0.95 * rate;
        let step = Step {
            rate,
            achieved_cps: s.achieved_cps,
            calls: s.calls_attempted,
            success_percent: s.success_percent,
            p50_ms: p.p50,
            p99_ms: p.p99,
            cpu_us_per_call: s.cpu_us_per_call,
            pass,
        };
        if !a.common.json {
            println!(
                "{:>10.0} {:>10.0} {:>9} {:>9.3} {:>9.2} {:>9.2} {:>8.1}  {}",
                step.rate,
                step.achieved_cps,
                step.calls,
                step.success_percent,
                step.p50_ms,
                step.p99_ms,
                step.cpu_us_per_call,
                if pass { "pass" } else { "FAIL" }
            );
        }
        steps.push(step);
        // Let the target drain retransmissions of an overloaded step.
        std::thread::sleep(ms(a.pause));
        Ok(pass)
    };
    if !a.common.json {
        println!(
            "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}  result",
            "rate", "achieved", "calls", "success%", "p50 ms", "p99 ms", "cpu µs"
        );
    }
    let mut best: Option<f64> = None;
    let mut failed: Option<f64> = None;
    let mut rate = a.start;
    while rate <= a.max_rate && runtime::stop_requests() == 0 {
        if run_step(rate)? {
            best = Some(rate);
            rate += a.step;
        } else {
            failed = Some(rate);
            break;
        }
    }
    if let Some(mut hi) = failed {
        let mut lo = best.unwrap_or(0.0);
        for _ in 0..a.bisect {
            if runtime::stop_requests() > 0 {
                break;
            }
            let mid = ((lo + hi) / 2.0).round();
            if mid <= lo || mid >= hi {
                break;
            }
            if run_step(mid)? {
                lo = mid;
                best = Some(mid);
            } else {
                hi = mid;
            }
        }
    }
    if a.common.json {
        let out = serde_json::json!({
            "best_rate": best,
            "min_success_percent": a.min_success,
            "max_p99_ms": a.max_p99_ms,
            "steps": steps,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match best {
            Some(b) => println!(
                "highest passing rate: {b:.0} calls/s (success >= {} %, p99 INVITE->200 <= {} ms)",
                a.min_success, a.max_p99_ms
            ),
            None => println!("no step passed"),
        }
    }
    Ok(if best.is_some() { 0 } else { 1 })
}

fn floor(a: FloorArgs) -> Result<i32> {
    let f = sipload::floor::measure(secs(a.seconds, 0.1, 3600.0), a.size, a.window.max(1), !a.no_pin)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!(
            "udp floor: {} datagrams of {} bytes in {:.2} s, {:.3} s CPU: {:.2} µs per datagram (send + receive)",
            f.datagrams, f.size, f.seconds, f.cpu_s, f.cpu_us_per_datagram
        );
    }
    Ok(0)
}
