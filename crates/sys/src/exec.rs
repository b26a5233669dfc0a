//! Starting programs: executing one held in a descriptor (a pod's init,
//! run from a memfd, so that it needs no file of the pod's root), and a
//! child with a clean signal mask (the pod's command, started by an init
//! that blocks signals to take them synchronously). rustix offers exec
//! only in its unstable `runtime` API, so these stay on libc.

use crate::{Errno, Pid, SysError, SysResult};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

/// Arguments as C strings.
fn c_argv(argv: &[String], what: &str) -> SysResult<Vec<CString>> {
    argv.iter()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| SysError::new(format!("{what} (NUL in {a:?})"), 0, Errno(libc::EINVAL)))
        })
        .collect()
}

/// A NULL-terminated array of pointers to `args` (which must outlive it).
fn c_ptrs(args: &[CString]) -> Vec<*const libc::c_char> {
    args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// Execute the program held in `fd` (e.g. a memfd) with `argv`; the
/// environment is kept. Returns only on failure.
pub fn exec_fd(fd: impl AsFd, argv: &[String]) -> SysError {
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
        libc::syscall(
            libc::SYS_execveat,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            ptrs.as_ptr(),
            environ,
            libc::AT_EMPTY_PATH,
        )
    };
    SysError::last("execveat", 0)
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
            crate::signal::set_signal_mask(0);
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
