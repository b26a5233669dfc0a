//! pidfd_open and pidfd_getfd: take a duplicate of another task's file
//! descriptor (to inspect a pipe or socket, or to hand an fd to a task).

use crate::{Errno, Pid, SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// pidfd_open(pid, flags) (flags: 0 or PIDFD_NONBLOCK, which is O_NONBLOCK).
pub fn pidfd_open_flags(pid: Pid, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if r < 0 {
        return Err(SysError::last("pidfd_open", pid));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

pub fn pidfd_open(pid: Pid) -> SysResult<OwnedFd> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(SysError::last("pidfd_open", pid));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Duplicate fd `target_fd` of the process behind `pidfd` into our table.
pub fn pidfd_getfd(pidfd: &OwnedFd, pid: Pid, target_fd: i32) -> SysResult<OwnedFd> {
    // SAFETY: no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if r < 0 {
        return Err(SysError::new(format!("pidfd_getfd(fd {target_fd})"), pid, Errno::last()));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Copy up to `len` bytes queued in a pipe without consuming them (tee into a
/// fresh pipe, then read that). Returns the bytes.
pub fn peek_pipe(pipe_read_end: &OwnedFd, pid: Pid) -> SysResult<Vec<u8>> {
    let (r, w) = crate::util::pipe()?;
    // Let the side pipe hold as much as a pipe can (1 MiB default max).
    // SAFETY: fcntl with integer args on an fd we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: tee with two pipe fds and no memory arguments.
    let n = unsafe { libc::tee(pipe_read_end.as_raw_fd(), w.as_raw_fd(), usize::MAX >> 1, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        let e = Errno::last();
        if e.0 == libc::EAGAIN {
            return Ok(Vec::new());
        }
        return Err(SysError::new("tee (pipe contents)", pid, e));
    }
    let mut out = vec![0u8; n as usize];
    drop(w);
    crate::util::read_fd_exact(r.as_raw_fd(), &mut out)?;
    Ok(out)
}

/// Capacity of a pipe (F_GETPIPE_SZ).
pub fn pipe_capacity(fd: &OwnedFd) -> i32 {
    // SAFETY: fcntl with integer args.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }
}

/// Set a pipe's capacity (F_SETPIPE_SZ); errors are ignored (best effort).
pub fn set_pipe_capacity(fd: &OwnedFd, size: i32) {
    // SAFETY: fcntl with integer args.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
}

/// Send signal `sig` to the process a pidfd names (no PID-reuse race).
pub fn send_signal(pidfd: BorrowedFd, sig: i32) -> SysResult<()> {
    let s = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| SysError::new(format!("pidfd_send_signal({sig})"), 0, Errno(libc::EINVAL)))?;
    rustix::process::pidfd_send_signal(pidfd, s)
        .map_err(|e| SysError::new(format!("pidfd_send_signal({sig})"), 0, Errno(e.raw_os_error())))
}
