//! The `siplb` binary: command line, logging, signals.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIP load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit (status 1 on error).
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Call the admin API and print the result as JSON, e.g.
    /// `siplb ctl lb_status 1 0` or `siplb ctl lb_resize destination_id=1 res_name=pstn new_capacity=50`.
    Ctl {
        /// The command (`lb_list`, `lb_status`, `lb_resize`, `get_statistics`, `version`, `uptime`, `which`...).
        command: String,
        /// Its arguments: positional (`1 0`) or all named (`destination_id=1 new_status=0`).
        args: Vec<String>,
        /// The admin endpoint (default: `admin.listen` of --config, else http://127.0.0.1:8888/mi;
        /// env SIPLB_URL).
        #[arg(long)]
        url: Option<String>,
        /// Bearer token (default: `admin.token` of --config; env SIPLB_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
}

/// `siplb ctl`: prints the result, or the error on stderr (exit status 1).
fn ctl(
    config: Option<&std::path::Path>,
    command: &str,
    args: &[String],
    url: Option<String>,
    token: Option<String>,
) -> ! {
    let cfg = match config.map(siplb::config::Config::load) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("siplb: {e}");
            std::process::exit(1);
        }
        None => None,
    };
    let url = url
        .or_else(|| std::env::var("SIPLB_URL").ok())
        .or_else(|| {
            let a = cfg.as_ref()?.admin?;
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            Some(format!("http://{}/mi", std::net::SocketAddr::new(ip, a.port())))
        })
        .unwrap_or_else(|| "http://127.0.0.1:8888/mi".into());
    let token = token
        .or_else(|| std::env::var("SIPLB_TOKEN").ok())
        .or_else(|| cfg.as_ref()?.admin_token.clone());
    match siplb::ctl::call(&url, token.as_deref(), command, siplb::ctl::params(args)) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()));
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("siplb ctl {command}: {e}");
            std::process::exit(1);
        }
    }
}

/// Set by SIGINT/SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP: reload.
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        HANGUP.store(true, Ordering::Relaxed);
    } else {
        SIGNALLED.store(true, Ordering::Relaxed);
    }
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; sigaction is given a zeroed, valid struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Ctl {
        command,
        args,
        url,
        token,
    }) = &cli.command
    {
        ctl(cli.config.as_deref(), command, args, url.clone(), token.clone());
    }
    if let Some(Command::CheckConfig { file }) = &cli.command {
        match siplb::config::Config::load(file) {
            Ok(c) => {
                for s in &c.skipped {
                    println!("skipped: {s}");
                }
                println!(
                    "{}: ok ({} listen address(es), {} worker(s), {} destination(s), {} rule(s), {} row(s) skipped)",
                    file.display(),
                    c.listen.len(),
                    c.workers,
                    c.destinations.len(),
                    c.rules.len(),
                    c.skipped.len()
                );
                return Ok(());
            }
            Err(e) => {
                eprintln!("siplb: {e}");
                std::process::exit(1);
            }
        }
    }
    let path = cli
        .config
        .context("--config FILE is required (or: siplb check-config FILE)")?;
    let config = match siplb::config::Config::load(&path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("siplb: {e}");
            std::process::exit(1);
        }
    };
    let level = match cli.verbose {
        0 => config.log_level.clone(),
        1 => "debug".into(),
        _ => "trace".into(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    for s in &config.skipped {
        tracing::warn!(row = %s, "destination row skipped");
    }
    let started = std::time::Instant::now();
    install_signal_handlers();
    let live = Arc::new(siplb::reload::Live::new(config.clone(), Some(path.clone())));
    let runtime = siplb::runtime::Runtime::start_live(live.clone()).context("starting workers")?;
    let admin = match config.admin {
        Some(addr) => {
            let view = siplb::admin::View {
                table: live.table(),
                stats: runtime.stats.clone(),
                started,
                token: config.admin_token.clone(),
                live: Some(live.clone()),
                control: Some(runtime.controller()),
                ha: runtime.ha.clone(),
            };
            Some(siplb::admin::start(addr, view, runtime.stop_flag()).with_context(|| format!("admin API on {addr}"))?)
        }
        None => None,
    };
    // Drops are counted per datagram and reported here at most once per
    // 10 s, never logged per packet.
    let mut last_report = std::time::Instant::now();
    let mut seen = runtime.statistics();
    while !SIGNALLED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if HANGUP.swap(false, Ordering::Relaxed) {
            match live.reload() {
                Ok(r) => r.log("SIGHUP"),
                Err(e) => {
                    tracing::error!(signal = "SIGHUP", error = %e, "reload refused, the running configuration stays")
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = std::time::Instant::now();
            let now = runtime.statistics();
            let deltas: Vec<String> = now
                .iter()
                .zip(&seen)
                .filter(|((name, _), _)| {
                    name.starts_with("drop_") || matches!(*name, "bad_requests" | "table_full" | "unknown_dialogs")
                })
                .filter(|((_, v), (_, old))| v > old)
                .map(|((name, v), (_, old))| format!("{name}={}", v - old))
                .collect();
            if !deltas.is_empty() {
                tracing::warn!(last_10s = %deltas.join(" "), "datagrams dropped or refused");
            }
            seen = now;
        }
    }
    tracing::info!("stopping");
    let stop = runtime.stop_flag();
    let table = live.table();
    runtime.stop();
    stop.store(true, Ordering::Relaxed);
    if let Some(a) = admin {
        let _ = a.join();
    }
    tracing::info!(load_left = table.total_load(), "stopped");
    Ok(())
}
