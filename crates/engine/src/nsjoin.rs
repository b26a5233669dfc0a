//! Work inside another process's IPC, network or mount namespace (making
//! a pod's message queue, socket, connection or pseudo-terminal; dumping
//! its sockets with sock_diag): from a thread that joins it, since only the
//! calling thread changes namespace; an fd made there stays valid after.

use crate::{EngineError, Result};
use std::os::fd::OwnedFd;

/// Run `work` in a thread inside the `ns` namespace (CLONE_NEWIPC,
/// CLONE_NEWNET, CLONE_NEWNS) of process `pid`.
pub fn run_in<T: Send + 'static>(pid: i32, ns: i32, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let pfd = cryopod_sys::pidfd::pidfd_open(pid)?;
    std::thread::spawn(move || -> Result<T> {
        use std::os::fd::AsFd;
        // A thread joins a mount namespace only with a root and working
        // directory of its own.
        if ns & libc::CLONE_NEWNS != 0 {
            cryopod_sys::ns::unshare(libc::CLONE_FS)?;
        }
        cryopod_sys::ns::enter(pfd.as_fd(), pid, ns)?;
        work()
    })
    .join()
    .map_err(|_| EngineError::Other("namespace thread panicked".into()))?
}

/// `work` in the network namespace of process `pid`: here when it is ours
/// (a plain tree's: no thread to start), else from a thread that joins it.
pub fn in_net_of<T: Send + 'static>(pid: i32, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    if crate::unix::netns_of(pid)? == crate::unix::netns_of(std::process::id() as i32)? {
        return work();
    }
    run_in(pid, libc::CLONE_NEWNET, work)
}

/// `make` in the network namespace of `pid`, or here without one.
pub fn in_net(pid: Option<i32>, make: impl FnOnce() -> Result<OwnedFd> + Send + 'static) -> Result<OwnedFd> {
    match pid {
        Some(pid) => run_in(pid, libc::CLONE_NEWNET, make),
        None => make(),
    }
}
