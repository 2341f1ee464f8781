//! The prober thread: one UDP socket of its own (never a worker's data
//! path) around the sans-IO [`Prober`], applying each probe's result to the
//! destination's status ([`DestState::probe_result`]).
//!
//! It reads the destination table through a closure at every turn, so a
//! reload that swaps the table is picked up: the target list is rebuilt
//! when the destinations differ, and results are applied to the
//! destination with the probed id *and* address only.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Probing;
use crate::lb::{DestState, Table};
use crate::probe::{Prober, Settings, Target};

/// Starts the prober thread on `socket` (bound by the caller, so that a
/// bind failure comes before any thread starts). Returns the address
/// named in the probes' Via (the socket's; with `fallback_ip` instead of
/// an unspecified IP such as 0.0.0.0) and the thread.
pub fn start(
    socket: UdpSocket,
    fallback_ip: IpAddr,
    settings: Settings,
    probing: Probing,
    table: impl Fn() -> Arc<Table> + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let mut local = socket.local_addr()?;
    if local.ip().is_unspecified() {
        local.set_ip(fallback_ip);
    }
    let seed = u64::from(super::epoch());
    let handle = std::thread::Builder::new().name("siplb-prober".into()).spawn(move || {
        let mut prober = Prober::new(settings, local, Instant::now(), seed);
        let mut buf = vec![0u8; 65_536];
        let mut current: Option<Arc<Table>> = None;
        while !stop.load(Ordering::Relaxed) {
            let t = table();
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &t)) {
                prober.set_targets(targets(&t));
                current = Some(t.clone());
            }
            let now = Instant::now();
            if prober.poll_timeout() <= now {
                prober.handle_timeout(now, &mut |target| {
                    find(&t, target.id, target.addr).is_some_and(|d| d.wants_probe())
                });
            }
            while let Some((dst, bytes)) = prober.poll_transmit() {
                if let Err(e) = socket.send_to(&bytes, dst) {
                    tracing::debug!(%dst, error = %e, "probe not sent");
                }
            }
            while let Some(r) = prober.poll_event() {
                let Some(d) = find(&t, r.id, r.addr) else { continue };
                let (down, up) = probing.thresholds(&d.config);
                tracing::debug!(id = r.id, uri = %d.config.uri, result = ?r.result, "probe");
                d.probe_result(r.result, down, up, Instant::now());
            }
            let wait = prober
                .poll_timeout()
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            let _ = socket.set_read_timeout(Some(wait));
            // Errors are timeouts, and ICMP errors for earlier probes (the
            // probe then times out, which is the failure we count).
            if let Ok((n, src)) = socket.recv_from(&mut buf) {
                prober.handle_datagram(Instant::now(), src, &buf[..n]);
            }
        }
    })?;
    tracing::info!(%local, "prober running");
    Ok((local, handle))
}

fn targets(t: &Table) -> Vec<Target> {
    t.configured()
        .filter(|(_, d)| d.config.probe_mode != 0)
        .map(|(_, d)| Target {
            id: d.config.id,
            addr: d.addr(),
            uri: d.config.uri.clone(),
        })
        .collect()
}

fn find(t: &Table, id: u32, addr: SocketAddr) -> Option<&DestState> {
    t.configured()
        .map(|(_, d)| d)
        .find(|d| d.config.id == id && d.addr() == addr)
}
