//! Processes we start, restore or reap: signals by PID, waiting (every
//! child, traced ones included), sessions and process groups, becoming a
//! subreaper, resource limits, and ending the calling process at once (a
//! forked stub or helper must not run its parent's destructors) or with a
//! given wait status (a restored zombie).

use crate::error::fail;
use crate::{Errno, Pid, SysError, SysResult};
use rustix::process::{Resource, Rlimit, Signal, WaitOptions};

fn pid_of(pid: Pid) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(pid)
}

/// A named signal (SIGKILL, SIGTERM, ...); real-time numbers are refused
/// (EINVAL), as rustix has no safe way to send them.
fn signal(sig: i32, op: impl FnOnce() -> String, pid: Pid) -> SysResult<Signal> {
    Signal::from_named_raw(sig).ok_or_else(|| SysError::new(op(), pid, Errno(libc::EINVAL)))
}

/// Send `sig` to one process we started or restored (a negative `pid`: to
/// that process group; 0: to our own group).
pub fn kill(pid: Pid, sig: i32) -> SysResult<()> {
    let op = || format!("kill({sig})");
    let s = signal(sig, op, pid)?;
    let r = match (pid, pid_of(pid.saturating_abs())) {
        (0, _) => rustix::process::kill_current_process_group(s),
        (p, Some(g)) if p < 0 => rustix::process::kill_process_group(g, s),
        (_, Some(p)) => rustix::process::kill_process(p, s),
        (_, None) => Err(rustix::io::Errno::INVAL),
    };
    r.map_err(|e| SysError::new(op(), pid, e.into()))
}

/// Wait for a child (any state change, traced children included: `__WALL`),
/// returning (its PID, the raw wait status). `pid` -1 waits for any child;
/// with `WNOHANG` in `flags` and nothing to report, the PID is 0.
pub fn waitpid(pid: Pid, flags: i32) -> SysResult<(Pid, i32)> {
    let opts = WaitOptions::from_bits_retain((flags | libc::__WALL) as u32);
    loop {
        let r = match pid {
            -1 => rustix::process::wait(opts),
            p if p > 0 => rustix::process::waitpid(pid_of(p), opts),
            0 => rustix::process::waitpgid(rustix::process::getpgrp(), opts),
            p => match pid_of(-p) {
                Some(g) => rustix::process::waitpgid(g, opts),
                None => Err(rustix::io::Errno::INVAL),
            },
        };
        match r {
            Ok(Some((p, status))) => return Ok((p.as_raw_pid(), status.as_raw())),
            Ok(None) => return Ok((0, 0)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(SysError::new("waitpid", pid, e.into())),
        }
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

/// Exit the calling process at once, without running destructors or atexit
/// handlers (used by forked stubs, which share the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // rustix has exit_group only in its unstable `runtime` API. SAFETY:
    // _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// End the calling process so that its parent's wait() sees `status` (a
/// wait status: an exit code or a terminating signal).
pub fn die_with_status(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        crate::signal::raise_default(libc::WTERMSIG(status));
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// setsid() for the calling process.
pub fn new_session() -> SysResult<()> {
    rustix::process::setsid().map(|_| ()).map_err(fail("setsid", 0))
}

/// setpgid(pid, pgid) (0: the calling process, or a group named after `pid`).
pub fn set_process_group(pid: Pid, pgid: Pid) -> SysResult<()> {
    rustix::process::setpgid(pid_of(pid), pid_of(pgid))
        .map_err(|e| SysError::new(format!("setpgid({pgid})"), pid, e.into()))
}

/// Our own process group.
pub fn own_group() -> Pid {
    rustix::process::getpgrp().as_raw_pid()
}

/// Become a subreaper: orphaned descendants are re-parented to us (and we
/// can wait for them).
pub fn become_subreaper() -> SysResult<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::Pid::INIT))
        .map_err(fail("prctl(PR_SET_CHILD_SUBREAPER)", 0))
}

/// Number of threads of the calling process, if /proc tells (a process
/// that just entered a pod's mount namespace may have no /proc yet).
pub fn own_thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).ok()
}

/// The resource of an `RLIMIT_*` number.
fn resource(res: i32) -> Option<Resource> {
    use Resource::*;
    const ALL: [Resource; 16] = [
        Cpu, Fsize, Data, Stack, Core, Rss, Nproc, Nofile, Memlock, As, Locks, Sigpending, Msgqueue, Nice, Rtprio,
        Rttime,
    ];
    ALL.into_iter().find(|&r| r as i32 == res)
}

/// A limit as rustix has it (None: unlimited).
fn limit(v: u64) -> Option<u64> {
    (v != libc::RLIM64_INFINITY).then_some(v)
}

/// Set one resource limit (`RLIMIT_*`) of another process.
pub fn set_rlimit(pid: Pid, res: i32, soft: u64, hard: u64) -> SysResult<()> {
    let op = || format!("prlimit(resource {res}, {soft}/{hard})");
    let r = resource(res).ok_or_else(|| SysError::new(op(), pid, Errno(libc::EINVAL)))?;
    rustix::process::prlimit(pid_of(pid), r, Rlimit { current: limit(soft), maximum: limit(hard) })
        .map(|_| ())
        .map_err(|e| SysError::new(op(), pid, e.into()))
}

/// Raise our soft RLIMIT_NOFILE to the hard limit (no privilege needed).
pub fn raise_nofile() {
    let r = rustix::process::getrlimit(Resource::Nofile);
    let _ = rustix::process::setrlimit(Resource::Nofile, Rlimit { current: r.maximum, maximum: r.maximum });
}

/// kcmp(KCMP_VM): do two processes share one address space (a vfork
/// child and its parent)?
pub fn same_vm(pid1: Pid, pid2: Pid) -> SysResult<bool> {
    const KCMP_VM: i32 = 1;
    // SAFETY: kcmp (which rustix lacks) with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_VM, 0u64, 0u64) };
    if r < 0 {
        return Err(SysError::last("kcmp(KCMP_VM)", pid1));
    }
    Ok(r == 0)
}
