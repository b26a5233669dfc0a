//! Sockets: unix ones created, bound, listening, connected and accepted
//! with raw names (path or abstract), socket pairs, shutdown, peer
//! credentials and the peek offset (their queued messages are
//! [`crate::unix_queue`]'s); internet ones with their
//! addresses and options. Typed calls are rustix's; the options rustix does
//! not name (SO_PEEK_OFF, TCP_INFO, the TCP_REPAIR family) go through the
//! raw get/set below, and so does SO_PEERCRED, which rustix reads into a
//! non-zero PID that an unconnected socket's 0 would break.

use crate::{Errno, Pid, SysError, SysResult};
use rustix::net::{sockopt, AddressFamily, Shutdown, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

fn err(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> SysError {
    move |e| SysError::new(what, 0, e.into())
}

/// The address of unix name `name` (path bytes, or a leading NUL for an
/// abstract name; empty: unnamed). Path names are NUL-terminated when there
/// is room; abstract names are exactly their bytes.
fn unix_addr(name: &[u8]) -> SysResult<SocketAddrUnix> {
    let r = match name.split_first() {
        None => Ok(SocketAddrUnix::new_unnamed()),
        Some((0, rest)) => SocketAddrUnix::new_abstract_name(rest),
        Some(_) => SocketAddrUnix::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name)),
    };
    r.map_err(|e| match e {
        rustix::io::Errno::NAMETOOLONG => SysError::new("unix socket name too long", 0, Errno(libc::ENAMETOOLONG)),
        e => SysError::new(format!("unix socket name {}", show(name)), 0, e.into()),
    })
}

fn show(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// socket(AF_UNIX, kind | SOCK_CLOEXEC).
pub fn socket(kind: i32) -> SysResult<OwnedFd> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::from_raw(kind as u32), SocketFlags::CLOEXEC, None)
        .map_err(err("socket(AF_UNIX)"))
}

/// socketpair(AF_UNIX, kind | SOCK_CLOEXEC).
pub fn socketpair(kind: i32) -> SysResult<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(AddressFamily::UNIX, SocketType::from_raw(kind as u32), SocketFlags::CLOEXEC, None)
        .map_err(err("socketpair(AF_UNIX)"))
}

pub fn bind(fd: impl AsFd, name: &[u8]) -> SysResult<()> {
    rustix::net::bind(fd, &unix_addr(name)?).map_err(|e| SysError::new(format!("bind({})", show(name)), 0, e.into()))
}

pub fn listen(fd: impl AsFd, backlog: i32) -> SysResult<()> {
    rustix::net::listen(fd, backlog).map_err(err("listen"))
}

pub fn connect(fd: impl AsFd, name: &[u8]) -> SysResult<()> {
    rustix::net::connect(fd, &unix_addr(name)?)
        .map_err(|e| SysError::new(format!("connect({})", show(name)), 0, e.into()))
}

pub fn accept(fd: impl AsFd) -> SysResult<OwnedFd> {
    rustix::net::accept_with(fd, SocketFlags::CLOEXEC).map_err(err("accept"))
}

/// shutdown(fd, how) with how SHUT_RD, SHUT_WR or SHUT_RDWR.
pub fn shutdown(fd: impl AsFd, how: i32) -> SysResult<()> {
    let how = match how {
        libc::SHUT_RD => Shutdown::Read,
        libc::SHUT_WR => Shutdown::Write,
        libc::SHUT_RDWR => Shutdown::Both,
        _ => return Err(SysError::new("shutdown", 0, Errno(libc::EINVAL))),
    };
    rustix::net::shutdown(fd, how).map_err(err("shutdown"))
}

/// The shutdown bits a poll shows of a datagram socket (1 reading, 3
/// both; writing alone shows nothing), without changing anything.
pub fn polled_shutdown(fd: impl AsFd) -> SysResult<u8> {
    use rustix::event::PollFlags;
    let r = crate::io::poll_now(fd, PollFlags::IN | PollFlags::RDHUP, "poll (shutdown)")?;
    Ok(if r.contains(PollFlags::HUP) {
        3
    } else if r.contains(PollFlags::RDHUP) {
        1
    } else {
        0
    })
}

/// Shut a datagram socket as it was: `bits` 1 reading, 2 writing. An
/// unconnected one says ENOTCONN but is shut all the same (the kernel
/// sets the bits first).
pub fn shutdown_bits(fd: impl AsFd, bits: u8) -> SysResult<()> {
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => Shutdown::Read,
        2 => Shutdown::Write,
        _ => Shutdown::Both,
    };
    match rustix::net::shutdown(fd, how) {
        Ok(()) | Err(rustix::io::Errno::NOTCONN) => Ok(()),
        Err(e) => Err(SysError::new("shutdown", 0, e.into())),
    }
}

/// setsockopt(level, opt) from a byte buffer, for options rustix does not
/// name.
pub(crate) fn set_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, v: &[u8], what: &str) -> SysResult<()> {
    // SAFETY: `v` is a live buffer of its length; the kernel only reads it.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, v.as_ptr().cast(), v.len() as libc::socklen_t) };
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(())
}

/// getsockopt(level, opt) into a byte buffer, for options rustix does not
/// name: the bytes written.
pub(crate) fn get_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, out: &mut [u8], what: &str) -> SysResult<usize> {
    let mut len = out.len() as libc::socklen_t;
    // SAFETY: `out` is a live buffer of `len` bytes; `len` a valid in/out
    // pointer.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, out.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(len as usize)
}

/// setsockopt with an int value, for options rustix does not name
/// (TCP_REPAIR, SO_PEEK_OFF, ...); `what` names the option in errors.
pub fn set_int(fd: impl AsFd, level: i32, opt: i32, v: i32, what: &str) -> SysResult<()> {
    set_opt(fd.as_fd(), level, opt, &v.to_ne_bytes(), what)
}

pub(crate) fn get_u32(fd: BorrowedFd<'_>, level: i32, opt: i32, what: &str) -> SysResult<u32> {
    let mut b = [0u8; 4];
    get_opt(fd, level, opt, &mut b, what)?;
    Ok(u32::from_ne_bytes(b))
}

/// The socket's SO_PEEK_OFF (-1: peeking always starts at the head).
pub fn peek_offset(fd: impl AsFd) -> SysResult<i32> {
    Ok(get_u32(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, &format!("getsockopt({})", libc::SO_PEEK_OFF))? as i32)
}

pub(crate) fn set_peek_offset(fd: BorrowedFd<'_>, v: i32) -> SysResult<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, v, &format!("setsockopt({})", libc::SO_PEEK_OFF))
}

/// SO_PASSCRED.
pub fn passcred(fd: impl AsFd) -> SysResult<bool> {
    sockopt::socket_passcred(fd).map_err(|e| SysError::new(format!("getsockopt({})", libc::SO_PASSCRED), 0, e.into()))
}

pub fn set_passcred(fd: impl AsFd, on: bool) -> SysResult<()> {
    sockopt::set_socket_passcred(fd, on)
        .map_err(|e| SysError::new(format!("setsockopt({})", libc::SO_PASSCRED), 0, e.into()))
}

/// SO_PEERCRED: (pid in our PID namespace, uid, gid); pid 0 when the
/// socket has no peer.
pub fn peer_cred(fd: impl AsFd) -> SysResult<(Pid, u32, u32)> {
    let mut b = [0u8; 12];
    get_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut b, "getsockopt(SO_PEERCRED)")?;
    let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
    Ok((i32::from_ne_bytes(word(0)), u32::from_ne_bytes(word(4)), u32::from_ne_bytes(word(8))))
}

/// SO_TYPE of a socket, as the raw number.
pub(crate) fn kind_of(fd: BorrowedFd<'_>) -> SysResult<i32> {
    sockopt::socket_type(fd)
        .map(|t| t.as_raw() as i32)
        .map_err(|e| SysError::new(format!("getsockopt({})", libc::SO_TYPE), 0, e.into()))
}

/// SO_PROTOCOL of a socket.
pub fn protocol(fd: impl AsFd) -> SysResult<i32> {
    Ok(get_u32(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL, "getsockopt(SO_PROTOCOL)")? as i32)
}

/// getsockopt into `out` for options named by number: the bytes written.
pub fn get_raw(fd: impl AsFd, level: i32, opt: i32, out: &mut [u8]) -> SysResult<usize> {
    get_opt(fd.as_fd(), level, opt, out, &format!("getsockopt({level}, {opt})"))
}

/// SO_DOMAIN and SO_TYPE of a socket.
pub fn domain_and_type(fd: impl AsFd) -> SysResult<(i32, i32)> {
    let fd = fd.as_fd();
    let domain = sockopt::socket_domain(fd)
        .map_err(|e| SysError::new(format!("getsockopt({})", libc::SO_DOMAIN), 0, e.into()))?;
    Ok((i32::from(domain.as_raw()), kind_of(fd)?))
}

/// What a TCP socket's TCP_INFO says: (state, connections waiting to be
/// accepted (listeners), backlog (listeners)).
pub fn tcp_state(fd: impl AsFd) -> SysResult<(u8, u32, u32)> {
    let info = tcp_info(fd.as_fd(), "getsockopt(TCP_INFO)")?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    let state = info[std::mem::offset_of!(libc::tcp_info, tcpi_state)];
    Ok((
        state,
        word(std::mem::offset_of!(libc::tcp_info, tcpi_unacked)),
        word(std::mem::offset_of!(libc::tcp_info, tcpi_sacked)),
    ))
}

/// A TCP socket in the CLOSE state that never sent or received a segment
/// (made, maybe bound, never connected): TCP_INFO's tcpi_segs_out and
/// tcpi_segs_in (offsets 136 and 140 of the kernel's struct, past libc's)
/// are both 0. False where the kernel does not say.
pub fn tcp_never_connected(fd: impl AsFd) -> SysResult<bool> {
    let mut b = [0u8; 256];
    let n = get_opt(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut b, "getsockopt(TCP_INFO)")?;
    Ok(n >= 144 && b[136..144].iter().all(|&x| x == 0))
}

/// Whether an error is pending on `fd`, seen by a poll (reading SO_ERROR
/// would clear it).
pub fn error_pending(fd: impl AsFd) -> SysResult<bool> {
    use rustix::event::PollFlags;
    Ok(crate::io::poll_now(fd, PollFlags::IN, "poll (error)")?.contains(PollFlags::ERR))
}

/// The bytes waiting to be read on `fd`, peeked (not consumed).
pub fn peek_unread(fd: impl AsFd) -> SysResult<Vec<u8>> {
    let fd = fd.as_fd();
    let n = rustix::io::ioctl_fionread(fd).map_err(err("ioctl(FIONREAD)"))? as usize;
    crate::tcp::peek(fd, n, "recv(MSG_PEEK)")
}

/// TCP_INFO as the bytes of a `struct tcp_info` (zero where the kernel's
/// is shorter).
pub(crate) fn tcp_info(fd: BorrowedFd<'_>, what: &str) -> SysResult<[u8; std::mem::size_of::<libc::tcp_info>()]> {
    let mut b = [0u8; std::mem::size_of::<libc::tcp_info>()];
    get_opt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b, what)?;
    Ok(b)
}

/// (address bytes, port) of an IPv4 or IPv6 address.
fn addr_of(a: SocketAddrAny) -> SysResult<(Vec<u8>, u16)> {
    let family = a.address_family();
    match SocketAddr::try_from(a) {
        Ok(SocketAddr::V4(a)) => Ok((a.ip().octets().to_vec(), a.port())),
        Ok(SocketAddr::V6(a)) => Ok((a.ip().octets().to_vec(), a.port())),
        Err(_) => Err(SysError::new(format!("address family {}", family.as_raw()), 0, Errno(libc::EAFNOSUPPORT))),
    }
}

/// The local address of an IPv4 or IPv6 socket: (address bytes, port).
pub fn inet_name(fd: impl AsFd) -> SysResult<(Vec<u8>, u16)> {
    addr_of(rustix::net::getsockname(fd).map_err(err("getsockname"))?)
}

/// The peer's address of a connected IPv4 or IPv6 socket.
pub fn inet_name_of_peer(fd: impl AsFd) -> SysResult<(Vec<u8>, u16)> {
    match rustix::net::getpeername(fd).map_err(err("getpeername"))? {
        Some(a) => addr_of(a),
        None => Err(SysError::new("address family 0", 0, Errno(libc::EAFNOSUPPORT))),
    }
}

/// The socket address of (family, address bytes, port), as an image holds it.
pub(crate) fn inet_sockaddr(family: i32, addr: &[u8], port: u16) -> SysResult<SocketAddr> {
    let bad = || SysError::new("TCP address of the image", 0, Errno(libc::EINVAL));
    match family {
        libc::AF_INET => {
            let o: [u8; 4] = addr.try_into().map_err(|_| bad())?;
            Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), port)))
        }
        libc::AF_INET6 => {
            let o: [u8; 16] = addr.try_into().map_err(|_| bad())?;
            Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, 0, 0)))
        }
        _ => Err(bad()),
    }
}

/// SO_REUSEADDR and, for IPv6, IPV6_V6ONLY.
pub fn inet_options(fd: impl AsFd, family: i32) -> SysResult<(bool, bool)> {
    let fd = fd.as_fd();
    let reuse = sockopt::socket_reuseaddr(fd)
        .map_err(|e| SysError::new(format!("getsockopt({})", libc::SO_REUSEADDR), 0, e.into()))?;
    let v6only = family == libc::AF_INET6 && sockopt::ipv6_v6only(fd).map_err(err("getsockopt(IPV6_V6ONLY)"))?;
    Ok((reuse, v6only))
}

/// The options of [`cryopod_image::SOCK_OPTS`] on which an IPv4 or IPv6
/// socket differs from a new one of its family and type (the buffer sizes
/// only where the program set them: SO_BUF_LOCK).
pub fn inet_changed_options(fd: impl AsFd, family: i32, kind: i32) -> SysResult<Vec<cryopod_image::SockOpt>> {
    changed_options(fd, family, kind, 0)
}

/// [`inet_changed_options`] of a socket of any family, type and protocol
/// (raw and packet sockets need theirs to be made).
pub fn changed_options(fd: impl AsFd, family: i32, kind: i32, protocol: i32) -> SysResult<Vec<cryopod_image::SockOpt>> {
    let fd = fd.as_fd();
    let raw = kind == libc::SOCK_RAW && family != libc::AF_PACKET;
    let applies = |level: i32, name: i32| match level {
        _ if family == libc::AF_PACKET => level == libc::SOL_SOCKET || level == SOL_PACKET,
        SOL_PACKET => false,
        libc::IPPROTO_IP if name == libc::IP_HDRINCL => raw && family == libc::AF_INET,
        SOL_RAW => raw && family == libc::AF_INET && protocol == libc::IPPROTO_ICMP,
        libc::IPPROTO_ICMPV6 => raw && family == libc::AF_INET6 && protocol == libc::IPPROTO_ICMPV6,
        libc::IPPROTO_IPV6 if name == libc::IPV6_CHECKSUM => raw && family == libc::AF_INET6,
        libc::IPPROTO_TCP => kind == libc::SOCK_STREAM,
        libc::IPPROTO_IP if name == libc::IP_MULTICAST_TTL || name == libc::IP_MULTICAST_LOOP => {
            family == libc::AF_INET && kind == libc::SOCK_DGRAM
        }
        libc::IPPROTO_IP => family == libc::AF_INET,
        libc::IPPROTO_IPV6 => family == libc::AF_INET6,
        _ => true,
    };
    let read = |f: BorrowedFd<'_>, level: i32, name: i32, max: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; max];
        let n = get_opt(f, level, name, &mut b, "getsockopt").ok()?;
        b.truncate(n);
        Some(b)
    };
    // A new socket's values, read once per family and type.
    static DEFAULTS: std::sync::Mutex<Vec<Defaults>> = std::sync::Mutex::new(Vec::new());
    let defaults = {
        let mut d = DEFAULTS.lock().unwrap_or_else(|p| p.into_inner());
        match d.iter().find(|(k, _)| *k == (family, kind, protocol)) {
            Some((_, v)) => v.clone(),
            None => {
                let fresh = any_socket(family, kind, protocol, "socket (for its defaults)")?;
                let v: Vec<Option<Vec<u8>>> = cryopod_image::SOCK_OPTS
                    .iter()
                    .map(|&(level, name, max)| read(fresh.as_fd(), level, name, max))
                    .collect();
                d.push(((family, kind, protocol), v.clone()));
                v
            }
        }
    };
    let locks = read(fd, libc::SOL_SOCKET, SO_BUF_LOCK, 4).map(|b| b.first().copied().unwrap_or(0)).unwrap_or(0);
    let mut out = Vec::new();
    for (i, &(level, name, max)) in cryopod_image::SOCK_OPTS.iter().enumerate() {
        if !applies(level, name) {
            continue;
        }
        let value = if (level, name) == (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER) {
            classic_filter(fd)?
        } else {
            read(fd, level, name, max)
        };
        let Some(value) = value else { continue };
        let locked = match name {
            libc::SO_SNDBUF if level == libc::SOL_SOCKET => Some(locks & 1 != 0),
            libc::SO_RCVBUF if level == libc::SOL_SOCKET => Some(locks & 2 != 0),
            _ => None,
        };
        let keep = match locked {
            Some(l) => l,
            // The type of service sets the priority too: set it after.
            None if (level, name) == (libc::SOL_SOCKET, libc::SO_PRIORITY) => true,
            None => defaults.get(i).and_then(|d| d.as_ref()).is_none_or(|d| *d != value),
        };
        if keep && !value.is_empty() {
            out.push(cryopod_image::SockOpt { level, name, value });
        }
    }
    Ok(out)
}

/// A new socket's value of each of [`cryopod_image::SOCK_OPTS`], for a
/// (family, type, protocol).
type Defaults = ((i32, i32, i32), Vec<Option<Vec<u8>>>);

const SOL_PACKET: i32 = 263;
const SOL_RAW: i32 = 255;

/// A socket of `family`, `kind` and `protocol` (0: the type's own),
/// close-on-exec.
pub fn any_socket(family: i32, kind: i32, protocol: i32, what: impl Into<String>) -> SysResult<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::from_raw(family as u16),
        SocketType::from_raw(kind as u32),
        SocketFlags::CLOEXEC,
        rustix::net::RawProtocol::new(protocol as u32).map(rustix::net::Protocol::from_raw),
    )
    .map_err(err(what))
}

/// SO_BUF_LOCK (Linux 5.14): which buffer sizes the program set.
const SO_BUF_LOCK: i32 = 72;

/// The most instructions of a classic BPF program (BPF_MAXINSNS).
const BPF_MAXINSNS: usize = 4096;

/// The classic BPF filter attached to `fd` (its instructions; None: no
/// filter). SO_GET_FILTER counts in instructions, not bytes. An eBPF
/// program (SO_ATTACH_BPF) cannot be read back: refused.
pub fn classic_filter(fd: BorrowedFd<'_>) -> SysResult<Option<Vec<u8>>> {
    let mut b = vec![0u8; BPF_MAXINSNS * 8];
    let mut len = BPF_MAXINSNS as libc::socklen_t;
    // SAFETY: `b` holds BPF_MAXINSNS instructions, which `len` says.
    let r = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, b.as_mut_ptr().cast(), &mut len)
    };
    if r < 0 {
        let e = Errno::last();
        return Err(match e.0 {
            libc::EACCES => SysError::new("an eBPF socket filter (which cannot be read back)", 0, e),
            _ => SysError::new("getsockopt(SO_GET_FILTER)", 0, e),
        });
    }
    let n = (len as usize).min(BPF_MAXINSNS) * 8;
    Ok((n > 0).then(|| b[..n].to_vec()))
}

/// A socket's classic filter and whether it is locked (for sockets
/// without an option list: unix and netlink ones); empty: none.
pub fn filter_and_lock(fd: impl AsFd) -> SysResult<(Vec<u8>, bool)> {
    let fd = fd.as_fd();
    let filter = classic_filter(fd)?.unwrap_or_default();
    let locked =
        !filter.is_empty() && get_u32(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, "getsockopt(SO_LOCK_FILTER)")? != 0;
    Ok((filter, locked))
}

/// Attach `filter` (if any) to `fd`, then lock it if `locked`.
pub fn set_filter_and_lock(fd: impl AsFd, (filter, locked): (&[u8], bool)) -> SysResult<()> {
    let fd = fd.as_fd();
    if filter.is_empty() {
        return Ok(());
    }
    attach_filter(fd, filter)?;
    if locked {
        set_int(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1, "setsockopt(SO_LOCK_FILTER)")?;
    }
    Ok(())
}

/// Attach the classic BPF program `insns` (struct sock_filter array).
pub fn attach_filter(fd: BorrowedFd<'_>, insns: &[u8]) -> SysResult<()> {
    if insns.is_empty() || !insns.len().is_multiple_of(8) || insns.len() > BPF_MAXINSNS * 8 {
        return Err(SysError::new("setsockopt(SO_ATTACH_FILTER): not whole instructions", 0, Errno(libc::EINVAL)));
    }
    let prog = libc::sock_fprog { len: (insns.len() / 8) as u16, filter: insns.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `insns`, alive for the call; the kernel
    // copies the instructions (reads unaligned-safe: it copies bytes).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(SysError::last("setsockopt(SO_ATTACH_FILTER)", 0));
    }
    Ok(())
}

/// Set options read by [`inet_changed_options`], in their order (those
/// that must come before bind first). A buffer size read back is twice
/// what was asked (the kernel's bookkeeping): half of it is set; one
/// above the system's maximum (net.core.wmem_max, rmem_max), which only
/// privilege could set, is forced (SO_SNDBUFFORCE, SO_RCVBUFFORCE: a
/// user's image may not ask for one, see the engine's trust checks).
pub fn set_options(fd: impl AsFd, opts: &[cryopod_image::SockOpt]) -> SysResult<()> {
    let fd = fd.as_fd();
    for o in opts {
        let what = format!("setsockopt({}, {})", o.level, o.name);
        match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_SNDBUF | libc::SO_RCVBUF) => {
                let v = i32::from_ne_bytes(o.value.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                set_opt(fd, o.level, o.name, &(v / 2).to_ne_bytes(), &what)?;
                if (get_u32(fd, o.level, o.name, &what)? as i32) < v {
                    let force = if o.name == libc::SO_SNDBUF { libc::SO_SNDBUFFORCE } else { libc::SO_RCVBUFFORCE };
                    set_opt(fd, o.level, force, &(v / 2).to_ne_bytes(), &what)?;
                }
            }
            (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER) => attach_filter(fd, &o.value)?,
            (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) | (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                // Strings: without the NUL the kernel returned.
                let end = o.value.iter().position(|&b| b == 0).unwrap_or(o.value.len());
                set_opt(fd, o.level, o.name, &o.value[..end], &what)?
            }
            _ => set_opt(fd, o.level, o.name, &o.value, &what)?,
        }
    }
    Ok(())
}

/// An IPv4 or IPv6 socket of `kind` (SOCK_STREAM, SOCK_DGRAM) and
/// `family`, close-on-exec.
pub(crate) fn inet_raw_socket(family: i32, kind: i32, what: impl Into<String>) -> SysResult<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::from_raw(family as u16),
        SocketType::from_raw(kind as u32),
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(err(what))
}

/// An IPv4 or IPv6 socket of `kind` (SOCK_STREAM, SOCK_DGRAM), close-on-
/// exec, with SO_REUSEADDR and IPV6_V6ONLY as given and options `opts`,
/// bound to (address, port) unless the port is 0 and the address
/// unspecified.
pub fn inet_socket(
    kind: i32,
    family: i32,
    (addr, port): (&[u8], u16),
    (reuse, v6only): (bool, bool),
    opts: &[cryopod_image::SockOpt],
) -> SysResult<OwnedFd> {
    let what = format!("socket on port {port}");
    let fd = inet_raw_socket(family, kind, what.as_str())?;
    set_options(&fd, opts)?;
    sockopt::set_socket_reuseaddr(&fd, reuse)
        .map_err(|e| SysError::new(format!("setsockopt({})", libc::SO_REUSEADDR), 0, e.into()))?;
    if family == libc::AF_INET6 {
        sockopt::set_ipv6_v6only(&fd, v6only).map_err(err("setsockopt(IPV6_V6ONLY)"))?;
    }
    if port != 0 || addr.iter().any(|&b| b != 0) {
        let a = inet_sockaddr(family, addr, port)?;
        rustix::net::bind(&fd, &a).map_err(|e| SysError::new(format!("bind of the {what}"), 0, e.into()))?;
    }
    Ok(fd)
}

/// A raw IP socket of `protocol` made again: its options, bound to `local`
/// (if not all zero), connected to `peer` (if any).
pub fn raw_ip(
    family: i32,
    protocol: i32,
    local: &[u8],
    peer: Option<&[u8]>,
    opts: &[cryopod_image::SockOpt],
) -> SysResult<OwnedFd> {
    let fd = any_socket(family, libc::SOCK_RAW, protocol, format!("socket(SOCK_RAW, {protocol})"))?;
    set_options(&fd, opts)?;
    if local.iter().any(|&b| b != 0) {
        rustix::net::bind(&fd, &inet_sockaddr(family, local, 0)?).map_err(err("bind (raw socket)"))?;
    }
    if let Some(p) = peer {
        inet_connect(&fd, family, p, 0)?;
    }
    Ok(fd)
}

/// An ICMP "ping" socket made again, in the caller's network namespace:
/// its options, bound to (address, identifier) unless both are zero,
/// connected to `peer` if any.
pub fn ping(
    family: i32,
    (addr, ident): (&[u8], u16),
    peer: Option<&[u8]>,
    opts: &[cryopod_image::SockOpt],
) -> SysResult<OwnedFd> {
    let protocol = if family == libc::AF_INET6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP };
    let fd = match any_socket(family, libc::SOCK_DGRAM, protocol, "socket(SOCK_DGRAM, ICMP)") {
        Err(e) if e.errno.0 == libc::EACCES => ping_as_group(family, protocol)?,
        r => r?,
    };
    set_options(&fd, opts)?;
    if ident != 0 || addr.iter().any(|&b| b != 0) {
        rustix::net::bind(&fd, &inet_sockaddr(family, addr, ident)?)
            .map_err(|e| SysError::new(format!("bind of the ICMP socket (identifier {ident})"), 0, e.into()))?;
    }
    if let Some(p) = peer {
        inet_connect(&fd, family, p, 0)?;
    }
    Ok(fd)
}

/// An ICMP socket made by a thread of ours whose effective group is the
/// first of the network namespace's `net.ipv4.ping_group_range`: the
/// kernel lets a task make one only if one of its groups is in that range
/// (root's too), and the restorer's need not be.
fn ping_as_group(family: i32, protocol: i32) -> SysResult<OwnedFd> {
    let path = "/proc/sys/net/ipv4/ping_group_range";
    let text = std::fs::read_to_string(path)
        .map_err(|e| SysError::new(format!("reading {path}"), 0, Errno(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u32>().ok());
    let (Some(Some(low)), Some(Some(high))) = (it.next(), it.next()) else {
        return Err(SysError::new(format!("{path}: {text:?} not understood"), 0, Errno(libc::EINVAL)));
    };
    if low > high {
        return Err(SysError::new(
            format!("an ICMP socket: no group may make one in this network namespace ({path} is {low} {high})"),
            0,
            Errno(libc::EACCES),
        ));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: the raw system call changes this thread's effective
            // group only (glibc's setresgid would change every thread's),
            // and the thread ends right after making the socket.
            let r = unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, low, u32::MAX) };
            if r != 0 {
                return Err(SysError::last(format!("setresgid(-1, {low}, -1) for an ICMP socket"), 0));
            }
            any_socket(family, libc::SOCK_DGRAM, protocol, format!("socket(SOCK_DGRAM, ICMP) as group {low}"))
        })
        .join()
        .unwrap_or_else(|_| Err(SysError::new("making an ICMP socket: the thread panicked", 0, Errno(libc::EIO))))
    })
}

/// A listening TCP socket on (address, port), close-on-exec.
pub fn tcp_listen(
    family: i32,
    (addr, port): (&[u8], u16),
    backlog: i32,
    flags: (bool, bool),
    opts: &[cryopod_image::SockOpt],
) -> SysResult<OwnedFd> {
    let fd = inet_socket(libc::SOCK_STREAM, family, (addr, port), flags, opts)?;
    rustix::net::listen(&fd, backlog).map_err(|e| SysError::new(format!("listen on port {port}"), 0, e.into()))?;
    Ok(fd)
}

/// Start connecting non-blocking `fd` to (address, port): in progress
/// (EINPROGRESS) is success.
pub fn inet_connect_start(fd: impl AsFd, family: i32, addr: &[u8], port: u16) -> SysResult<()> {
    let a = inet_sockaddr(family, addr, port)?;
    match rustix::net::connect(fd, &a) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Ok(()),
        Err(e) => Err(SysError::new(format!("connect to port {port}"), 0, e.into())),
    }
}

/// Connect an IPv4 or IPv6 socket (a datagram socket's default peer).
pub fn inet_connect(fd: impl AsFd, family: i32, addr: &[u8], port: u16) -> SysResult<()> {
    let a = inet_sockaddr(family, addr, port)?;
    rustix::net::connect(fd, &a).map_err(|e| SysError::new(format!("connect to port {port}"), 0, e.into()))
}

/// The peer of a connected IPv4 or IPv6 socket, if it has one.
pub fn inet_peer(fd: impl AsFd) -> Option<(Vec<u8>, u16)> {
    inet_name_of_peer(fd).ok()
}

/// A NETLINK_ROUTE socket (close-on-exec), in the caller's network
/// namespace; what is sent on it goes to the kernel.
pub fn netlink_route() -> SysResult<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE is protocol 0
    )
    .map_err(err("socket(NETLINK_ROUTE)"))
}
