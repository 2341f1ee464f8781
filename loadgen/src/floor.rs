//! The physical limit: CPU per UDP datagram of a bare
//! `recvmmsg`/`sendmmsg` ping-pong between two pinned threads on loopback,
//! with the same socket code the load generator uses. A SIP call costs at
//! least (datagrams per call) × this figure, whatever the generator does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::net::{self, Socket};
use crate::sip::Outbox;

/// The measured floor.
#[derive(Debug, Serialize)]
pub struct Floor {
    /// Datagrams delivered (each one sent once and received once).
    pub datagrams: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// CPU (user + system) of both threads, in seconds.
    pub cpu_s: f64,
    /// CPU per datagram sent and received, in microseconds.
    pub cpu_us_per_datagram: f64,
    /// Datagram size in bytes.
    pub size: usize,
}

fn side(
    mut sock: Socket,
    peer: SocketAddr,
    payload: &[u8],
    initial: usize,
    stop: &AtomicBool,
    core: Option<usize>,
) -> (u64, Duration) {
    if let Some(c) = core {
        if let Some(ids) = core_affinity::get_core_ids() {
            if let Some(id) = ids.get(c % ids.len().max(1)) {
                core_affinity::set_for_current(*id);
            }
        }
    }
    let cpu0 = net::thread_cpu_time();
    let mut out = Outbox::default();
    for _ in 0..initial {
        out.push(peer, payload);
    }
    sock.send_all(&out);
    out.clear();
    let mut received = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = sock.recv_batch().unwrap_or_default();
        if n == 0 {
            sock.wait(Duration::from_millis(20));
            continue;
        }
        received += n as u64;
        for i in 0..n {
            if let Some((src, data)) = sock.datagram(i) {
                out.push(src, data);
            }
        }
        sock.send_all(&out);
        out.clear();
    }
    (received, net::thread_cpu_time().saturating_sub(cpu0))
}

/// Runs the ping-pong for `duration` with `window` datagrams of `size`
/// bytes in flight.
pub fn measure(duration: Duration, size: usize, window: usize, pin: bool) -> std::io::Result<Floor> {
    let a = Socket::bind("127.0.0.1:0".parse().expect("literal"), false)?;
    let b = Socket::bind("127.0.0.1:0".parse().expect("literal"), false)?;
    let (aa, ba) = (a.local_addr()?, b.local_addr()?);
    let payload = vec![b'x'; size.clamp(1, net::MAX_DATAGRAM)];
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let ((ra, ca), (rb, cb)) = std::thread::scope(|s| {
        let hb = s.spawn(|| side(b, aa, &payload, 0, &stop, pin.then_some(1)));
        let ha = s.spawn(|| side(a, ba, &payload, window, &stop, pin.then_some(0)));
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        (ha.join().unwrap_or_default(), hb.join().unwrap_or_default())
    });
    let datagrams = ra + rb;
    let cpu = ca + cb;
    Ok(Floor {
        datagrams,
        seconds: start.elapsed().as_secs_f64(),
        cpu_s: cpu.as_secs_f64(),
        cpu_us_per_datagram: if datagrams == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / datagrams as f64
        },
        size,
    })
}
