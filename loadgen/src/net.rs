//! Batched UDP I/O: `recvmmsg`/`sendmmsg` over one socket, and `ppoll`
//! waits with nanosecond timeouts.
//!
//! Apart from the signal handler installed by [`crate::runtime`], this is
//! the only module with `unsafe`: each block is a libc call whose pointer
//! arguments point into buffers owned by [`Socket`] (or by the caller's
//! [`Outbox`]) that outlive the call. The sans-IO modules are
//! `#![forbid(unsafe_code)]`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket as RawSocket, Type};

use crate::sip::Outbox;

/// Datagrams read per `recvmmsg` call.
pub const BATCH: usize = 64;
/// Largest datagram accepted; longer ones arrive truncated and are counted
/// as malformed by the state machines.
pub const MAX_DATAGRAM: usize = 8192;

/// A UDP socket with receive batch buffers.
pub struct Socket {
    sock: UdpSocket,
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    send_addrs: Vec<SockAddr>,
    send_iovecs: Vec<libc::iovec>,
    send_hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec scratch arrays only
// ever point into buffers owned by the same `Socket` (or into an `Outbox`
// borrowed for one call) and are rewritten before every system call, so
// moving the socket to another thread moves everything they refer to.
unsafe impl Send for Socket {}

impl Socket {
    /// Binds `addr` with 4 MiB buffers (or what `rmem_max` allows);
    /// `reuse_port` lets several sockets share the port (SO_REUSEPORT).
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
        let raw = RawSocket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if reuse_port {
            raw.set_reuse_port(true)?;
        }
        let _ = raw.set_recv_buffer_size(4 << 20);
        let _ = raw.set_send_buffer_size(4 << 20);
        raw.bind(&addr.into())?;
        let sock: UdpSocket = raw.into();
        // SAFETY: all-zero bytes are valid values of these plain C structs.
        let zero_storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Ok(Socket {
            sock,
            bufs: vec![0; BATCH * MAX_DATAGRAM],
            lens: [0; BATCH],
            addrs: vec![zero_storage; BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            hdrs: vec![zero_hdr; BATCH],
            send_addrs: Vec::with_capacity(BATCH),
            send_iovecs: Vec::with_capacity(BATCH),
            send_hdrs: Vec::with_capacity(BATCH),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits until the socket is readable or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pfd` and `ts` are valid for the duration of the call;
        // a null signal mask means "leave it unchanged".
        unsafe {
            libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
        }
    }

    /// Reads up to [`BATCH`] datagrams without blocking; returns how many.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at an iovec, a buffer of MAX_DATAGRAM
        // bytes and a sockaddr_storage owned by `self`, all alive and not
        // otherwise borrowed during the call.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
        }
        Ok(n)
    }

    /// The `i`-th datagram of the last batch (`None` for an address family
    /// we do not speak).
    pub fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let len = *self.lens.get(i)?;
        let storage = self.addrs.get(i)?;
        let namelen = self.hdrs.get(i)?.msg_hdr.msg_namelen;
        // SAFETY: the kernel filled `storage` with a socket address of
        // `namelen` bytes; SockAddr copies it.
        let addr = unsafe { SockAddr::new(*storage, namelen) };
        let addr = addr.as_socket()?;
        Some((addr, &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len]))
    }

    /// Sends everything in `out` (in `sendmmsg` batches) and returns
    /// (sent, failed). Blocks while the send buffer is full.
    pub fn send_all(&mut self, out: &Outbox) -> (u64, u64) {
        let (mut sent, mut failed) = (0u64, 0u64);
        let total = out.len();
        let mut i = 0;
        while i < total {
            let end = (i + BATCH).min(total);
            self.send_addrs.clear();
            self.send_iovecs.clear();
            self.send_hdrs.clear();
            for j in i..end {
                if let Some((dst, bytes)) = out.get(j) {
                    self.send_addrs.push(SockAddr::from(dst));
                    self.send_iovecs.push(libc::iovec {
                        iov_base: bytes.as_ptr() as *mut libc::c_void,
                        iov_len: bytes.len(),
                    });
                }
            }
            for k in 0..self.send_iovecs.len() {
                // SAFETY: all-zero is a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = self.send_addrs[k].as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = self.send_addrs[k].len();
                h.msg_hdr.msg_iov = &mut self.send_iovecs[k];
                h.msg_hdr.msg_iovlen = 1;
                self.send_hdrs.push(h);
            }
            let mut k = 0;
            while k < self.send_hdrs.len() {
                // SAFETY: headers point at addresses and iovecs in `self`
                // and at bytes borrowed from `out`, all alive during the
                // call; the kernel only reads them.
                let n = unsafe {
                    libc::sendmmsg(
                        self.sock.as_raw_fd(),
                        self.send_hdrs[k..].as_mut_ptr(),
                        (self.send_hdrs.len() - k) as libc::c_uint,
                        0,
                    )
                };
                if n > 0 {
                    sent += n as u64;
                    k += n as usize;
                } else {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Skip the datagram the kernel refused.
                    failed += 1;
                    k += 1;
                }
            }
            i = end;
        }
        (sent, failed)
    }
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu_time() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of the whole process.
pub fn process_cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
