//! Creating processes with chosen PIDs: clone3 with `set_tid`.

use crate::{Errno, Pid, SysError, SysResult};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Result of [`fork_with_pid`] as seen by each side.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Fork the calling process so that the child gets PID `pid` (0 = any).
/// Refuses when the caller has more than one thread: a forked copy of a
/// multi-threaded process may hold locks owned by threads that no longer
/// exist.
pub fn fork_with_pid(pid: Pid) -> SysResult<Forked> {
    fork_with(0, pid)
}

/// Whether the caller is its process's only thread. A thread already
/// joined may still be listed for a moment (its end is reported to the
/// joiner before the kernel lets it go): such a count is looked at again,
/// for up to 200 ms, before the answer is no.
fn single_threaded() -> bool {
    for _ in 0..200 {
        if crate::process::own_thread_count().is_none_or(|n| n == 1) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// Fork into new namespaces (`CLONE_NEW*` flags, e.g. a new PID namespace
/// whose first process the child becomes), with PID `pid` in the child's
/// innermost PID namespace (0 = any). Same single-thread rule as
/// [`fork_with_pid`].
pub fn fork_with(flags: u64, pid: Pid) -> SysResult<Forked> {
    if !single_threaded() {
        return Err(SysError::new("fork (caller has several threads)", pid, Errno(libc::EDEADLK)));
    }
    let tids = [pid];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid > 0 { tids.as_ptr() as u64 } else { 0 },
        set_tid_size: if pid > 0 { 1 } else { 0 },
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space like
    // fork(); the caller is single-threaded (checked above), so the child
    // owns a consistent copy of every lock and buffer. `args` and `tids`
    // outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if r < 0 {
        let e = Errno::last();
        return Err(SysError::new(format!("clone3(flags={flags:#x}, set_tid={pid})"), pid, e));
    }
    if r == 0 {
        Ok(Forked::Child)
    } else {
        Ok(Forked::Parent(r as Pid))
    }
}

/// Size of the clone_args structure the kernel expects from injected clone3.
pub const CLONE_ARGS_SIZE: usize = std::mem::size_of::<CloneArgs>();

/// Encode clone3 arguments for a thread with TID `tid` (CLONE_VM, FS, FILES,
/// SIGHAND, THREAD, SYSVSEM) whose set_tid array lives at `set_tid_addr` in
/// the target; used to build the struct in a remote task's scratch memory.
pub fn thread_clone_args(set_tid_addr: u64) -> Vec<u8> {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let vals = [flags, 0, 0, 0, 0, 0, 0, 0, set_tid_addr, 1, 0];
    vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Like `fork_with(CLONE_NEWPID, 0)`, but the PID namespace is made by a
/// go-between after `before` has run in it (joining a user namespace, so
/// that the PID namespace belongs to that one). Returns `Child` in the new
/// namespace's PID 1 and `Parent(its host PID)` in the caller; the
/// go-between exits, so PID 1 is re-parented to the nearest subreaper
/// (callers make themselves one to wait for it).
pub fn fork_via(before: &dyn Fn() -> Result<(), String>) -> SysResult<Forked> {
    let (r, w) = crate::pipe::pipe()?;
    match fork_with_pid(0)? {
        Forked::Child => {
            drop(r);
            let made = before().and_then(|_| crate::ns::unshare(libc::CLONE_NEWPID).map_err(|e| e.to_string()));
            // "P" and the PID, or "E" and why not.
            let msg = match made.map(|_| fork_with_pid(0)) {
                Ok(Ok(Forked::Child)) => return Ok(Forked::Child),
                // Our own PID namespace is still the caller's: a host PID.
                Ok(Ok(Forked::Parent(p))) => [b"P".as_slice(), &p.to_ne_bytes()].concat(),
                Ok(Err(e)) => format!("E{e}").into_bytes(),
                Err(e) => format!("E{e}").into_bytes(),
            };
            let _ = crate::io::write_all(&w, &msg);
            crate::process::exit_now(0)
        }
        Forked::Parent(g) => {
            drop(w);
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut got);
            let _ = crate::process::waitpid(g, 0);
            match got.split_first() {
                Some((b'P', pid)) if pid.len() == 4 => {
                    Ok(Forked::Parent(Pid::from_ne_bytes([pid[0], pid[1], pid[2], pid[3]])))
                }
                Some((b'E', why)) => Err(SysError::new(
                    format!("making a PID namespace: {}", String::from_utf8_lossy(why)),
                    g,
                    Errno(libc::EPERM),
                )),
                _ => Err(SysError::new("making a PID namespace (the go-between died)", g, Errno(libc::ECHILD))),
            }
        }
    }
}
