//! Messages with a file descriptor attached (SCM_RIGHTS) over a unix
//! socket: how the guardian process receives the pidfds and sockets it may
//! have to act on.

use crate::error::fail;
use crate::{Errno, SysError, SysResult};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Send `bytes` (one message) with `fd` attached, if any. Never raises
/// SIGPIPE: a peer that is gone is an error.
pub fn send(sock: BorrowedFd, bytes: &[u8], fd: Option<BorrowedFd>) -> SysResult<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let n = sendmsg(sock, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::NOSIGNAL).map_err(fail("sendmsg", 0))?;
    if n != bytes.len() {
        return Err(SysError::new("sendmsg (short)", 0, Errno(libc::EMSGSIZE)));
    }
    Ok(())
}

/// Receive one message into `buf`: its length (0 at the end of the
/// stream) and the descriptor that came with it.
pub fn recv(sock: BorrowedFd, buf: &mut [u8]) -> SysResult<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        match recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r.map_err(fail("recvmsg", 0))?,
        }
    };
    let mut got = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                got.get_or_insert(fd);
            }
        }
    }
    Ok((r.bytes, got))
}
