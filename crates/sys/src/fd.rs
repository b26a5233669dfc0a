//! Descriptors of our own table: copies at a chosen number (a forked stub
//! fills its table by number before it becomes a restored task), closing,
//! close-on-exec and status flags, offsets and data segments, and whether
//! two descriptors of two processes share one open file description.
//!
//! A descriptor we hold is an `OwnedFd` or a `BorrowedFd`. A number that is
//! itself the subject — a slot of some task's table: where a restored task
//! expects a file, a stub's staging slot, an fd named to an injected call —
//! is a [`TargetFd`], so that the two are never confused.

use crate::{Pid, SysError, SysResult};
use rustix::fs::SeekFrom;
use rustix::io::FdFlags;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// A descriptor number as a slot of a task's table. Holding one owns and
/// borrows nothing: the calls that take one say whose table it names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetFd(pub i32);

impl TargetFd {
    /// The slot `fd` occupies in our table, which is also its number in a
    /// process forked after it was opened.
    pub fn of(fd: impl AsFd) -> TargetFd {
        TargetFd(fd.as_fd().as_raw_fd())
    }

    /// The number, for a syscall argument (e.g. an injected `close`).
    pub fn raw(self) -> i32 {
        self.0
    }
}

/// Shown as the bare number, in messages and in `{:?}` of the plans that
/// hold one.
impl fmt::Display for TargetFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TargetFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Put a copy of `src` at number `at` of our own table (dup3), replacing
/// whatever was there; if `src` already is `at`, only its close-on-exec
/// flag is set. For a process that lays out its table by number (a forked
/// stub): no handle of ours owns the copy.
pub fn dup_to(src: impl AsFd, at: TargetFd, cloexec: bool) -> SysResult<()> {
    let old = src.as_fd().as_raw_fd();
    if old == at.0 {
        return set_cloexec(src, cloexec);
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // rustix's dup2/dup3 want the target as an OwnedFd; a slot that nothing
    // of ours owns (the point of a stub's layout) has none. SAFETY: dup3
    // takes no memory arguments; `src` is open for the call.
    if unsafe { libc::dup3(old, at.0, flags) } < 0 {
        return Err(SysError::last(format!("dup3({old}, {at})"), 0));
    }
    Ok(())
}

/// Put `fd` at number `at` (close-on-exec as asked), closing the original;
/// if it already is `at`, it is simply kept there (dropping it would close
/// the very number it was meant for).
pub fn place(fd: OwnedFd, at: TargetFd, cloexec: bool) -> SysResult<()> {
    dup_to(&fd, at, cloexec)?;
    if fd.as_raw_fd() == at.0 {
        let _ = fd.into_raw_fd();
    }
    Ok(())
}

/// Move `fd` to number `at` (close-on-exec as asked) and return the
/// handle that owns it there. `at` must be a slot no handle of ours owns
/// (a stub's staging numbers lie above every number the restorer used):
/// what was there is replaced.
pub fn move_to(fd: OwnedFd, at: TargetFd, cloexec: bool) -> SysResult<OwnedFd> {
    if fd.as_raw_fd() == at.0 {
        set_cloexec(&fd, cloexec)?;
        return Ok(fd);
    }
    dup_to(&fd, at, cloexec)?;
    drop(fd);
    // SAFETY: dup3 just made `at` a new descriptor, which no handle of
    // ours owns (the caller's promise above); this one takes it.
    Ok(unsafe { OwnedFd::from_raw_fd(at.0) })
}

/// Close number `at` of our own table, ignoring errors. For a process that
/// keeps files at known numbers without handles (a stub closing the
/// restorer's descriptors it inherited): a handle of ours to that number
/// must not be used afterwards.
pub fn close_at(at: TargetFd) {
    // SAFETY: close has no memory arguments; the slot is the caller's to
    // close (see above).
    unsafe { libc::close(at.0) };
}

/// Close every fd of the calling process not listed in `keep`.
pub fn close_all_but(keep: &[TargetFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|f| f.0 >= 0).map(|f| f.0 as u32).collect();
    keep.sort_unstable();
    let mut lo = 0u32;
    for k in keep {
        if k > lo {
            // SAFETY: close_range (which rustix lacks) has no memory
            // arguments and only closes fds of the calling process.
            unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0) };
        }
        lo = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
}

/// Set or clear FD_CLOEXEC.
pub fn set_cloexec(fd: impl AsFd, on: bool) -> SysResult<()> {
    let fd = fd.as_fd();
    let flags = if on { FdFlags::CLOEXEC } else { FdFlags::empty() };
    rustix::io::fcntl_setfd(fd, flags)
        .map_err(|e| SysError::new(format!("fcntl(F_SETFD) on fd {}", fd.as_raw_fd()), 0, e.into()))
}

/// Duplicate `fd` to the lowest free number >= `min`, close-on-exec.
pub fn dup_at_least(fd: impl AsFd, min: i32) -> SysResult<OwnedFd> {
    let fd = fd.as_fd();
    rustix::io::fcntl_dupfd_cloexec(fd, min)
        .map_err(|e| SysError::new(format!("fcntl(F_DUPFD) of fd {}", fd.as_raw_fd()), 0, e.into()))
}

/// Move `fd` to a number at least `min` (the old number is closed): keeps
/// low numbers free, and leaves no second copy behind to be inherited.
pub fn move_at_least(fd: OwnedFd, min: i32) -> SysResult<OwnedFd> {
    dup_at_least(&fd, min)
}

/// Set an fd's status flags (O_NONBLOCK, O_APPEND, ...).
pub fn set_status_flags(fd: impl AsFd, flags: i32) -> SysResult<()> {
    let fd = fd.as_fd();
    rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::from_bits_retain(flags as u32))
        .map_err(|e| SysError::new(format!("fcntl(F_SETFL) on fd {}", fd.as_raw_fd()), 0, e.into()))
}

/// lseek(fd, pos, SEEK_SET).
pub fn seek_to(fd: impl AsFd, pos: u64) -> SysResult<()> {
    let fd = fd.as_fd();
    rustix::fs::seek(fd, SeekFrom::Start(pos))
        .map(|_| ())
        .map_err(|e| SysError::new(format!("lseek on fd {}", fd.as_raw_fd()), 0, e.into()))
}

/// Allocated (data) segments of a file, by SEEK_DATA/SEEK_HOLE, in [0, size).
pub fn data_segments(fd: impl AsFd, size: u64) -> Vec<(u64, u64)> {
    let fd = fd.as_fd();
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let Ok(d) = rustix::fs::seek(fd, SeekFrom::Data(off)) else { break };
        let h = rustix::fs::seek(fd, SeekFrom::Hole(d)).map_or(size, |h| h.min(size));
        if h <= d {
            break;
        }
        out.push((d & !4095, h.div_ceil(4096) * 4096));
        off = h;
    }
    out
}

/// The highest descriptor number open in the calling process.
pub fn highest_open_fd() -> TargetFd {
    let n = std::fs::read_dir("/proc/self/fd")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).max().unwrap_or(2))
        .unwrap_or(2);
    TargetFd(n)
}

/// kcmp(KCMP_FILE): do fd `fd1` of `pid1` and fd `fd2` of `pid2` share one
/// open file description?
pub fn same_open_file(pid1: Pid, fd1: TargetFd, pid2: Pid, fd2: TargetFd) -> SysResult<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp (which rustix lacks) with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1.0 as u64, fd2.0 as u64) };
    if r < 0 {
        return Err(SysError::last("kcmp(KCMP_FILE)", pid1));
    }
    Ok(r == 0)
}
