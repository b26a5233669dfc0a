//! The controlling terminal's foreground process group: a tree restored
//! in the foreground of the terminal cryopod runs in gets the terminal
//! (so that it reads its input and gets ^C), and gives it back after.

use crate::{Pid, SysError, SysResult};
use std::os::fd::AsFd;

/// The foreground process group of the terminal on `fd`, if it is our
/// controlling terminal.
pub fn foreground_group(fd: impl AsFd) -> Option<Pid> {
    rustix::termios::tcgetpgrp(fd).ok().map(|p| p.as_raw_pid()).filter(|&p| p > 0)
}

/// Make `pgid` the foreground process group of the terminal on `fd`
/// (SIGTTOU is ignored meanwhile, as a shell does when it is in the
/// background itself).
pub fn set_foreground_group(fd: impl AsFd, pgid: Pid) -> SysResult<()> {
    let group = rustix::process::Pid::from_raw(pgid)
        .ok_or_else(|| SysError::new("tcsetpgrp", pgid, crate::Errno(libc::EINVAL)))?;
    crate::signal::with_sigttou_ignored(|| rustix::termios::tcsetpgrp(fd, group))
        .map_err(|e| SysError::new("tcsetpgrp", pgid, e.into()))
}
