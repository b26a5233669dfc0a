//! Unix domain sockets: creating, binding, listening, connecting and
//! accepting with raw addresses (path or abstract), socket pairs, sending
//! without blocking, shutdown, peer credentials, and copying a socket's
//! queued messages without consuming them (SO_PEEK_OFF).

use crate::{Errno, Pid, SysError, SysResult};
use std::os::fd::{FromRawFd, OwnedFd};

fn new_fd(r: i32, what: &str) -> SysResult<OwnedFd> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn check(r: isize, what: impl Into<String>) -> SysResult<usize> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(r as usize)
}

/// A sockaddr_un for `name` (path bytes, or a leading NUL for an abstract
/// name), and its length.
fn sockaddr(name: &[u8]) -> SysResult<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() > a.sun_path.len() {
        return Err(SysError::new("unix socket name too long", 0, Errno(libc::ENAMETOOLONG)));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // Path names are NUL-terminated when there is room; abstract names
    // are exactly their bytes.
    let extra = usize::from(name.first() != Some(&0) && name.len() < a.sun_path.len());
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len() + extra;
    Ok((a, len as libc::socklen_t))
}

fn show(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// socket(AF_UNIX, kind | SOCK_CLOEXEC).
pub fn socket(kind: i32) -> SysResult<OwnedFd> {
    // SAFETY: integer arguments.
    new_fd(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) }, "socket(AF_UNIX)")
}

/// socketpair(AF_UNIX, kind | SOCK_CLOEXEC).
pub fn socketpair(kind: i32) -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two ints.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if r < 0 {
        return Err(SysError::last("socketpair(AF_UNIX)", 0));
    }
    // SAFETY: two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn bind(fd: i32, name: &[u8]) -> SysResult<()> {
    let (a, len) = sockaddr(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    check(r as isize, format!("bind({})", show(name))).map(|_| ())
}

pub fn listen(fd: i32, backlog: i32) -> SysResult<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::listen(fd, backlog) } as isize, "listen").map(|_| ())
}

pub fn connect(fd: i32, name: &[u8]) -> SysResult<()> {
    let (a, len) = sockaddr(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    check(r as isize, format!("connect({})", show(name))).map(|_| ())
}

pub fn accept(fd: i32) -> SysResult<OwnedFd> {
    // SAFETY: no address requested.
    let r = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    new_fd(r, "accept")
}

/// Send one message without blocking (to `name` if given).
pub fn send(fd: i32, data: &[u8], name: Option<&[u8]>) -> SysResult<()> {
    let r = match name {
        None => {
            // SAFETY: pointer and length of a live slice.
            unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT) }
        }
        Some(n) => {
            let (a, len) = sockaddr(n)?;
            // SAFETY: live slice; `a` is a valid sockaddr_un of `len` bytes.
            unsafe {
                libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT,
                    (&a as *const libc::sockaddr_un).cast(),
                    len,
                )
            }
        }
    };
    let n = check(r, format!("send of {} queued bytes", data.len()))?;
    if n != data.len() {
        return Err(SysError::new(
            format!("send of {} queued bytes (only {n} fit)", data.len()),
            0,
            Errno(libc::EAGAIN),
        ));
    }
    Ok(())
}

pub fn shutdown(fd: i32, how: i32) -> SysResult<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::shutdown(fd, how) } as isize, "shutdown").map(|_| ())
}

/// setsockopt(level, opt) from a byte buffer.
pub(crate) fn set_opt(fd: i32, level: i32, opt: i32, v: &[u8], what: &str) -> SysResult<()> {
    // SAFETY: `v` is a live buffer of its length.
    let r = unsafe { libc::setsockopt(fd, level, opt, v.as_ptr().cast(), v.len() as libc::socklen_t) };
    check(r as isize, what).map(|_| ())
}

/// getsockopt(level, opt) into a byte buffer: the bytes written.
pub(crate) fn get_opt(fd: i32, level: i32, opt: i32, out: &mut [u8], what: &str) -> SysResult<usize> {
    let mut len = out.len() as libc::socklen_t;
    // SAFETY: `out` is a live buffer of `len` bytes.
    let r = unsafe { libc::getsockopt(fd, level, opt, out.as_mut_ptr().cast(), &mut len) };
    check(r as isize, what)?;
    Ok(len as usize)
}

/// setsockopt with an int value; `what` names the option in errors.
pub fn set_int(fd: i32, level: i32, opt: i32, v: i32, what: &str) -> SysResult<()> {
    set_opt(fd, level, opt, &v.to_ne_bytes(), what)
}

pub(crate) fn get_u32(fd: i32, level: i32, opt: i32, what: &str) -> SysResult<u32> {
    let mut b = [0u8; 4];
    get_opt(fd, level, opt, &mut b, what)?;
    Ok(u32::from_ne_bytes(b))
}

fn getsockopt_int(fd: i32, opt: i32) -> SysResult<i32> {
    Ok(get_u32(fd, libc::SOL_SOCKET, opt, &format!("getsockopt({opt})"))? as i32)
}

/// The socket's SO_PEEK_OFF (-1: peeking always starts at the head).
pub fn peek_offset(fd: i32) -> SysResult<i32> {
    getsockopt_int(fd, libc::SO_PEEK_OFF)
}

fn setsockopt_int(fd: i32, opt: i32, v: i32) -> SysResult<()> {
    set_int(fd, libc::SOL_SOCKET, opt, v, &format!("setsockopt({opt})"))
}

/// SO_PASSCRED.
pub fn passcred(fd: i32) -> SysResult<bool> {
    getsockopt_int(fd, libc::SO_PASSCRED).map(|v| v != 0)
}

pub fn set_passcred(fd: i32, on: bool) -> SysResult<()> {
    setsockopt_int(fd, libc::SO_PASSCRED, i32::from(on))
}

/// SO_PEERCRED: (pid in our PID namespace, uid, gid).
pub fn peer_cred(fd: i32) -> SysResult<(Pid, u32, u32)> {
    let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid out pointers for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut c as *mut libc::ucred).cast(), &mut len)
    };
    check(r as isize, "getsockopt(SO_PEERCRED)")?;
    Ok((c.pid, c.uid, c.gid))
}

/// Every message queued for reading on `fd`, copied without consuming
/// them (for a stream socket, possibly several chunks), each with its
/// sender's address (empty: unnamed). Refuses when a message carries file
/// descriptors or other control data.
pub fn peek_queue(fd: i32, bytes_hint: usize) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let old = getsockopt_int(fd, libc::SO_PEEK_OFF)?;
    setsockopt_int(fd, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; bytes_hint.clamp(4096, 16 << 20) + 1];
    let res = loop {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: plain data, filled by the kernel.
        let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        // SAFETY: msghdr is plain data; the iovec and address are set.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `msg` points at a live iovec over `buf`.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EAGAIN {
                break Ok(());
            }
            break Err(SysError::new("recvmsg(MSG_PEEK)", 0, e));
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            break Err(SysError::new(
                "queued message carries file descriptors or credentials",
                0,
                Errno(libc::ENOTSUP),
            ));
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            break Err(SysError::new("queued message larger than the peek buffer", 0, Errno(libc::EMSGSIZE)));
        }
        if out.len() >= 1 << 20 {
            break Err(SysError::new("too many queued messages", 0, Errno(libc::E2BIG)));
        }
        let n = r as usize;
        if n == 0 {
            // An empty datagram is a message too; a stream at its end is not.
            if getsockopt_int(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM) {
                break Ok(());
            }
        }
        let name_len = (msg.msg_namelen as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
        let mut name: Vec<u8> = from.sun_path[..name_len.min(from.sun_path.len())].iter().map(|&c| c as u8).collect();
        // A path name may come with its terminating NUL.
        if name.first() != Some(&0) {
            while name.last() == Some(&0) {
                name.pop();
            }
        }
        out.push((buf[..n].to_vec(), name));
    };
    let restored = setsockopt_int(fd, libc::SO_PEEK_OFF, old);
    res?;
    restored?;
    Ok(out)
}

/// Switch the calling process's effective uid and gid (the saved ids stay,
/// so a root caller can switch back). Used so that sockets connected or
/// listening record the right peer credentials.
pub fn set_effective_ids(uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: integer arguments; -1 leaves an id unchanged.
    if unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) } < 0 {
        return Err(SysError::last(format!("setresgid(-, {gid}, -)"), 0));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) } < 0 {
        return Err(SysError::last(format!("setresuid(-, {uid}, -)"), 0));
    }
    Ok(())
}

/// SO_DOMAIN and SO_TYPE of a socket.
pub fn domain_and_type(fd: i32) -> SysResult<(i32, i32)> {
    Ok((getsockopt_int(fd, libc::SO_DOMAIN)?, getsockopt_int(fd, libc::SO_TYPE)?))
}

/// What a TCP socket's TCP_INFO says: (state, connections waiting to be
/// accepted (listeners), backlog (listeners)).
pub fn tcp_state(fd: i32) -> SysResult<(u8, u32, u32)> {
    // SAFETY: tcp_info is plain data filled by the kernel.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid out pointers of the right size.
    let r = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut ti as *mut libc::tcp_info).cast(), &mut len)
    };
    check(r as isize, "getsockopt(TCP_INFO)")?;
    Ok((ti.tcpi_state, ti.tcpi_unacked, ti.tcpi_sacked))
}

fn addr_of(ss: &libc::sockaddr_storage) -> SysResult<(Vec<u8>, u16)> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Ok((a.sin_addr.s_addr.to_ne_bytes().to_vec(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Ok((a.sin6_addr.s6_addr.to_vec(), u16::from_be(a.sin6_port)))
        }
        f => Err(SysError::new(format!("address family {f}"), 0, Errno(libc::EAFNOSUPPORT))),
    }
}

fn name(fd: i32, peer: bool) -> SysResult<(Vec<u8>, u16)> {
    // SAFETY: plain data filled by the kernel.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: valid out pointers.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    check(r as isize, if peer { "getpeername" } else { "getsockname" })?;
    addr_of(&ss)
}

/// The local address of an IPv4 or IPv6 socket: (address bytes, port).
pub fn inet_name(fd: i32) -> SysResult<(Vec<u8>, u16)> {
    name(fd, false)
}

/// The peer's address of a connected IPv4 or IPv6 socket.
pub fn inet_name_of_peer(fd: i32) -> SysResult<(Vec<u8>, u16)> {
    name(fd, true)
}

pub(crate) fn inet_sockaddr(
    family: i32,
    addr: &[u8],
    port: u16,
) -> SysResult<(libc::sockaddr_storage, libc::socklen_t)> {
    let bad = || SysError::new("TCP address of the image", 0, Errno(libc::EINVAL));
    // SAFETY: plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match family {
        libc::AF_INET => {
            // SAFETY: plain data.
            let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = port.to_be();
            a.sin_addr.s_addr = u32::from_ne_bytes(addr.try_into().map_err(|_| bad())?);
            // SAFETY: sockaddr_storage is large enough for a sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), a) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        libc::AF_INET6 => {
            // SAFETY: plain data.
            let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = port.to_be();
            a.sin6_addr.s6_addr = addr.try_into().map_err(|_| bad())?;
            // SAFETY: sockaddr_storage is large enough for a sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), a) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
        _ => return Err(bad()),
    };
    Ok((ss, len as libc::socklen_t))
}

/// SO_REUSEADDR and, for IPv6, IPV6_V6ONLY.
pub fn inet_options(fd: i32, family: i32) -> SysResult<(bool, bool)> {
    let reuse = getsockopt_int(fd, libc::SO_REUSEADDR)? != 0;
    let v6only =
        family == libc::AF_INET6 && get_u32(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "getsockopt(IPV6_V6ONLY)")? != 0;
    Ok((reuse, v6only))
}

/// An IPv4 or IPv6 socket of `kind` (SOCK_STREAM, SOCK_DGRAM), close-on-
/// exec, with SO_REUSEADDR and IPV6_V6ONLY as given, bound to (address,
/// port) unless the port is 0 and the address unspecified.
pub fn inet_socket(kind: i32, family: i32, addr: &[u8], port: u16, reuse: bool, v6only: bool) -> SysResult<OwnedFd> {
    let what = format!("socket on port {port}");
    // SAFETY: integer arguments.
    let fd = new_fd(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) }, &what)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    setsockopt_int(raw, libc::SO_REUSEADDR, i32::from(reuse))?;
    if family == libc::AF_INET6 {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, i32::from(v6only), "setsockopt(IPV6_V6ONLY)")?;
    }
    if port != 0 || addr.iter().any(|&b| b != 0) {
        let (ss, len) = inet_sockaddr(family, addr, port)?;
        // SAFETY: a valid address of `len` bytes.
        let r = unsafe { libc::bind(raw, (&ss as *const libc::sockaddr_storage).cast(), len) };
        check(r as isize, format!("bind of the {what}"))?;
    }
    Ok(fd)
}

/// A listening TCP socket on (address, port), close-on-exec.
pub fn tcp_listen(family: i32, addr: &[u8], port: u16, backlog: i32, reuse: bool, v6only: bool) -> SysResult<OwnedFd> {
    let fd = inet_socket(libc::SOCK_STREAM, family, addr, port, reuse, v6only)?;
    // SAFETY: integer arguments.
    let r = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), backlog) };
    check(r as isize, format!("listen on port {port}"))?;
    Ok(fd)
}

/// Connect an IPv4 or IPv6 socket (a datagram socket's default peer).
pub fn inet_connect(fd: i32, family: i32, addr: &[u8], port: u16) -> SysResult<()> {
    let (ss, len) = inet_sockaddr(family, addr, port)?;
    // SAFETY: a valid address of `len` bytes.
    let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    check(r as isize, format!("connect to port {port}")).map(|_| ())
}

/// The peer of a connected IPv4 or IPv6 socket, if it has one.
pub fn inet_peer(fd: i32) -> Option<(Vec<u8>, u16)> {
    name(fd, true).ok()
}
