//! Namespaces, mounts and process images for pods: unshare, setns through a
//! pidfd, mount/umount/pivot_root, host and domain names, executing a
//! program held in a memfd, and waiting for signals synchronously (the
//! pod's init).

use crate::{Errno, Pid, SysError, SysResult};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

fn cstr(s: &str, what: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| SysError::new(format!("{what} (NUL in {s:?})"), 0, Errno(libc::EINVAL)))
}

fn check(r: i32, what: impl Into<String>) -> SysResult<()> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(())
}

/// unshare(flags) for the calling thread (CLONE_NEW* flags).
pub fn unshare(flags: i32) -> SysResult<()> {
    // SAFETY: integer argument.
    check(unsafe { libc::unshare(flags) }, format!("unshare({flags:#x})"))
}

/// Join the namespaces (`CLONE_NEW*` flags) of the process behind `pidfd`.
/// Joining a mount namespace needs a single-threaded caller.
pub fn enter(pidfd: BorrowedFd, pid: Pid, flags: i32) -> SysResult<()> {
    // SAFETY: integer arguments; the fd is borrowed for the call.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } < 0 {
        return Err(SysError::last(format!("setns({flags:#x})"), pid));
    }
    Ok(())
}

/// mount(2). `src`, `fstype` and `data` may be empty (NULL).
pub fn mount(src: &str, target: &str, fstype: &str, flags: u64, data: &str) -> SysResult<()> {
    let what = format!("mount {src:?} on {target} ({fstype})");
    let (s, t, f, d) = (cstr(src, &what)?, cstr(target, &what)?, cstr(fstype, &what)?, cstr(data, &what)?);
    let opt = |c: &CString, empty: bool| if empty { std::ptr::null() } else { c.as_ptr() };
    // SAFETY: every pointer is NULL or a live NUL-terminated string; the
    // kernel reads `data` as a string for the file systems we mount.
    let r = unsafe {
        libc::mount(
            opt(&s, src.is_empty()),
            t.as_ptr(),
            opt(&f, fstype.is_empty()),
            flags,
            opt(&d, data.is_empty()).cast(),
        )
    };
    check(r, what)
}

/// umount2(target, flags).
pub fn umount(target: &str, flags: i32) -> SysResult<()> {
    let what = format!("umount {target}");
    let t = cstr(target, &what)?;
    // SAFETY: `t` is a live NUL-terminated string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) }, what)
}

/// pivot_root(new_root, put_old).
pub fn pivot_root(new_root: &str, put_old: &str) -> SysResult<()> {
    let what = format!("pivot_root({new_root}, {put_old})");
    let (n, o) = (cstr(new_root, &what)?, cstr(put_old, &what)?);
    // SAFETY: both are live NUL-terminated strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
    check(r as i32, what)
}

/// chdir(path).
pub fn chdir(path: &str) -> SysResult<()> {
    let what = format!("chdir({path})");
    let p = cstr(path, &what)?;
    // SAFETY: live NUL-terminated string.
    check(unsafe { libc::chdir(p.as_ptr()) }, what)
}

/// sethostname for the calling process's UTS namespace.
pub fn set_hostname(name: &str) -> SysResult<()> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }, format!("sethostname({name})"))
}

/// setdomainname for the calling process's UTS namespace.
pub fn set_domainname(name: &str) -> SysResult<()> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }, format!("setdomainname({name})"))
}

/// Execute the program held in `fd` (e.g. a memfd) with `argv`; the
/// environment is kept. Returns only on failure.
pub fn exec_fd(fd: BorrowedFd, argv: &[String]) -> SysError {
    let args = match c_argv(argv, "execveat") {
        Ok(a) => a,
        Err(e) => return e,
    };
    let ptrs = c_ptrs(&args);
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: argv is a NULL-terminated array of live strings; `environ` is
    // libc's own environment array; "" with AT_EMPTY_PATH names `fd` itself.
    unsafe {
        libc::syscall(libc::SYS_execveat, fd.as_raw_fd(), c"".as_ptr(), ptrs.as_ptr(), environ, libc::AT_EMPTY_PATH)
    };
    SysError::last("execveat", 0)
}

/// Arguments as C strings.
fn c_argv(argv: &[String], what: &str) -> SysResult<Vec<CString>> {
    argv.iter().map(|a| cstr(a, what)).collect()
}

/// A NULL-terminated array of pointers to `args` (which must outlive it).
fn c_ptrs(args: &[CString]) -> Vec<*const libc::c_char> {
    args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// A signal set holding `sigs`.
pub(crate) fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, built by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `sigs` in the calling thread (to take them with [`wait_signal`]).
pub fn block_signals(sigs: &[i32]) {
    let set = sigset(sigs);
    // SAFETY: `set` is a valid signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Wait for one of `sigs` (blocked beforehand) and return its number.
pub fn wait_signal(sigs: &[i32]) -> i32 {
    let set = sigset(sigs);
    loop {
        // SAFETY: `set` is a valid signal set; no siginfo requested.
        let r = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if r > 0 {
            return r;
        }
    }
}

/// Let SIGPIPE end the process quietly (a command-line tool whose output
/// is piped into `head`), as C programs do, instead of failing on EPIPE.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Start `argv` (looked up in PATH) as a child with an empty signal mask
/// and default dispositions for the signals a caller may have blocked
/// (a process like the pod's init blocks them to take them synchronously).
/// Returns the child's PID; if the program cannot be started, the child
/// says so on stderr and exits with status 127.
pub fn spawn_clean(argv: &[String]) -> SysResult<Pid> {
    let args = c_argv(argv, "execvp")?;
    let Some(prog) = args.first() else {
        return Err(SysError::new("execvp (no program)", 0, Errno(libc::EINVAL)));
    };
    let ptrs = c_ptrs(&args);
    let msg = format!("cryopod-init: cannot start {}\n", argv[0]);
    match crate::clone::fork_with_pid(0)? {
        crate::clone::Forked::Parent(p) => Ok(p),
        crate::clone::Forked::Child => {
            crate::util::set_signal_mask(0);
            // SAFETY: `ptrs` is a NULL-terminated array of live strings;
            // after a failed exec we only write a prepared message and _exit.
            unsafe {
                libc::execvp(prog.as_ptr(), ptrs.as_ptr());
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        }
    }
}

/// Become uid and gid 0 of the user namespace just entered (whose maps
/// are written), with no supplementary groups.
pub fn become_root() -> SysResult<()> {
    // SAFETY: integer arguments; an empty group list.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) < 0 && Errno::last().0 != libc::EPERM {
            return Err(SysError::last("setgroups([])", 0));
        }
        if libc::setresgid(0, 0, 0) < 0 {
            return Err(SysError::last("setresgid(0)", 0));
        }
        if libc::setresuid(0, 0, 0) < 0 {
            return Err(SysError::last("setresuid(0)", 0));
        }
    }
    Ok(())
}
