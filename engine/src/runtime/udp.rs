//! The socket edge: UDP sockets, epoll, eventfd, recvmmsg/sendmmsg.
//!
//! This is the only module with `unsafe`; each block says why it is sound.
//! Everything is Linux-only.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Binds a non-blocking UDP socket; `reuse_port` lets every worker bind
/// the same public address (the kernel spreads flows over them).
pub fn bind(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<UdpSocket> {
    bind_with(addr, reuse_port, buffer, false)
}

/// As [`bind`]; `freebind` (IP_FREEBIND) binds an address that is not
/// local yet, such as a virtual IP held by the other node of a pair.
pub fn bind_with(addr: SocketAddr, reuse_port: bool, buffer: usize, freebind: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if freebind {
        set_freebind(&s, addr)?;
    }
    // No SO_REUSEADDR: for UDP on Linux it lets a second process bind the
    // same port and steal half the traffic.
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A plain blocking UDP socket (the prober's); `freebind` as in [`bind_with`].
pub fn bind_blocking(addr: SocketAddr, freebind: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if freebind {
        set_freebind(&s, addr)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Fails when another socket (another siplb, say) already holds `addr`:
/// `SO_REUSEPORT` would otherwise let a second process share the port
/// silently.
pub fn check_free(addr: SocketAddr, freebind: bool) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if freebind {
        set_freebind(&s, addr)?;
    }
    s.bind(&addr.into())
}

pub(super) fn set_freebind(s: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv4() {
        s.set_freebind(true)
    } else {
        s.set_freebind_ipv6(true)
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is
        // checked and owned by OwnedFd from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for readability (level-triggered), tagged with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.add_events(fd, libc::EPOLLIN as u32, token)
    }

    /// Watches `fd` for `events` (level-triggered), tagged with `token`.
    pub fn add_events(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes the events watched on `fd`.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// The epoll descriptor itself (it can be watched in turn).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout`; returns the tokens that are ready.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `events` is valid writable memory for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// An eventfd used to wake a worker when its hand-off queue has work.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no memory preconditions; result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor, owned from here on.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the waiter.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wake-ups.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The descriptor, for epoll.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Buffers for receiving up to `n` datagrams with one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    /// `n` buffers of `size` bytes each.
    pub fn new(n: usize, size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all-zero bytes are a valid value.
            addrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovecs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Receives what is queued (up to the batch size) without blocking.
    /// Returns how many datagrams arrived (0 when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
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
        // SAFETY: every header points at a live iovec and sockaddr_storage
        // owned by `self`, and every iovec at a live buffer of the stated
        // length; none of them moves during the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // Nothing queued, or a signal.
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                // An ICMP error from an earlier send (a backend port that
                // is closed, a host unreachable): reported once, then
                // cleared. Not a reason to stop receiving.
                Some(libc::ECONNREFUSED)
                | Some(libc::EHOSTUNREACH)
                | Some(libc::ENETUNREACH)
                | Some(libc::EHOSTDOWN)
                | Some(libc::ENETDOWN) => Err(io::Error::new(io::ErrorKind::ConnectionRefused, e)),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// Datagram `i` of the last `recv`: bytes, source, and whether it was
    /// truncated (larger than the buffer).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, bool)> {
        let h = self.hdrs.get(i)?;
        let len = (h.msg_len as usize).min(self.bufs[i].len());
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        // SAFETY: the kernel filled addrs[i] with msg_namelen valid bytes;
        // SockAddr::new copies it.
        let addr = unsafe { SockAddr::new(self.addrs[i], h.msg_hdr.msg_namelen) };
        Some((&self.bufs[i][..len], addr.as_socket()?, truncated))
    }
}

/// Sends datagrams with one `sendmmsg` per 64. Returns how many were sent
/// (the rest hit a full socket buffer or an error and are dropped).
pub fn send_batch(fd: RawFd, items: &[(SocketAddr, &[u8])]) -> usize {
    let mut sent = 0;
    for chunk in items.chunks(64) {
        let addrs: Vec<SockAddr> = chunk.iter().map(|(a, _)| SockAddr::from(*a)).collect();
        let mut iovecs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, b)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|i| {
                // SAFETY: all-zero is a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = addrs[i].len();
                h.msg_hdr.msg_iov = &mut iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut off = 0;
        while off < hdrs.len() {
            // SAFETY: headers point at live addresses, iovecs and payload
            // slices borrowed for the duration of the call; the kernel only
            // reads them (and writes msg_len).
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[off..].as_mut_ptr(),
                    (hdrs.len() - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Skip the datagram that failed (full buffer, unreachable).
                off += 1;
                continue;
            }
            off += r as usize;
            sent += r as usize;
        }
    }
    sent
}
