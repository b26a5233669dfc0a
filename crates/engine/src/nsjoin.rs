//! Making an fd inside another process's IPC, network or mount namespace
//! (a pod's message queue, socket or connection, its pseudo-terminals):
//! from a thread that joins it, since only the calling thread changes
//! namespace; the fd stays valid after.

use crate::{EngineError, Result};
use std::os::fd::OwnedFd;

/// Run `make` in a thread inside the `ns` namespace (CLONE_NEWIPC,
/// CLONE_NEWNET, CLONE_NEWNS) of process `pid`.
pub fn make_in(pid: i32, ns: i32, make: impl FnOnce() -> Result<OwnedFd> + Send + 'static) -> Result<OwnedFd> {
    let pfd = cryopod_sys::pidfd::pidfd_open(pid)?;
    std::thread::spawn(move || -> Result<OwnedFd> {
        use std::os::fd::AsFd;
        // A thread joins a mount namespace only with a root and working
        // directory of its own.
        if ns & libc::CLONE_NEWNS != 0 {
            cryopod_sys::ns::unshare(libc::CLONE_FS)?;
        }
        cryopod_sys::ns::enter(pfd.as_fd(), pid, ns)?;
        make()
    })
    .join()
    .map_err(|_| EngineError::Other("namespace thread panicked".into()))?
}

/// `make` in the network namespace of `pid`, or here without one.
pub fn in_net(pid: Option<i32>, make: impl FnOnce() -> Result<OwnedFd> + Send + 'static) -> Result<OwnedFd> {
    match pid {
        Some(pid) => make_in(pid, libc::CLONE_NEWNET, make),
        None => make(),
    }
}
