//! Plain reads and writes on a descriptor, without std's buffering: how
//! the restorer, its forked stubs and helpers talk over pipes (readiness
//! lines, step numbers, a result after fork), and how an eventfd's count
//! or a pipe's contents are put back. Nothing here allocates but
//! [`read_line`]'s line.

use crate::{Errno, SysError, SysResult};
use rustix::io::Errno as E;
use std::os::fd::{AsFd, BorrowedFd};

/// Write all of `buf` to `fd` (retrying on EINTR).
pub fn write_all(fd: impl AsFd, buf: &[u8]) -> SysResult<()> {
    let fd = fd.as_fd();
    let mut off = 0;
    while off < buf.len() {
        match rustix::io::write(fd, &buf[off..]) {
            Ok(n) => off += n,
            Err(E::INTR) => continue,
            Err(e) => return Err(SysError::new("write", 0, e.into())),
        }
    }
    Ok(())
}

/// Read exactly `buf.len()` bytes from `fd` (EOF is an error).
pub fn read_exact(fd: impl AsFd, buf: &mut [u8]) -> SysResult<()> {
    let fd = fd.as_fd();
    let mut off = 0;
    while off < buf.len() {
        match rustix::io::read(fd, &mut buf[off..]) {
            Ok(0) => return Err(SysError::new("read (end of file)", 0, Errno(libc::EPIPE))),
            Ok(n) => off += n,
            Err(E::INTR) => continue,
            Err(e) => return Err(SysError::new("read", 0, e.into())),
        }
    }
    Ok(())
}

/// One read(2) into `buf`: the byte count (0 at end of file).
pub fn read_some(fd: impl AsFd, buf: &mut [u8]) -> SysResult<usize> {
    rustix::io::read(fd, buf).map_err(crate::error::fail("read", 0))
}

/// One line from a pipe (without its newline), read a byte at a time so
/// that nothing after it is consumed; None at end of file or on an error.
pub fn read_line(fd: impl AsFd) -> Option<String> {
    let fd = fd.as_fd();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        read_exact(fd, &mut b).ok()?;
        if b[0] == b'\n' {
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

/// Block until the pipe `fd` reads its end (its writer, the restorer, is
/// gone), then exit: a stub waiting to be seized dies with the restorer.
pub fn wait_while_open(fd: BorrowedFd<'_>) -> ! {
    let mut b = [0u8; 1];
    loop {
        match rustix::io::read(fd, &mut b) {
            Ok(n) if n > 0 => {}
            Err(E::INTR) => {}
            _ => crate::process::exit_now(1),
        }
    }
}

/// The events a poll of `fd` for `events` reports now, without waiting.
pub fn poll_now(fd: impl AsFd, events: rustix::event::PollFlags, what: &str) -> SysResult<rustix::event::PollFlags> {
    let mut p = [rustix::event::PollFd::new(&fd, events)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut p, Some(&zero)).map_err(|e| SysError::new(what, 0, Errno(e.raw_os_error())))?;
    Ok(p[0].revents())
}
