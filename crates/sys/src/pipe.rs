//! Pipes: making one (close-on-exec), copying what another process's pipe
//! holds without consuming it (tee into a side pipe), and a pipe's
//! capacity, saved and given back on restore.

use crate::error::fail;
use crate::{Pid, SysError, SysResult};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::os::fd::{AsFd, OwnedFd};

/// pipe2 with O_CLOEXEC: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(fail("pipe2", 0))
}

/// Copy the bytes queued in a pipe without consuming them (tee into a
/// fresh pipe, then read that). `pid` names the owner in errors.
pub fn peek(pipe_read_end: impl AsFd, pid: Pid) -> SysResult<Vec<u8>> {
    let (r, w) = pipe()?;
    // Let the side pipe hold as much as a pipe can (1 MiB default max).
    let _ = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20);
    let n = match rustix::pipe::tee(pipe_read_end, &w, usize::MAX >> 1, SpliceFlags::NONBLOCK) {
        Ok(n) => n,
        Err(rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
        Err(e) => return Err(SysError::new("tee (pipe contents)", pid, e.into())),
    };
    let mut out = vec![0u8; n];
    drop(w);
    crate::io::read_exact(&r, &mut out)?;
    Ok(out)
}

/// Capacity of a pipe (F_GETPIPE_SZ); -1 if the kernel does not say.
pub fn capacity(fd: impl AsFd) -> i32 {
    rustix::pipe::fcntl_getpipe_size(fd).map_or(-1, |n| n as i32)
}

/// Set a pipe's capacity (F_SETPIPE_SZ); errors are ignored (best effort).
pub fn set_capacity(fd: impl AsFd, size: i32) {
    if let Ok(size) = usize::try_from(size) {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, size);
    }
}
