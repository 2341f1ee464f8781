//! The io_uring socket edge: multishot `recvmsg` into provided buffers,
//! `sendmsg` per datagram, one ring per worker.
//!
//! Buffer ownership (the reason for the `unsafe` here):
//! - receive buffers live in one `Vec<u8>` per worker, cut into `count`
//!   slices of `size` bytes, lent to the kernel through a provided-buffer
//!   ring (group [`GROUP`], `IORING_REGISTER_PBUF_RING`). A completion
//!   names the slice it filled; the worker reads it, then lends it again by
//!   writing a ring entry and moving the ring's tail (no submission, no
//!   kernel allocation per datagram). The `Vec` and the ring's memory are
//!   never resized and outlive the ring (fields drop in declaration order:
//!   the ring first).
//! - the `msghdr` template of the multishot receives is boxed and lives as
//!   long as the ring.
//! - each send owns a boxed [`SendOp`] (payload, iovec, address, msghdr)
//!   kept in `sends` until its completion arrives, so every pointer handed
//!   to the kernel stays valid and unmoved. The boxes are reused: a
//!   completion drops the payload and frees the slot.
//!
//! When the kernel refuses io_uring (old kernel, seccomp, RLIMIT_MEMLOCK),
//! [`Uring::new`] fails and the runtime uses epoll.

use std::alloc::Layout;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::SockAddr;

/// The provided-buffer group id.
pub const GROUP: u16 = 7;

const KIND_SHIFT: u64 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;
const KIND_STREAM: u64 = 5;

/// One datagram being sent; everything the kernel reads from stays here.
struct SendOp {
    payload: Vec<u8>,
    addr: SockAddr,
    iov: libc::iovec,
    hdr: libc::msghdr,
}

/// The provided-buffer ring: entries the kernel takes receive buffers
/// from. Page-aligned memory of `mask + 1` entries; the kernel reads the
/// tail (kept in the first entry's reserved field) and the entries before
/// it.
struct BufRing {
    entries: NonNull<types::BufRingEntry>,
    layout: Layout,
    mask: u16,
    tail: u16,
}

impl BufRing {
    /// Room for `count` entries (rounded up to a power of two).
    fn new(count: u16) -> io::Result<BufRing> {
        let n = usize::from(count.max(1)).next_power_of_two();
        let mask = u16::try_from(n - 1).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let layout = Layout::from_size_align(n * std::mem::size_of::<types::BufRingEntry>(), 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let entries = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(BufRing {
            entries,
            layout,
            mask,
            tail: 0,
        })
    }

    /// Writes the entry after the tail; visible to the kernel after
    /// [`BufRing::publish`].
    fn push(&mut self, addr: *mut u8, len: usize, bid: u16) {
        let i = usize::from(self.tail & self.mask);
        // SAFETY: `i` <= mask, inside the allocation. The kernel only reads
        // entries before the published tail, and this one is at or after it.
        let entry = unsafe { &mut *self.entries.as_ptr().add(i) };
        entry.set_addr(addr as u64);
        entry.set_len(len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries available to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is a u16 inside the first entry, suitably
        // aligned; the kernel reads it with acquire semantics, so a release
        // store orders the entry writes before it.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The ring that used
        // it is closed by now (it is declared before this field in
        // `Uring`), and the kernel pins its own reference to the pages.
        unsafe { std::alloc::dealloc(self.entries.as_ptr().cast(), self.layout) }
    }
}

/// What a completion brought.
pub enum Event<'a> {
    /// A datagram arrived on socket `socket`.
    Datagram {
        /// Index of the socket (as passed to [`Uring::arm`]).
        socket: usize,
        /// Its source.
        src: SocketAddr,
        /// Its bytes.
        bytes: &'a [u8],
        /// Larger than the buffer: cut short.
        truncated: bool,
    },
    /// The wake-up eventfd fired.
    Wake,
    /// The stream connections' epoll descriptor is readable (see
    /// [`Uring::arm_streams`]).
    Streams,
}

/// A worker's ring.
pub struct Uring {
    ring: IoUring,
    buf_ring: BufRing,
    sockets: Vec<RawFd>,
    wake: RawFd,
    streams: RawFd,
    recv_hdr: Box<libc::msghdr>,
    bufs: Vec<u8>,
    size: usize,
    count: u16,
    // Boxed: growing the Vec must not move an op the kernel points into.
    #[allow(clippy::vec_box)]
    sends: Vec<Box<SendOp>>,
    /// Slots of `sends` whose send has completed.
    free_sends: Vec<usize>,
    /// Completions copied out of the queue: (user_data, result, flags).
    ready: Vec<(u64, i32, u32)>,
    /// Buffers to lend again once the completions that use them are handled.
    to_return: Vec<u16>,
    /// Multishot operations (receives, wake poll) the kernel still runs.
    armed: usize,
}

impl Uring {
    /// A ring with `count` receive buffers of `size` bytes.
    pub fn new(count: u16, size: usize) -> io::Result<Uring> {
        // One thread creates, submits to and reaps this ring, so the kernel
        // may defer completion work (task work) to the moment the worker
        // asks for completions: a datagram arriving while the worker runs
        // then costs no interrupt of the worker (no IPI, no forced return to
        // the kernel), and a sleeping worker is woken once for the batch.
        // Kernels before 6.1 refuse these flags: plain ring then.
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(1024)
        {
            Ok(ring) => ring,
            Err(_) => IoUring::builder().build(1024)?,
        };
        // SAFETY: an all-zero msghdr is valid; only the lengths matter for
        // multishot recvmsg (no iovec: the payload goes to the provided
        // buffer after the header and the name).
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        Ok(Uring {
            ring,
            buf_ring: BufRing::new(count)?,
            sockets: Vec::new(),
            wake: -1,
            streams: -1,
            recv_hdr: hdr,
            bufs: vec![0u8; size * usize::from(count)],
            size,
            count,
            sends: Vec::new(),
            free_sends: Vec::new(),
            ready: Vec::new(),
            to_return: Vec::new(),
            armed: 0,
        })
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points only at memory owned by
            // `self` (buffers, boxed headers, boxed send ops) that stays
            // valid until its completion, as the module docs explain.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Lends all buffers, arms a multishot receive on every socket and a
    /// multishot poll on the wake-up eventfd, and submits.
    pub fn arm(&mut self, sockets: &[RawFd], wake: RawFd) -> io::Result<()> {
        self.sockets = sockets.to_vec();
        self.wake = wake;
        // SAFETY: the ring memory is valid for its entries and lives as
        // long as the ring (see `BufRing`).
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                self.buf_ring.entries.as_ptr() as u64,
                self.buf_ring.mask + 1,
                GROUP,
                0,
            )?;
        }
        for bid in 0..self.count {
            self.lend(bid);
        }
        self.buf_ring.publish();
        for i in 0..self.sockets.len() {
            self.arm_recv(i)?;
        }
        self.arm_wake()?;
        // The first completions tell whether the kernel takes these
        // operations at all (EINVAL/EOPNOTSUPP on kernels without them);
        // anything else that completed is kept for `dispatch`.
        self.wait(Duration::from_millis(20))?;
        let mut refused = None;
        for &(ud, res, flags) in &self.ready {
            let kind = ud >> KIND_SHIFT;
            let terminal = !cqueue::more(flags);
            if terminal && (kind == KIND_RECV || kind == KIND_WAKE) && res < 0 && res != -libc::ENOBUFS {
                self.armed = self.armed.saturating_sub(1);
                refused = Some(res);
            }
        }
        match refused {
            Some(res) => {
                self.ready.clear();
                Err(io::Error::from_raw_os_error(-res))
            }
            None => Ok(()),
        }
    }

    fn arm_recv(&mut self, i: usize) -> io::Result<()> {
        let fd = self.sockets[i];
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr as *const libc::msghdr, GROUP)
            .build()
            .user_data(KIND_RECV << KIND_SHIFT | i as u64);
        self.armed += 1;
        self.push(e)
    }

    /// Watches the stream connections' epoll descriptor (multishot poll):
    /// TCP and TLS are readiness-driven, then plain reads and writes.
    pub fn arm_streams(&mut self, fd: RawFd) -> io::Result<()> {
        self.streams = fd;
        self.poll_streams()
    }

    fn poll_streams(&mut self) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(self.streams), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(KIND_STREAM << KIND_SHIFT);
        self.armed += 1;
        self.push(e)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(self.wake), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(KIND_WAKE << KIND_SHIFT);
        self.armed += 1;
        self.push(e)
    }

    /// Queues one datagram.
    pub fn send(&mut self, fd: RawFd, dst: SocketAddr, payload: Vec<u8>) -> io::Result<()> {
        let slot = match self.free_sends.pop() {
            Some(s) => s,
            None => {
                self.sends.push(Box::new(SendOp {
                    payload: Vec::new(),
                    addr: SockAddr::from(dst),
                    // SAFETY: all-zero iovec/msghdr are valid; filled below.
                    iov: unsafe { std::mem::zeroed() },
                    hdr: unsafe { std::mem::zeroed() },
                }));
                self.sends.len() - 1
            }
        };
        let op = &mut *self.sends[slot];
        op.payload = payload;
        op.addr = SockAddr::from(dst);
        op.iov.iov_base = op.payload.as_mut_ptr().cast();
        op.iov.iov_len = op.payload.len();
        op.hdr.msg_name = op.addr.as_ptr() as *mut libc::c_void;
        op.hdr.msg_namelen = op.addr.len();
        op.hdr.msg_iov = &mut op.iov;
        op.hdr.msg_iovlen = 1;
        let e = opcode::SendMsg::new(types::Fd(fd), &op.hdr as *const libc::msghdr)
            .build()
            .user_data(KIND_SEND << KIND_SHIFT | slot as u64);
        self.push(e)
    }

    /// Submits what is queued and waits for a completion or `timeout`;
    /// the completions are kept for [`Uring::dispatch`].
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.ready
            .extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        Ok(())
    }

    /// Handles the completions gathered by the last [`Uring::wait`]:
    /// receives go to `on_event`, finished sends are freed, multishot
    /// operations the kernel ended are armed again, buffers are lent again.
    pub fn dispatch(&mut self, mut on_event: impl FnMut(Event<'_>)) -> io::Result<u64> {
        let mut send_errors = 0;
        let ready = std::mem::take(&mut self.ready);
        for &(ud, res, flags) in &ready {
            let kind = ud >> KIND_SHIFT;
            let idx = (ud & ((1 << KIND_SHIFT) - 1)) as usize;
            match kind {
                KIND_RECV => {
                    // A receive the kernel cannot do at all (no multishot
                    // recvmsg, bad descriptor): give up on this path.
                    if res < 0 && !matches!(-res, libc::ENOBUFS | libc::EINTR | libc::EAGAIN | libc::ECONNREFUSED) {
                        if !cqueue::more(flags) {
                            self.armed = self.armed.saturating_sub(1);
                        }
                        self.ready.clear();
                        return Err(io::Error::from_raw_os_error(-res));
                    }
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if res >= 0 {
                            let start = usize::from(bid) * self.size;
                            let len = (res as usize).min(self.size);
                            let buf = &self.bufs[start..start + len];
                            if let Ok(out) = types::RecvMsgOut::parse(buf, &self.recv_hdr) {
                                if let Some(src) = sockaddr(out.name_data(), out.incoming_name_len()) {
                                    on_event(Event::Datagram {
                                        socket: idx,
                                        src,
                                        bytes: out.payload_data(),
                                        truncated: out.is_payload_truncated(),
                                    });
                                }
                            }
                        }
                        self.to_return.push(bid);
                    }
                    if !cqueue::more(flags) {
                        self.armed = self.armed.saturating_sub(1);
                        self.arm_recv(idx)?;
                    }
                }
                KIND_SEND => {
                    if res < 0 {
                        send_errors += 1;
                    }
                    if let Some(op) = self.sends.get_mut(idx) {
                        op.payload = Vec::new();
                        self.free_sends.push(idx);
                    }
                }
                KIND_WAKE => {
                    on_event(Event::Wake);
                    if !cqueue::more(flags) {
                        self.armed = self.armed.saturating_sub(1);
                        self.arm_wake()?;
                    }
                }
                KIND_STREAM => {
                    on_event(Event::Streams);
                    if !cqueue::more(flags) {
                        self.armed = self.armed.saturating_sub(1);
                        self.poll_streams()?;
                    }
                }
                _ => {}
            }
        }
        self.ready = ready;
        self.ready.clear();
        if !self.to_return.is_empty() {
            let returns = std::mem::take(&mut self.to_return);
            for &bid in &returns {
                self.lend(bid);
            }
            self.buf_ring.publish();
            self.to_return = returns;
            self.to_return.clear();
        }
        Ok(send_errors)
    }

    /// Puts receive buffer `bid` on the buffer ring (visible to the kernel
    /// after the next `publish`).
    fn lend(&mut self, bid: u16) {
        let start = usize::from(bid.min(self.count.saturating_sub(1))) * self.size;
        // SAFETY: `start` is inside `bufs` (the index is clamped below
        // count); the slice is the kernel's until a completion names it.
        let ptr = unsafe { self.bufs.as_mut_ptr().add(start) };
        self.buf_ring.push(ptr, self.size, bid);
    }
}

impl Drop for Uring {
    /// Cancels every operation and waits (bounded) until the kernel has
    /// finished with them, so no buffer or header is freed while the kernel
    /// may still write to it, and no stale receive keeps consuming
    /// datagrams from sockets that outlive the ring (the epoll fallback
    /// reuses them).
    fn drop(&mut self) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
            .build()
            .user_data(KIND_CANCEL << KIND_SHIFT);
        // SAFETY: the cancel entry points at no memory.
        if unsafe { self.ring.submission().push(&cancel) }.is_err() {
            let _ = self.ring.submit();
            // SAFETY: as above.
            let _ = unsafe { self.ring.submission().push(&cancel) };
        }
        let mut pending_sends = self.sends.len() - self.free_sends.len();
        for _ in 0..100 {
            if self.armed == 0 && pending_sends == 0 {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for c in self.ring.completion() {
                let kind = c.user_data() >> KIND_SHIFT;
                let terminal = !cqueue::more(c.flags());
                match kind {
                    KIND_RECV | KIND_WAKE | KIND_STREAM if terminal => self.armed = self.armed.saturating_sub(1),
                    KIND_SEND => pending_sends = pending_sends.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }
}

/// A socket address from raw sockaddr bytes.
fn sockaddr(name: &[u8], len: u32) -> Option<SocketAddr> {
    let len = (len as usize)
        .min(name.len())
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: all-zero sockaddr_storage is valid; we copy at most its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `len` bytes fit in both the source slice and the storage.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast(), len);
    }
    // SAFETY: storage holds `len` initialised bytes of a sockaddr.
    let addr = unsafe { SockAddr::new(storage, len as libc::socklen_t) };
    addr.as_socket()
}

/// Whether this kernel and process can use the io_uring path, checked
/// with a throw-away ring and socket on a throw-away thread (io_uring task
/// work left behind would otherwise interrupt the caller's next blocking
/// system call with EINTR).
pub fn available() -> io::Result<()> {
    std::thread::spawn(|| {
        use std::os::fd::AsRawFd;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let wake = super::udp::EventFd::new()?;
        let mut u = Uring::new(4, 2048)?;
        u.arm(&[sock.as_raw_fd()], wake.raw())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
}
