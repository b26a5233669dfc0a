//! Terminals. The controlling terminal's foreground process group: a tree
//! restored in the foreground of the terminal cryopod runs in gets the
//! terminal (so that it reads its input and gets ^C), and gives it back
//! after. And pseudo-terminal pairs, read from a copy of a descriptor and
//! made again: the pair's index, its settings (termios2, window size,
//! packet mode, lock, exclusive mode), the bytes queued in it, and the
//! controlling terminal of a session (rustix has no call for most of
//! these ioctls).

use crate::{Pid, SysError, SysResult};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

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

/// A terminal's settings as the kernel keeps them, speeds included.
pub type Termios = libc::termios2;

/// A terminal's window size.
pub type WinSize = libc::winsize;

fn ioctl_ptr<T>(fd: impl AsFd, req: libc::c_ulong, what: &str, arg: *mut T) -> SysResult<()> {
    // SAFETY: every caller passes a request whose argument is a pointer to
    // a live, writable (or readable) `T` of the size the request expects.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, arg) } < 0 {
        return Err(SysError::last(what.to_string(), 0));
    }
    Ok(())
}

fn get_int(fd: impl AsFd, req: libc::c_ulong, what: &str) -> SysResult<i32> {
    let mut v: libc::c_int = 0;
    ioctl_ptr(fd, req, what, &mut v)?;
    Ok(v)
}

fn set_int(fd: impl AsFd, req: libc::c_ulong, what: &str, v: i32) -> SysResult<()> {
    let mut v: libc::c_int = v;
    ioctl_ptr(fd, req, what, &mut v)
}

fn no_arg(fd: impl AsFd, req: libc::c_ulong, arg: libc::c_ulong, what: &str) -> SysResult<()> {
    // SAFETY: requests whose argument is a plain integer (or unused).
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, arg) } < 0 {
        return Err(SysError::last(what.to_string(), 0));
    }
    Ok(())
}

/// The index N of the pair whose master is `fd` (its terminal is
/// /dev/pts/N of that devpts instance).
pub fn pty_index(master: impl AsFd) -> SysResult<u32> {
    let mut n: libc::c_uint = 0;
    ioctl_ptr(master, libc::TIOCGPTN as libc::c_ulong, "ioctl(TIOCGPTN)", &mut n)?;
    Ok(n)
}

/// Open the terminal end of the pair whose master is `master`, with open
/// flags `flags` (O_PATH works even while the pair is locked).
pub fn pty_peer(master: impl AsFd, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes its open flags as an integer and returns a
    // new descriptor, which nothing else owns.
    let r = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER as libc::c_ulong, flags) };
    if r < 0 {
        return Err(SysError::last("ioctl(TIOCGPTPEER)", 0));
    }
    // SAFETY: `r` is the new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The terminal's settings (TCGETS2).
pub fn get_termios(fd: impl AsFd) -> SysResult<Termios> {
    // SAFETY: termios2 is plain data; zero is a valid value.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    ioctl_ptr(fd, libc::TCGETS2 as libc::c_ulong, "ioctl(TCGETS2)", &mut t)?;
    Ok(t)
}

/// Set the terminal's settings at once, without draining or flushing
/// (TCSETS2).
pub fn set_termios(fd: impl AsFd, t: &Termios) -> SysResult<()> {
    let mut t = *t;
    ioctl_ptr(fd, libc::TCSETS2 as libc::c_ulong, "ioctl(TCSETS2)", &mut t)
}

pub fn get_winsize(fd: impl AsFd) -> SysResult<WinSize> {
    let mut w = WinSize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    ioctl_ptr(fd, libc::TIOCGWINSZ, "ioctl(TIOCGWINSZ)", &mut w)?;
    Ok(w)
}

pub fn set_winsize(fd: impl AsFd, w: &WinSize) -> SysResult<()> {
    let mut w = *w;
    ioctl_ptr(fd, libc::TIOCSWINSZ, "ioctl(TIOCSWINSZ)", &mut w)
}

/// A pair's modes, read from its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtyModes {
    /// Packet mode (TIOCPKT).
    pub packet: bool,
    /// The terminal end may not be opened (TIOCSPTLCK).
    pub locked: bool,
}

pub fn get_modes(master: impl AsFd) -> SysResult<PtyModes> {
    let m = master.as_fd();
    Ok(PtyModes {
        packet: get_int(m, libc::TIOCGPKT as libc::c_ulong, "ioctl(TIOCGPKT)")? != 0,
        locked: get_int(m, libc::TIOCGPTLCK as libc::c_ulong, "ioctl(TIOCGPTLCK)")? != 0,
    })
}

pub fn set_packet(master: impl AsFd, on: bool) -> SysResult<()> {
    set_int(master, libc::TIOCPKT, "ioctl(TIOCPKT)", on as i32)
}

pub fn set_locked(master: impl AsFd, on: bool) -> SysResult<()> {
    set_int(master, libc::TIOCSPTLCK as libc::c_ulong, "ioctl(TIOCSPTLCK)", on as i32)
}

/// Exclusive mode of the terminal on `fd` (TIOCGEXCL).
pub fn get_exclusive(fd: impl AsFd) -> SysResult<bool> {
    Ok(get_int(fd, libc::TIOCGEXCL as libc::c_ulong, "ioctl(TIOCGEXCL)")? != 0)
}

pub fn set_exclusive(fd: impl AsFd, on: bool) -> SysResult<()> {
    match on {
        true => no_arg(fd, libc::TIOCEXCL, 0, "ioctl(TIOCEXCL)"),
        false => no_arg(fd, libc::TIOCNXCL, 0, "ioctl(TIOCNXCL)"),
    }
}

/// Bytes waiting to be read on `fd` (FIONREAD; for a terminal in
/// canonical mode, up to the last complete line), counting what the other
/// end wrote that the line discipline has not taken yet: a write to one
/// end reaches the other through a flip buffer pushed by a kernel worker,
/// and a poll that finds nothing readable waits for that worker first
/// (n_tty_poll). Bytes already readable skip that wait, so a caller that
/// must see everything reads what this says and asks again until 0.
pub fn readable(fd: impl AsFd) -> SysResult<usize> {
    crate::io::poll_now(&fd, rustix::event::PollFlags::IN, "poll (terminal input)")?;
    Ok(get_int(fd, libc::FIONREAD, "ioctl(FIONREAD)")?.max(0) as usize)
}

/// Make the terminal on `fd` the controlling terminal of the calling
/// session leader (TIOCSCTTY, without stealing it from another session).
pub fn make_controlling(fd: impl AsFd) -> SysResult<()> {
    no_arg(fd, libc::TIOCSCTTY, 0, "ioctl(TIOCSCTTY)")
}
