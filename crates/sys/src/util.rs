//! Small process-wide calls used by the engine that need `unsafe` (signal
//! masks, session ids, terminal ownership, kill by pid) under intent names.

use crate::{Errno, Pid, SysError, SysResult};

/// Send `sig` to one process we started or restored.
pub fn kill(pid: Pid, sig: i32) -> SysResult<()> {
    // SAFETY: kill has no memory arguments.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(SysError::last(format!("kill({sig})"), pid));
    }
    Ok(())
}

/// Wait for a child (any state change with `__WALL`), returning the raw status.
pub fn waitpid(pid: Pid, flags: i32) -> SysResult<(Pid, i32)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags | libc::__WALL) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(SysError::new("waitpid", pid, e));
        }
        return Ok((r, status));
    }
}

/// Number of threads of the calling process, if /proc tells (a process
/// that just entered a pod's mount namespace may have no /proc yet).
pub fn own_thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).ok()
}

/// Set the calling thread's signal mask from a bit set (bit n-1 = signal n).
pub fn set_signal_mask(bits: u64) {
    // SAFETY: sigset_t is built by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in 1..=64 {
            if bits & (1 << (s - 1)) != 0 {
                libc::sigaddset(&mut set, s);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// setsid() for the calling process.
pub fn new_session() -> SysResult<()> {
    // SAFETY: no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(SysError::last("setsid", 0));
    }
    Ok(())
}

/// setpgid(pid, pgid).
pub fn set_process_group(pid: Pid, pgid: Pid) -> SysResult<()> {
    // SAFETY: no memory arguments.
    if unsafe { libc::setpgid(pid, pgid) } < 0 {
        return Err(SysError::last(format!("setpgid({pgid})"), pid));
    }
    Ok(())
}

/// Exit the calling process at once, without running destructors or atexit
/// handlers (used by forked stubs, which share the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Block until the pipe `fd` reads its end (its writer, the restorer, is
/// gone), then exit: a stub waiting to be seized dies with the restorer.
pub fn wait_while_open(fd: i32) -> ! {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: a one-byte buffer.
        let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if r < 0 && Errno::last().0 == libc::EINTR {
            continue;
        }
        if r <= 0 {
            exit_now(1);
        }
    }
}

/// Write all of `buf` to a raw fd (used by stubs to report readiness).
pub fn write_fd(fd: i32, buf: &[u8]) -> SysResult<()> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length come from a live slice.
        let r = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(SysError::new("write", 0, e));
        }
        off += r as usize;
    }
    Ok(())
}

/// Read exactly `buf.len()` bytes from a raw fd (EOF is an error).
pub fn read_fd_exact(fd: i32, buf: &mut [u8]) -> SysResult<()> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length come from a live slice.
        let r = unsafe { libc::read(fd, buf[off..].as_mut_ptr().cast(), buf.len() - off) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(SysError::new("read", 0, e));
        }
        if r == 0 {
            return Err(SysError::new("read (end of file)", 0, Errno(libc::EPIPE)));
        }
        off += r as usize;
    }
    Ok(())
}

/// pipe2 with O_CLOEXEC: (read end, write end).
pub fn pipe() -> SysResult<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(SysError::last("pipe2", 0));
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}

/// close(fd), ignoring errors.
pub fn close(fd: i32) {
    // SAFETY: closing an fd we own.
    unsafe { libc::close(fd) };
}

/// The uname release string of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// dup3(old, new, flags): put a copy of `old` at number `new`.
pub fn dup_to(old: i32, new: i32, cloexec: bool) -> SysResult<()> {
    if old == new {
        return set_cloexec(new, cloexec);
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 has no memory arguments.
    if unsafe { libc::dup3(old, new, flags) } < 0 {
        return Err(SysError::last(format!("dup3({old}, {new})"), 0));
    }
    Ok(())
}

/// Set or clear FD_CLOEXEC.
pub fn set_cloexec(fd: i32, on: bool) -> SysResult<()> {
    let v = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl with integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, v) } < 0 {
        return Err(SysError::last(format!("fcntl(F_SETFD) on fd {fd}"), 0));
    }
    Ok(())
}

/// Duplicate `fd` to the lowest free number >= `min`, close-on-exec.
pub fn dup_at_least(fd: i32, min: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: fcntl with integer arguments.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(SysError::last(format!("fcntl(F_DUPFD) of fd {fd}"), 0));
    }
    // SAFETY: F_DUPFD returned a new fd that nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// Set an fd's status flags (O_NONBLOCK, O_APPEND, ...).
pub fn set_status_flags(fd: i32, flags: i32) -> SysResult<()> {
    // SAFETY: fcntl with integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(SysError::last(format!("fcntl(F_SETFL) on fd {fd}"), 0));
    }
    Ok(())
}

/// lseek(fd, pos, SEEK_SET).
pub fn seek_to(fd: i32, pos: u64) -> SysResult<()> {
    // SAFETY: lseek with integer arguments.
    if unsafe { libc::lseek(fd, pos as i64, libc::SEEK_SET) } < 0 {
        return Err(SysError::last(format!("lseek on fd {fd}"), 0));
    }
    Ok(())
}

/// Close every fd of the calling process not listed in `keep`.
pub fn close_all_but(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&f| f >= 0).map(|&f| f as u32).collect();
    keep.sort_unstable();
    let mut lo = 0u32;
    for k in keep {
        if k > lo {
            // SAFETY: close_range only closes fds of the calling process.
            unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0) };
        }
        lo = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
}

/// kcmp(KCMP_FILE): do two fds (of two processes) share one open file description?
pub fn same_open_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> SysResult<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64) };
    if r < 0 {
        return Err(SysError::last("kcmp(KCMP_FILE)", pid1));
    }
    Ok(r == 0)
}

/// Set one resource limit of another process.
pub fn set_rlimit(pid: Pid, res: i32, soft: u64, hard: u64) -> SysResult<()> {
    let new = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `new` is a valid rlimit64; old is null.
    if unsafe { libc::prlimit64(pid, res as _, &new, std::ptr::null_mut()) } < 0 {
        return Err(SysError::last(format!("prlimit(resource {res}, {soft}/{hard})"), pid));
    }
    Ok(())
}

/// fstat of an fd: (mode, rdev, size, ino, dev, mtime_ns).
pub fn fstat(fd: i32) -> SysResult<(u32, u64, u64, u64, u64, i128)> {
    // SAFETY: stat is plain old data and a valid out pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(SysError::last(format!("fstat fd {fd}"), 0));
    }
    let mtime = st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128;
    Ok((st.st_mode, st.st_rdev, st.st_size as u64, st.st_ino, st.st_dev, mtime))
}

/// Allocated (data) segments of a file, by SEEK_DATA/SEEK_HOLE, in [0, size).
pub fn data_segments(fd: i32, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut off = 0i64;
    while (off as u64) < size {
        // SAFETY: lseek with integer arguments.
        let d = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { size as i64 } else { h.min(size as i64) };
        if h <= d {
            break;
        }
        out.push((d as u64 & !4095, (h as u64).div_ceil(4096) * 4096));
        off = h;
    }
    out
}

/// Raise our soft RLIMIT_NOFILE to the hard limit (no privilege needed).
pub fn raise_nofile() {
    let mut r = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers to rlimit64 structs.
    unsafe {
        if libc::getrlimit64(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit64(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The major number of a device number.
pub fn major(rdev: u64) -> u32 {
    libc::major(rdev)
}

/// End the calling process so that its parent's wait() sees `status` (a
/// wait status: an exit code or a terminating signal).
pub fn die_with_status(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: resetting a disposition to default and raising the signal
        // in the calling process; no memory is shared with anyone.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// CPU affinity of a thread (0 = the calling thread), as 64-bit mask words.
pub fn get_affinity(tid: Pid) -> SysResult<Vec<u64>> {
    let mut words = vec![0u64; 16];
    // SAFETY: the kernel writes at most the given size into `words`.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, words.len() * 8, words.as_mut_ptr()) };
    if r < 0 {
        return Err(SysError::last("sched_getaffinity", tid));
    }
    words.truncate((r as usize).div_ceil(8));
    Ok(words)
}

/// Set the CPU affinity of a thread (0 = the calling thread).
pub fn set_affinity(tid: Pid, mask: &[u64]) -> SysResult<()> {
    // SAFETY: the kernel reads mask.len() * 8 bytes from a live slice.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len() * 8, mask.as_ptr()) };
    if r < 0 {
        return Err(SysError::last("sched_setaffinity", tid));
    }
    Ok(())
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> usize {
    // SAFETY: no arguments.
    let c = unsafe { libc::sched_getcpu() };
    c.max(0) as usize
}

/// A mask with just `cpu` set.
pub fn one_cpu(cpu: usize) -> Vec<u64> {
    let mut m = vec![0u64; cpu / 64 + 1];
    m[cpu / 64] |= 1 << (cpu % 64);
    m
}

/// setfsuid + setfsgid for the calling thread: file permission checks are
/// then made as that user. Returns the previous (fsuid, fsgid).
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: integer arguments; setfsgid first, while we may still change it.
    unsafe {
        let old_gid = libc::setfsgid(gid) as u32;
        let old_uid = libc::setfsuid(uid) as u32;
        (old_uid, old_gid)
    }
}

/// The foreground process group of the terminal on `fd`, if it is our
/// controlling terminal.
pub fn foreground_group(fd: i32) -> Option<Pid> {
    // SAFETY: tcgetpgrp has no memory arguments.
    let r = unsafe { libc::tcgetpgrp(fd) };
    (r > 0).then_some(r)
}

/// Make `pgid` the foreground process group of the terminal on `fd`
/// (SIGTTOU is ignored meanwhile, as a shell does when it is in the
/// background itself).
pub fn set_foreground_group(fd: i32, pgid: Pid) -> SysResult<()> {
    // SAFETY: signal() swaps a disposition of our own process and is undone
    // right after; tcsetpgrp has no memory arguments.
    let r = unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        let r = libc::tcsetpgrp(fd, pgid);
        libc::signal(libc::SIGTTOU, old);
        r
    };
    if r < 0 {
        return Err(SysError::last("tcsetpgrp", pgid));
    }
    Ok(())
}

/// Our own process group.
pub fn own_group() -> Pid {
    // SAFETY: no arguments.
    unsafe { libc::getpgrp() }
}

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING).
pub fn memfd_create(name: &str) -> SysResult<std::os::fd::OwnedFd> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| SysError::new("memfd_create (NUL in name)", 0, Errno(libc::EINVAL)))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    // Sealing allowed: the seals a restored memfd had are added afterwards.
    let r = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if r < 0 {
        return Err(SysError::last(format!("memfd_create({name})"), 0));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

fn new_fd(r: i32, what: &str) -> SysResult<std::os::fd::OwnedFd> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// eventfd(count, flags).
pub fn eventfd(count: u32, flags: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments.
    new_fd(unsafe { libc::eventfd(count, flags) }, "eventfd")
}

/// signalfd for the signals in `mask` (bit n-1 = signal n).
pub fn signalfd(mask: u64, flags: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: the kernel reads an 8-byte mask from a live local.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    new_fd(r as i32, "signalfd")
}

/// timerfd_create(clock, flags).
pub fn timerfd(clock: i32, flags: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments.
    new_fd(unsafe { libc::timerfd_create(clock, flags) }, "timerfd_create")
}

/// timerfd_settime(fd, flags, {interval, value}) with times in ns.
pub fn timerfd_settime(fd: i32, flags: i32, interval_ns: u64, value_ns: u64) -> SysResult<()> {
    let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
    let spec = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(value_ns) };
    // SAFETY: `spec` is a valid itimerspec; old value not requested.
    if unsafe { libc::timerfd_settime(fd, flags, &spec, std::ptr::null_mut()) } < 0 {
        return Err(SysError::last("timerfd_settime", 0));
    }
    Ok(())
}

/// timerfd_gettime: (interval ns, value ns). Also brings the kernel's count
/// of expirations up to date.
pub fn timerfd_gettime(fd: i32) -> SysResult<(u64, u64)> {
    // SAFETY: itimerspec is plain data; the kernel writes it.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::timerfd_gettime(fd, &mut spec) } < 0 {
        return Err(SysError::last("timerfd_gettime", 0));
    }
    let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    Ok((ns(spec.it_interval), ns(spec.it_value)))
}

/// clock_gettime(clock) in ns.
pub fn clock_ns(clock: i32) -> u64 {
    // SAFETY: timespec is plain data; the kernel writes it.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// epoll_create1(flags).
pub fn epoll_create(flags: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments.
    new_fd(unsafe { libc::epoll_create1(flags) }, "epoll_create1")
}

/// epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data}).
pub fn epoll_add(epfd: i32, fd: i32, events: u32, data: u64) -> SysResult<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(SysError::last(format!("epoll_ctl(ADD fd {fd})"), 0));
    }
    Ok(())
}

/// Forward `sigs`, when they are sent to this process, to process `target`:
/// they are blocked in the calling thread (and so in threads it creates
/// later), and a new thread takes them with sigwait and passes them on.
pub fn forward_signals(target: Pid, sigs: &[i32]) -> SysResult<()> {
    let set = crate::ns::sigset(sigs);
    crate::ns::block_signals(sigs);
    std::thread::Builder::new()
        .name("signal-forwarder".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is a valid signal set; `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                // SAFETY: kill has no memory arguments.
                unsafe { libc::kill(target, sig) };
            }
        })
        .map_err(|e| SysError::new(format!("spawn signal forwarder: {e}"), target, Errno(libc::EAGAIN)))?;
    Ok(())
}

/// The highest file descriptor number open in the calling process.
pub fn highest_open_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).max().unwrap_or(2))
        .unwrap_or(2)
}

/// Become a subreaper: orphaned descendants are re-parented to us (and we
/// can wait for them).
pub fn become_subreaper() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(SysError::last("prctl(PR_SET_CHILD_SUBREAPER)", 0));
    }
    Ok(())
}

/// The file system type (statfs f_type) of what `path` leads to.
pub fn fs_magic(path: &str) -> SysResult<i64> {
    let c = std::ffi::CString::new(path).map_err(|_| SysError::new("statfs (NUL in path)", 0, Errno(libc::EINVAL)))?;
    // SAFETY: statfs is plain data filled by the kernel; `c` is a valid path.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } < 0 {
        return Err(SysError::last(format!("statfs({path})"), 0));
    }
    Ok(s.f_type as i64)
}

/// inotify_init1(flags).
pub fn inotify_init(flags: i32) -> SysResult<std::os::fd::OwnedFd> {
    // SAFETY: integer argument.
    new_fd(unsafe { libc::inotify_init1(flags) }, "inotify_init1")
}

/// inotify_add_watch(fd, path, mask): the watch descriptor.
pub fn inotify_add(fd: i32, path: &str, mask: u32) -> SysResult<i32> {
    let c =
        std::ffi::CString::new(path).map_err(|_| SysError::new("inotify_add_watch (NUL)", 0, Errno(libc::EINVAL)))?;
    // SAFETY: a valid path string.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    if wd < 0 {
        return Err(SysError::last(format!("inotify_add_watch({path})"), 0));
    }
    Ok(wd)
}

/// inotify_rm_watch(fd, wd).
pub fn inotify_rm(fd: i32, wd: i32) -> SysResult<()> {
    // SAFETY: integer arguments.
    if unsafe { libc::inotify_rm_watch(fd, wd) } < 0 {
        return Err(SysError::last(format!("inotify_rm_watch({wd})"), 0));
    }
    Ok(())
}

/// open_by_handle_at(mount_fd, {type, bytes}, O_PATH): the file a handle
/// names, on the file system `mount_fd` is on.
pub fn open_by_handle(mount_fd: i32, handle_type: i32, handle: &[u8]) -> SysResult<std::os::fd::OwnedFd> {
    if handle.len() > 128 {
        return Err(SysError::new("open_by_handle_at (handle too long)", 0, Errno(libc::EINVAL)));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[] }
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: `buf` is a complete file_handle of its declared length.
    let r = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_mut_ptr(), libc::O_PATH | libc::O_CLOEXEC)
    };
    new_fd(r as i32, "open_by_handle_at")
}

/// One read(2) into `buf`: the byte count (0 at end of file).
pub fn read_some(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: pointer and length of a live slice.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(SysError::last("read", 0));
    }
    Ok(r as usize)
}

/// F_GET_SEALS of a memfd.
pub fn memfd_seals(fd: i32) -> SysResult<u32> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if r < 0 {
        return Err(SysError::last("fcntl(F_GET_SEALS)", 0));
    }
    Ok(r as u32)
}

/// F_ADD_SEALS on a memfd.
pub fn memfd_add_seals(fd: i32, seals: u32) -> SysResult<()> {
    // SAFETY: integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals as i32) } < 0 {
        return Err(SysError::last(format!("fcntl(F_ADD_SEALS, {seals:#x})"), 0));
    }
    Ok(())
}

/// One line from a pipe (without its newline), read a byte at a time so
/// that nothing after it is consumed; None at end of file or on an error.
pub fn read_line(fd: i32) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        read_fd_exact(fd, &mut b).ok()?;
        if b[0] == b'\n' {
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

/// A wait status as a shell reports it: the exit status, or 128 + the
/// signal that ended the process.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Put `fd` at number `at` (close-on-exec as asked), closing the original;
/// if it already is `at`, it is simply kept there.
pub fn place(fd: std::os::fd::OwnedFd, at: i32, cloexec: bool) -> SysResult<()> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    dup_to(fd.as_raw_fd(), at, cloexec)?;
    if fd.as_raw_fd() == at {
        let _ = fd.into_raw_fd();
    }
    Ok(())
}
