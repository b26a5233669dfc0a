//! userfaultfd write-protect, driven from outside the task that owns the
//! memory: the uffd is created inside the task (an injected syscall), taken
//! with `pidfd_getfd`, and from then on every ioctl and read is ours. Used
//! in *sync* mode: a task's first write to a protected page waits until we
//! un-protect it, which is what lets a running checkpoint copy the page
//! first. Only the raw calls live here; the policy is the engine's `cow`.
//!
//! The installed headers are 6.1: the constants are written out here
//! (they have been stable since 5.19).

use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `userfaultfd(2)`'s number on x86_64, for injection.
pub const NR_USERFAULTFD: i64 = 323;

const UFFD_API: u64 = 0xAA;
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Write-protect for shmem (shared anonymous memory, memfd) and hugetlbfs.
pub const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Write-protecting unpopulated pages protects them too (their first
/// write is seen).
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// A write to a protected page un-protects it at once, in the kernel,
/// with no message: what the pages scan then reports as written.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// A page no process maps (below mmap_min_addr), for [`Uffd::event_pending`].
const PROBE_PAGE: u64 = 0x1000;

/// `_IOWR(0xAA, nr, size)`.
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, 24);
const UFFDIO_COPY: u64 = iowr(0x03, 40);
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, 32);
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x02;

#[repr(C)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct RegisterArg {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct WriteProtectArg {
    start: u64,
    len: u64,
    mode: u64,
}

#[repr(C)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negative errno.
    copy: i64,
}

#[repr(C)]
struct ZeroPageArg {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// How far a fill ([`Uffd::copy`], [`Uffd::zeropage`]) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// All of it.
    All,
    /// This many bytes, then a page that was there already (EEXIST).
    UpToPresent(u64),
    /// An event waits to be read first (EAGAIN): try again after it.
    Retry(u64),
    /// The range is no longer mapped, or the address space is gone
    /// (ENOENT, ESRCH): nothing to fill there.
    Gone,
}

/// `struct uffd_msg`: 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawMsg {
    event: u8,
    _r1: u8,
    _r2: u16,
    _r3: u32,
    arg: [u64; 3],
}

/// What a uffd reports.
#[derive(Debug)]
pub enum Msg {
    /// A write to a write-protected page (the writer waits); `wp` false for
    /// any other fault (none are expected: only WP is registered).
    Fault {
        addr: u64,
        wp: bool,
    },
    /// The task forked: the child's uffd (registration inherited).
    Fork(OwnedFd),
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// `madvise(DONTNEED/REMOVE)` on `[start, end)`: the task waits until
    /// this message is read, then the pages are dropped.
    Remove {
        start: u64,
        end: u64,
    },
    /// `munmap` (or a mapping over) `[start, end)`: already gone.
    Unmap {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// A userfaultfd of some task's address space.
pub struct Uffd(OwnedFd);

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn ioctl<T>(fd: BorrowedFd, req: u64, arg: &mut T, what: &'static str) -> SysResult<()> {
    // SAFETY: `arg` is a live, exclusively borrowed repr(C) struct of the
    // size the request number encodes; the kernel reads and writes only it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(())
}

impl Uffd {
    /// A uffd of our own address space (to probe what the kernel offers).
    pub fn own() -> SysResult<Uffd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: userfaultfd(2) takes flags and returns a new descriptor.
        let fd = unsafe { libc::syscall(NR_USERFAULTFD, flags) };
        if fd < 0 {
            return Err(SysError::last("userfaultfd", 0));
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here.
        Ok(Uffd(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }))
    }

    /// Take a uffd (as returned by `pidfd_getfd`).
    pub fn from_fd(fd: OwnedFd) -> Uffd {
        Uffd(fd)
    }

    /// The descriptor (to hand it to another process).
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    /// UFFDIO_API asking for `features`; returns the features granted.
    pub fn api(&self, features: u64) -> SysResult<u64> {
        let mut a = ApiArg { api: UFFD_API, features, ioctls: 0 };
        ioctl(self.0.as_fd(), UFFDIO_API, &mut a, "UFFDIO_API")?;
        Ok(a.features)
    }

    /// Register `[start, start+len)` (whole areas) for missing-page faults:
    /// a page not there yet waits, on access, until it is filled.
    pub fn register_missing(&self, start: u64, len: u64) -> SysResult<()> {
        let mut a = RegisterArg { start, len, mode: REGISTER_MODE_MISSING, ioctls: 0 };
        ioctl(self.0.as_fd(), UFFDIO_REGISTER, &mut a, "UFFDIO_REGISTER")
    }

    /// Fill the missing pages at `dst` with `src` (whole pages) and wake
    /// the tasks waiting on them.
    pub fn copy(&self, dst: u64, src: &[u8]) -> SysResult<Filled> {
        let mut a = CopyArg { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
        // SAFETY: `a` is the repr(C) uffdio_copy; the kernel reads `len`
        // bytes from `src`, a live slice of that length.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_COPY as libc::c_ulong, &mut a as *mut CopyArg) };
        Self::filled(r, a.copy, "UFFDIO_COPY")
    }

    /// Map the zero page at the missing pages of `[start, start+len)`.
    pub fn zeropage(&self, start: u64, len: u64) -> SysResult<Filled> {
        let mut a = ZeroPageArg { start, len, mode: 0, zeropage: 0 };
        let r =
            // SAFETY: `a` is the repr(C) uffdio_zeropage the request names.
            unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_ZEROPAGE as libc::c_ulong, &mut a as *mut ZeroPageArg) };
        Self::filled(r, a.zeropage, "UFFDIO_ZEROPAGE")
    }

    fn filled(r: i32, done: i64, what: &'static str) -> SysResult<Filled> {
        if r == 0 {
            return Ok(Filled::All);
        }
        let e = Errno::last();
        let done = u64::try_from(done).unwrap_or(0);
        match e.0 {
            libc::EEXIST => Ok(Filled::UpToPresent(done)),
            libc::EAGAIN => Ok(Filled::Retry(done)),
            libc::ENOENT | libc::ESRCH => Ok(Filled::Gone),
            _ => Err(SysError::new(what, 0, e)),
        }
    }

    /// Register `[start, start+len)` (whole areas) for write-protect faults.
    pub fn register_wp(&self, start: u64, len: u64) -> SysResult<()> {
        let mut a = RegisterArg { start, len, mode: REGISTER_MODE_WP, ioctls: 0 };
        ioctl(self.0.as_fd(), UFFDIO_REGISTER, &mut a, "UFFDIO_REGISTER")
    }

    /// Write-protect (`protect`) or un-protect a range; un-protecting wakes
    /// the tasks waiting on it. EAGAIN while an event is not yet read.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> SysResult<()> {
        let mode = if protect { WRITEPROTECT_MODE_WP } else { 0 };
        let mut a = WriteProtectArg { start, len, mode };
        ioctl(self.0.as_fd(), UFFDIO_WRITEPROTECT, &mut a, "UFFDIO_WRITEPROTECT")
    }

    /// Wake the tasks waiting on faults in a range (without changing it).
    pub fn wake(&self, start: u64, len: u64) -> SysResult<()> {
        let mut a = [start, len];
        ioctl(self.0.as_fd(), UFFDIO_WAKE, &mut a, "UFFDIO_WAKE")
    }

    /// Does an event wait to be read? A write-protect call on a page no
    /// area covers fails with EAGAIN then, and has no effect otherwise:
    /// every change of the address space that the kernel announces
    /// (unmap, remap, remove, fork) marks the uffd from before it starts
    /// until its message is read. Err: the address space is gone.
    pub fn event_pending(&self) -> SysResult<bool> {
        match self.write_protect(PROBE_PAGE, 4096, true) {
            Err(e) if e.errno.0 == libc::EAGAIN => Ok(true),
            Err(e) if e.errno.0 == libc::ESRCH => Err(e),
            _ => Ok(false),
        }
    }

    /// Read the messages waiting (the fd is non-blocking): appended to `out`.
    pub fn read_msgs(&self, out: &mut Vec<Msg>) -> SysResult<()> {
        let mut buf = [RawMsg::default(); 16];
        loop {
            let bytes = std::mem::size_of_val(&buf);
            // SAFETY: reads at most `bytes` into our own array of plain
            // repr(C) integers (any bit pattern is valid).
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
            if n < 0 {
                let e = Errno::last();
                if e.0 == libc::EAGAIN {
                    return Ok(());
                }
                if e.0 == libc::EINTR {
                    continue;
                }
                return Err(SysError::new("read userfaultfd", 0, e));
            }
            let got = n as usize / std::mem::size_of::<RawMsg>();
            for m in &buf[..got] {
                out.push(match m.event {
                    EVENT_PAGEFAULT => Msg::Fault { addr: m.arg[1], wp: m.arg[0] & PAGEFAULT_FLAG_WP != 0 },
                    EVENT_FORK => {
                        let raw = m.arg[0] as u32 as i32;
                        // SAFETY: a fork event installs a new uffd in our
                        // table at this number; it is ours to own from here.
                        Msg::Fork(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
                    }
                    EVENT_REMAP => Msg::Remap { from: m.arg[0], to: m.arg[1], len: m.arg[2] },
                    EVENT_REMOVE => Msg::Remove { start: m.arg[0], end: m.arg[1] },
                    EVENT_UNMAP => Msg::Unmap { start: m.arg[0], end: m.arg[1] },
                    e => Msg::Other(e),
                });
            }
            if got < buf.len() {
                return Ok(());
            }
        }
    }
}

/// Wait until one of `fds` is readable or `timeout_ms` passes; returns the
/// indexes of the readable ones (hang-up and errors count as readable).
pub fn poll_readable(fds: &[BorrowedFd], timeout_ms: i32) -> SysResult<Vec<usize>> {
    use rustix::event::{PollFd, PollFlags};
    let mut p: Vec<PollFd> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    let ts = rustix::event::Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    };
    match rustix::event::poll(&mut p, Some(&ts)) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
        Err(e) => return Err(SysError::new("poll userfaultfds", 0, e.into())),
    }
    Ok(p.iter().enumerate().filter(|(_, f)| !f.revents().is_empty()).map(|(i, _)| i).collect())
}
