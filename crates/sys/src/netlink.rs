//! Netlink sockets: read what makes one (protocol, type, port id, the
//! multicast groups joined, the connected destination, SOL_NETLINK flags)
//! and make it again in the caller's network namespace. rustix names
//! neither NETLINK_LIST_MEMBERSHIPS nor the flags, and reads no
//! sockaddr_nl from getsockname, so those are the raw calls below.

use crate::sock::{get_opt, get_u32, set_int};
use crate::{SysError, SysResult};
use cryopod_image::{NetlinkSock, NETLINK_FLAGS, NETLINK_GROUP_WORDS_MAX};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// getsockname or getpeername of a netlink socket: (port id, groups).
fn address(fd: BorrowedFd<'_>, peer: bool) -> SysResult<(u32, u32)> {
    // SAFETY: sockaddr_nl is plain data; the call writes at most `len`
    // bytes into it.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_nl).cast();
    // SAFETY: as above.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r != 0 {
        return Err(SysError::last(if peer { "getpeername (netlink)" } else { "getsockname (netlink)" }, 0));
    }
    Ok((a.nl_pid, a.nl_groups))
}

/// Read netlink socket `fd`.
pub fn read(fd: impl AsFd) -> SysResult<NetlinkSock> {
    let fd = fd.as_fd();
    let protocol = get_u32(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, "getsockopt(SO_PROTOCOL)")? as i32;
    let kind = get_u32(fd, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)")? as i32;
    let (portid, _) = address(fd, false)?;
    let peer = address(fd, true)?;
    let mut words = vec![0u8; 4 * NETLINK_GROUP_WORDS_MAX];
    let n = get_opt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut words, "getsockopt(NETLINK_LIST_MEMBERSHIPS)")?;
    let mut groups: Vec<u32> =
        words[..n.min(words.len())].chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let mut flags = Vec::new();
    for f in NETLINK_FLAGS {
        if get_u32(fd, SOL_NETLINK, f, &format!("getsockopt(SOL_NETLINK, {f})"))? != 0 {
            flags.push(f);
        }
    }
    let filter = crate::sock::filter_and_lock(fd)?;
    Ok(NetlinkSock { protocol, kind, portid, groups, peer, flags, filter })
}

/// Make netlink socket `n` again (close-on-exec): its flags, bound to its
/// port id (if it had one), in its groups, connected where it was.
pub fn make(n: &NetlinkSock) -> SysResult<OwnedFd> {
    // SAFETY: socket with integer arguments; the fd is ours on success.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, n.kind | libc::SOCK_CLOEXEC, n.protocol) };
    if raw < 0 {
        return Err(SysError::last(format!("socket(AF_NETLINK, {}, {})", n.kind, n.protocol), 0));
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_fd();
    for &f in &n.flags {
        set_int(fd, SOL_NETLINK, f, 1, &format!("setsockopt(SOL_NETLINK, {f})"))?;
    }
    crate::sock::set_filter_and_lock(fd, (&n.filter.0, n.filter.1))?;
    let sockaddr = |pid: u32, groups: u32| {
        // SAFETY: sockaddr_nl is plain data; all zero is valid.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        a.nl_pid = pid;
        a.nl_groups = groups;
        a
    };
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    if n.portid != 0 {
        let a = sockaddr(n.portid, 0);
        // SAFETY: `a` is a valid sockaddr_nl of `len` bytes.
        if unsafe { libc::bind(raw, (&a as *const libc::sockaddr_nl).cast(), len) } != 0 {
            return Err(SysError::last(format!("bind (netlink port id {})", n.portid), 0));
        }
    }
    for (w, bits) in n.groups.iter().enumerate() {
        for b in (0..32).filter(|b| bits & (1 << b) != 0) {
            let group = (w * 32 + b + 1) as i32;
            set_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group, &format!("netlink group {group}"))?;
        }
    }
    if n.peer != (0, 0) {
        let a = sockaddr(n.peer.0, n.peer.1);
        // SAFETY: as for bind.
        if unsafe { libc::connect(raw, (&a as *const libc::sockaddr_nl).cast(), len) } != 0 {
            return Err(SysError::last("connect (netlink)", 0));
        }
    }
    Ok(sock)
}

/// The length of the first message waiting to be read on `fd` (0: none),
/// peeked (FIONREAD is not for netlink sockets).
pub fn queued(fd: impl AsFd) -> SysResult<usize> {
    use rustix::net::RecvFlags;
    let mut b = [0u8; 1];
    match rustix::net::recv(fd, &mut b[..], RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
        Ok((_, n)) => Ok(n.max(1)),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(SysError::new("recv(MSG_PEEK) (netlink)", 0, e.into())),
    }
}
