//! pidfds: open one for a process, take a duplicate of another task's file
//! descriptor (to inspect a pipe or socket, or to hand an fd to a task),
//! and signal the process a pidfd names.

use crate::fd::TargetFd;
use crate::{Errno, Pid, SysError, SysResult};
use rustix::process::{PidfdFlags, PidfdGetfdFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// pidfd_open(pid, flags) (flags: 0 or PIDFD_NONBLOCK, which is O_NONBLOCK).
pub fn pidfd_open_flags(pid: Pid, flags: i32) -> SysResult<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| SysError::new("pidfd_open", pid, Errno(libc::EINVAL)))?;
    rustix::process::pidfd_open(p, PidfdFlags::from_bits_retain(flags as u32))
        .map_err(|e| SysError::new("pidfd_open", pid, e.into()))
}

/// A pidfd of a process that has ended: of a child made for it, which
/// exits at once and is reaped (its number is used up meanwhile).
pub fn ended_pidfd(flags: i32) -> SysResult<OwnedFd> {
    match crate::clone::fork_with(0, 0)? {
        crate::clone::Forked::Child => crate::process::exit_now(0),
        crate::clone::Forked::Parent(child) => {
            let fd = pidfd_open_flags(child, flags);
            crate::process::waitpid(child, 0)?;
            fd
        }
    }
}

pub fn pidfd_open(pid: Pid) -> SysResult<OwnedFd> {
    pidfd_open_flags(pid, 0)
}

/// Duplicate fd `target_fd` of the process behind `pidfd` (process `pid`)
/// into our table.
pub fn pidfd_getfd(pidfd: impl AsFd, pid: Pid, target_fd: TargetFd) -> SysResult<OwnedFd> {
    rustix::process::pidfd_getfd(pidfd, target_fd.0, PidfdGetfdFlags::empty())
        .map_err(|e| SysError::new(format!("pidfd_getfd(fd {target_fd})"), pid, e.into()))
}

/// Send signal `sig` to the process a pidfd names (no PID-reuse race).
pub fn send_signal(pidfd: BorrowedFd, sig: i32) -> SysResult<()> {
    let s = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| SysError::new(format!("pidfd_send_signal({sig})"), 0, Errno(libc::EINVAL)))?;
    rustix::process::pidfd_send_signal(pidfd, s)
        .map_err(|e| SysError::new(format!("pidfd_send_signal({sig})"), 0, e.into()))
}
