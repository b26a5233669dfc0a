//! Files that are kernel objects rather than data: memfds (and their
//! seals), eventfd, signalfd, timerfd (and the clocks they run on), epoll
//! and inotify instances. The restorer makes them again with what the
//! image says; an epoll instance gets its interest list from the stub that
//! owns it, under that process's own fd numbers.

use crate::error::fail;
use crate::fd::TargetFd;
use crate::{Errno, Pid, SysError, SysResult};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdTimerFlags, Timespec};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING). Sealing allowed:
/// the seals a restored memfd had are added afterwards.
pub fn memfd_create(name: &str) -> SysResult<OwnedFd> {
    use rustix::fs::MemfdFlags;
    rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| SysError::new(format!("memfd_create({name})"), 0, e.into()))
}

/// F_GET_SEALS of a memfd.
pub fn memfd_seals(fd: impl AsFd) -> SysResult<u32> {
    rustix::fs::fcntl_get_seals(fd).map(|s| s.bits()).map_err(fail("fcntl(F_GET_SEALS)", 0))
}

/// F_ADD_SEALS on a memfd.
pub fn memfd_add_seals(fd: impl AsFd, seals: u32) -> SysResult<()> {
    rustix::fs::fcntl_add_seals(fd, rustix::fs::SealFlags::from_bits_retain(seals))
        .map_err(|e| SysError::new(format!("fcntl(F_ADD_SEALS, {seals:#x})"), 0, e.into()))
}

/// eventfd(count, flags).
pub fn eventfd(count: u32, flags: i32) -> SysResult<OwnedFd> {
    rustix::event::eventfd(count, rustix::event::EventfdFlags::from_bits_retain(flags as u32))
        .map_err(fail("eventfd", 0))
}

/// signalfd for the signals in `mask` (bit n-1 = signal n).
pub fn signalfd(mask: u64, flags: i32) -> SysResult<OwnedFd> {
    // rustix has no signalfd. SAFETY: the kernel reads an 8-byte mask from
    // a live local.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    if r < 0 {
        return Err(SysError::last("signalfd", 0));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// The clocks a timerfd can run on.
fn timer_clock(clock: i32) -> Option<TimerfdClockId> {
    Some(match clock {
        libc::CLOCK_REALTIME => TimerfdClockId::Realtime,
        libc::CLOCK_MONOTONIC => TimerfdClockId::Monotonic,
        libc::CLOCK_BOOTTIME => TimerfdClockId::Boottime,
        libc::CLOCK_REALTIME_ALARM => TimerfdClockId::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => TimerfdClockId::BoottimeAlarm,
        _ => return None,
    })
}

/// timerfd_create(clock, flags).
pub fn timerfd(clock: i32, flags: i32) -> SysResult<OwnedFd> {
    let id = timer_clock(clock).ok_or_else(|| SysError::new("timerfd_create", 0, Errno(libc::EINVAL)))?;
    rustix::time::timerfd_create(id, rustix::time::TimerfdFlags::from_bits_retain(flags as u32))
        .map_err(fail("timerfd_create", 0))
}

fn timespec(ns: u64) -> Timespec {
    Timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

fn ns(t: Timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// timerfd_settime(fd, flags, {interval, value}) with times in ns.
pub fn timerfd_settime(fd: impl AsFd, flags: i32, interval_ns: u64, value_ns: u64) -> SysResult<()> {
    let spec = Itimerspec { it_interval: timespec(interval_ns), it_value: timespec(value_ns) };
    rustix::time::timerfd_settime(fd, TimerfdTimerFlags::from_bits_retain(flags as u32), &spec)
        .map(|_| ())
        .map_err(fail("timerfd_settime", 0))
}

/// timerfd_gettime: (interval ns, value ns). Also brings the kernel's count
/// of expirations up to date.
pub fn timerfd_gettime(fd: impl AsFd) -> SysResult<(u64, u64)> {
    let spec = rustix::time::timerfd_gettime(fd).map_err(fail("timerfd_gettime", 0))?;
    Ok((ns(spec.it_interval), ns(spec.it_value)))
}

/// clock_gettime(clock) in ns (0 for a clock this kernel lacks).
pub fn clock_ns(clock: i32) -> u64 {
    use rustix::time::{ClockId, DynamicClockId as D};
    let id = match clock {
        libc::CLOCK_REALTIME => D::Known(ClockId::Realtime),
        libc::CLOCK_MONOTONIC => D::Known(ClockId::Monotonic),
        libc::CLOCK_BOOTTIME => D::Boottime,
        libc::CLOCK_REALTIME_ALARM => D::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => D::BoottimeAlarm,
        libc::CLOCK_TAI => D::Tai,
        libc::CLOCK_MONOTONIC_RAW => D::Known(ClockId::MonotonicRaw),
        libc::CLOCK_REALTIME_COARSE => D::Known(ClockId::RealtimeCoarse),
        libc::CLOCK_MONOTONIC_COARSE => D::Known(ClockId::MonotonicCoarse),
        libc::CLOCK_PROCESS_CPUTIME_ID => D::Known(ClockId::ProcessCPUTime),
        libc::CLOCK_THREAD_CPUTIME_ID => D::Known(ClockId::ThreadCPUTime),
        _ => return 0,
    };
    rustix::time::clock_gettime_dynamic(id).map_or(0, ns)
}

/// epoll_create1(flags).
pub fn epoll_create(flags: i32) -> SysResult<OwnedFd> {
    rustix::event::epoll::create(rustix::event::epoll::CreateFlags::from_bits_retain(flags as u32))
        .map_err(fail("epoll_create1", 0))
}

/// epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data}) on numbers of the
/// calling process's own table: a stub registers the interest list under
/// the numbers its process knows its files by (epoll keys each entry by
/// file and number, so the number is the subject). `pid` is the calling
/// process as the image numbers it (for the message).
pub fn epoll_add_at(pid: Pid, epfd: TargetFd, fd: TargetFd, events: u32, data: u64) -> SysResult<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // rustix's epoll::add takes descriptors, and a slot has none. SAFETY:
    // `ev` is a valid epoll_event; the numbers are plain arguments.
    if unsafe { libc::epoll_ctl(epfd.0, libc::EPOLL_CTL_ADD, fd.0, &mut ev) } < 0 {
        return Err(SysError::last(format!("epoll_ctl(ADD fd {fd})"), pid));
    }
    Ok(())
}

/// Register the file at number `at` of the calling process's table under
/// number `fd` (which the process closed, or gave to another file, since
/// it registered it): the file is put at `fd` for the call, and whatever
/// `fd` held (with its close-on-exec flag) is put back after.
pub fn epoll_add_through(
    pid: Pid,
    epfd: TargetFd,
    fd: TargetFd,
    at: TargetFd,
    events: u32,
    data: u64,
) -> SysResult<()> {
    // SAFETY: fcntl, dup3 and close on numbers of our own table; the slots
    // are the stub's, which owns no handle to them.
    unsafe {
        let saved = libc::fcntl(fd.0, libc::F_DUPFD_CLOEXEC, 1024);
        let flags = if saved >= 0 { libc::fcntl(fd.0, libc::F_GETFD) } else { 0 };
        if libc::dup3(at.0, fd.0, 0) < 0 {
            if saved >= 0 {
                libc::close(saved);
            }
            return Err(SysError::last(format!("dup3({at}, {fd})"), pid));
        }
        let r = epoll_add_at(pid, epfd, fd, events, data);
        let back = if saved >= 0 {
            let cloexec = if flags & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
            let b = libc::dup3(saved, fd.0, cloexec);
            let e = SysError::last(format!("dup3({saved}, {fd})"), pid);
            libc::close(saved);
            if b < 0 {
                Err(e)
            } else {
                Ok(())
            }
        } else {
            libc::close(fd.0);
            Ok(())
        };
        r.and(back)
    }
}

/// kcmp(KCMP_EPOLL_TFD): is fd `fd1` of `pid1` the file that epoll `efd`
/// of `pid2` watches under number `tfd` (its `toff`-th entry with that
/// number)? Errors (`fd1` not open, no such entry) are "no".
pub fn epoll_watches(pid1: Pid, fd1: TargetFd, pid2: Pid, efd: TargetFd, tfd: i32, toff: u32) -> bool {
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    const KCMP_EPOLL_TFD: i32 = 7;
    let slot = Slot { efd: efd.0 as u32, tfd: tfd as u32, toff };
    // SAFETY: kcmp reads one kcmp_epoll_slot from a live struct.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_EPOLL_TFD, fd1.0 as u64, &slot as *const Slot) };
    r == 0
}

/// fanotify_init(flags, event_f_flags).
pub fn fanotify_init(flags: u32, event_flags: u32) -> SysResult<OwnedFd> {
    // SAFETY: integer arguments; the fd is ours on success.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    if fd < 0 {
        return Err(SysError::last(format!("fanotify_init({flags:#x}, {event_flags:#x})"), 0));
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path): a mark on the file at
/// `path` (an inode, or the mount or file system it is on, as `flags`
/// say). A descriptor opened with O_PATH (as file handles are) is named
/// by its /proc/self/fd link: fanotify takes no O_PATH descriptor itself.
pub fn fanotify_mark(fd: impl AsFd, flags: u32, mask: u64, path: &str) -> SysResult<()> {
    let c = std::ffi::CString::new(path).map_err(|_| SysError::new("fanotify_mark (path)", 0, Errno(libc::EINVAL)))?;
    // SAFETY: a descriptor, integers and a NUL-terminated path.
    let r = unsafe { libc::fanotify_mark(fd.as_fd().as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r != 0 {
        return Err(SysError::last(format!("fanotify_mark({flags:#x}, {mask:#x})"), 0));
    }
    Ok(())
}

/// inotify_init1(flags).
pub fn inotify_init(flags: i32) -> SysResult<OwnedFd> {
    rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::from_bits_retain(flags as u32))
        .map_err(fail("inotify_init1", 0))
}

/// inotify_add_watch(fd, path, mask): the watch descriptor.
pub fn inotify_add(fd: impl AsFd, path: &str, mask: u32) -> SysResult<i32> {
    rustix::fs::inotify::add_watch(fd, path, rustix::fs::inotify::WatchFlags::from_bits_retain(mask))
        .map_err(|e| SysError::new(format!("inotify_add_watch({path})"), 0, e.into()))
}

/// inotify_rm_watch(fd, wd).
pub fn inotify_rm(fd: impl AsFd, wd: i32) -> SysResult<()> {
    rustix::fs::inotify::remove_watch(fd, wd).map_err(|e| SysError::new(format!("inotify_rm_watch({wd})"), 0, e.into()))
}
