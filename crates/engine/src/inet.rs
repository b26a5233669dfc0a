//! Internet sockets. For now a listening TCP socket (IPv4 or IPv6) with no
//! connection waiting: its address, port, backlog and options; restore
//! makes it again in the tree's network namespace (see `files`). TCP
//! connections are refused with a sentence saying so.

use crate::unix::LISTEN;
use crate::{EngineError, Result};
use cryopod_image::FileKind;
use cryopod_sys::pidfd;
use std::os::fd::AsRawFd;

/// A socket that sock_diag does not know as a unix one.
pub fn collect(pid: i32, fd: i32) -> Result<FileKind> {
    use cryopod_sys::sock;
    let pfd = pidfd::pidfd_open(pid)?;
    let copy = pidfd::pidfd_getfd(&pfd, pid, fd)?;
    let raw = copy.as_raw_fd();
    let (family, kind) = sock::domain_and_type(raw)?;
    if !(family == libc::AF_INET || family == libc::AF_INET6) || kind != libc::SOCK_STREAM {
        return Err(EngineError::Other(format!(
            "is a socket of family {family}, type {kind}: only unix sockets and TCP listeners can be checkpointed yet"
        )));
    }
    // TCP_LISTEN is 10 here too.
    let (state, waiting, backlog) = sock::tcp_state(raw)?;
    if state != LISTEN {
        return Err(EngineError::Other(format!(
            "is a TCP connection (state {state}): TCP connections cannot be checkpointed yet, only listeners"
        )));
    }
    if waiting > 0 {
        return Err(EngineError::Other(format!(
            "is a TCP listener with {waiting} connections waiting to be accepted; let the server accept them first"
        )));
    }
    let (addr, port) = sock::inet_name(raw)?;
    let (reuseaddr, v6only) = sock::inet_options(raw, family)?;
    Ok(FileKind::TcpListen { family, addr, port, backlog, reuseaddr, v6only })
}
