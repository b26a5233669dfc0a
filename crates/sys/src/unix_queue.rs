//! A unix socket's queued messages with what they carry: copied without
//! consuming them (SO_PEEK_OFF), each with its sender's name, the files it
//! carries (SCM_RIGHTS; the peek installs copies of them here) and its
//! sender's credentials (SCM_CREDENTIALS, when the socket receives them);
//! and sent again with the same. Control data is read with libc's own
//! cmsg walk: rustix reads credentials into a non-zero PID, and a sender
//! outside our PID namespace shows as PID 0.

use crate::sock::{kind_of, peek_offset, set_peek_offset};
use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The most files one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// One queued message (for a stream socket, a chunk of its bytes).
#[derive(Debug)]
pub struct Peeked {
    pub data: Vec<u8>,
    /// Its sender's name (datagrams; empty: unnamed).
    pub from: Vec<u8>,
    /// The files it carries, as copies the peek installed here.
    pub fds: Vec<OwnedFd>,
    /// Its sender's (pid as seen here, uid, gid), when the socket has
    /// SO_PASSCRED.
    pub creds: Option<(i32, u32, u32)>,
}

/// SCM_PIDFD (linux/socket.h), which libc does not name.
const SCM_PIDFD: i32 = 4;

/// Room for MAX_FDS descriptors, one ucred and some other control data
/// (SCM_SECURITY), aligned for cmsghdr.
const CONTROL_WORDS: usize = 256;

/// The name in a sockaddr_un of `len` bytes: a path without its NULs, or
/// a leading NUL and an abstract name's exact bytes; empty: unnamed.
fn name_of(sa: &libc::sockaddr_un, len: usize) -> Vec<u8> {
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = len.saturating_sub(base).min(sa.sun_path.len());
    let bytes: Vec<u8> = sa.sun_path[..n].iter().map(|&c| c as u8).collect();
    match bytes.first() {
        None => Vec::new(),
        Some(0) => bytes,
        Some(_) => bytes.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
    }
}

/// One recvmsg(MSG_PEEK) into `buf`: the message's length, sender name,
/// files and credentials; None when the queue has no more.
fn peek_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<Option<(usize, Peeked)>> {
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: sockaddr_un is plain data; all zero is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let e = Errno::last();
        return match e.0 {
            libc::EAGAIN => Ok(None),
            _ => Err(SysError::new("recvmsg(MSG_PEEK)", 0, e)),
        };
    }
    let mut fds = Vec::new();
    let mut creds = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with
    // cmsghdrs; CMSG_FIRSTHDR/NXTHDR stay within them, and each payload
    // is read unaligned within its header's stated length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / 4 {
                        let raw = data.add(i * 4).cast::<i32>().read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                // A pidfd of the sender (SO_PASSPIDFD): closed here.
                (libc::SOL_SOCKET, SCM_PIDFD) if len >= 4 => {
                    drop(OwnedFd::from_raw_fd(data.cast::<i32>().read_unaligned()));
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if len >= std::mem::size_of::<libc::ucred>() => {
                    let u = data.cast::<libc::ucred>().read_unaligned();
                    creds = Some((u.pid, u.uid, u.gid));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(SysError::new(
            "queued message with more control data than a message can carry",
            0,
            Errno(libc::E2BIG),
        ));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(SysError::new("queued message larger than the peek buffer", 0, Errno(libc::EMSGSIZE)));
    }
    let n = n as usize;
    let from = name_of(&sa, msg.msg_namelen as usize);
    Ok(Some((n, Peeked { data: buf[..n].to_vec(), from, fds, creds })))
}

/// Every message queued for reading on `fd`, copied without consuming
/// them (for a stream socket, possibly several chunks: a chunk ends where
/// one carrying files does, and, with SO_PASSCRED, where the sender
/// changes). The files they carry are installed here, close-on-exec.
pub fn peek_queue(fd: impl AsFd, bytes_hint: usize) -> SysResult<Vec<Peeked>> {
    let fd = fd.as_fd();
    let old = peek_offset(fd)?;
    set_peek_offset(fd, 0)?;
    let stream = kind_of(fd).ok() == Some(libc::SOCK_STREAM);
    let mut out = Vec::new();
    let mut buf = vec![0u8; bytes_hint.clamp(4096, 16 << 20) + 1];
    let res = loop {
        let (n, m) = match peek_one(fd, &mut buf) {
            Ok(Some(got)) => got,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if out.len() >= 1 << 20 {
            break Err(SysError::new("too many queued messages", 0, Errno(libc::E2BIG)));
        }
        // An empty datagram is a message too; a stream at its end is not.
        if n == 0 && stream && m.fds.is_empty() {
            break Ok(());
        }
        out.push(m);
    };
    let restored = set_peek_offset(fd, old);
    res?;
    restored?;
    Ok(out)
}

/// Send `data` on `fd` (to `name` when given) without blocking, with
/// `fds` attached and, when given, credentials `creds` (pid, uid, gid:
/// the kernel lets a privileged sender name any existing process and ids).
pub fn send(
    fd: impl AsFd,
    data: &[u8],
    name: Option<&[u8]>,
    fds: &[BorrowedFd<'_>],
    creds: Option<(i32, u32, u32)>,
) -> SysResult<()> {
    let what = || format!("send of {} queued bytes with {} files", data.len(), fds.len());
    if fds.len() > MAX_FDS {
        return Err(SysError::new(what(), 0, Errno(libc::E2BIG)));
    }
    let mut control = [0u64; CONTROL_WORDS];
    let mut sa: libc::sockaddr_un;
    let mut namelen = 0;
    // SAFETY: sockaddr_un and msghdr are plain data; all zero is valid.
    unsafe {
        sa = std::mem::zeroed();
    }
    if let Some(n) = name {
        if n.len() >= sa.sun_path.len() {
            return Err(SysError::new(what(), 0, Errno(libc::ENAMETOOLONG)));
        }
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &b) in sa.sun_path.iter_mut().zip(n) {
            *d = b as libc::c_char;
        }
        // A path is NUL-terminated; an abstract name is exactly its bytes.
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        namelen = base + n.len() + usize::from(n.first() != Some(&0));
    }
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if name.is_some() {
        msg.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = namelen as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut used = 0usize;
    // SAFETY: each header is written within `control` (CMSG_SPACE of both
    // payloads is far below its size), then its payload within its length.
    unsafe {
        let rights = 4 * fds.len() as u32;
        let need = if fds.is_empty() { 0 } else { libc::CMSG_SPACE(rights) as usize }
            + if creds.is_some() { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize } else { 0 };
        if need > 0 {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = need;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            if !fds.is_empty() {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(rights) as usize;
                for (i, f) in fds.iter().enumerate() {
                    libc::CMSG_DATA(c).add(i * 4).cast::<i32>().write_unaligned(f.as_raw_fd());
                }
                used += libc::CMSG_SPACE(rights) as usize;
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if let Some((pid, uid, gid)) = creds {
                let size = std::mem::size_of::<libc::ucred>() as u32;
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(size) as usize;
                libc::CMSG_DATA(c).cast::<libc::ucred>().write_unaligned(libc::ucred { pid, uid, gid });
                used += libc::CMSG_SPACE(size) as usize;
            }
            msg.msg_controllen = used;
        }
    }
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::sendmsg(fd.as_fd().as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(SysError::new(what(), 0, Errno::last()));
    }
    if n as usize != data.len() {
        return Err(SysError::new(format!("{} (only {n} fit)", what()), 0, Errno(libc::EAGAIN)));
    }
    Ok(())
}
