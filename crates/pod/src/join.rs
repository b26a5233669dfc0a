//! Reading what only a process inside a pod's namespaces sees (its host
//! name, network, IPC objects): a forked helper joins them, runs the
//! reader, and sends the result back as JSON; we never join them ourselves.
//! A pod's network alone can also be joined by a thread of ours made for
//! it ([`in_net_of`]): no fork, so it works beside other threads.

use crate::{PodError, Result};
use cryopod_sys::clone::{fork_with_pid, Forked};
use cryopod_sys::{io, ns, pidfd, pipe, process};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;
use std::os::fd::AsFd;

/// Run `f` in a thread of ours that joined the network namespace of
/// `init` (a thread's own: the rest of the process stays where it is, and
/// the thread ends with `f`).
pub fn in_net_of<T: Send + 'static>(init: i32, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let pfd = pidfd::pidfd_open(init)?;
    std::thread::spawn(move || {
        ns::enter(pfd.as_fd(), init, libc::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| PodError::Invalid("a thread in the pod's network failed".into()))?
}

/// Run `read` in a child that joined the `flags` namespaces of `init`;
/// `what` names the result in errors.
pub fn read_inside<T: Serialize + DeserializeOwned>(
    init: i32,
    flags: i32,
    what: &str,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let pfd = pidfd::pidfd_open(init)?;
    let (r, w) = pipe::pipe()?;
    match fork_with_pid(0)? {
        Forked::Child => {
            drop(r);
            let res = ns::enter(pfd.as_fd(), init, flags)
                .map_err(PodError::from)
                .and_then(|_| read())
                .map_err(|e| cryopod_engine::chain(&e));
            let _ = io::write_all(&w, &serde_json::to_vec(&res).unwrap_or_default());
            process::exit_now(0)
        }
        Forked::Parent(child) => {
            drop(w);
            let mut buf = Vec::new();
            let _ = std::fs::File::from(r).read_to_end(&mut buf);
            let _ = process::waitpid(child, 0);
            let res: std::result::Result<T, String> =
                serde_json::from_slice(&buf).map_err(|_| PodError::Invalid(format!("reading {what} failed")))?;
            res.map_err(|e| PodError::Invalid(format!("{what}: {e}")))
        }
    }
}
