//! Internet sockets: TCP sockets never connected (made, maybe bound), TCP
//! listeners with no connection waiting (address,
//! port, backlog, options: those that differ from a new socket's, see
//! `cryopod_image::SOCK_OPTS`), established TCP connections (TCP_REPAIR:
//! sequence numbers, queues, options, window), UDP sockets (address,
//! default peer; queued datagrams are dropped, as UDP allows). Restore makes them again in
//! the tree's network namespace (see `files`). A connection is in repair
//! mode only while it is read (the guardian knows, should we die then); a
//! checkpoint that kills the tree puts our copies back into repair mode
//! just before, so that the killed tree's connections close without a word
//! to the peer.

use crate::guard::{Guard, Outcome};
use crate::unix::LISTEN;
use crate::{EngineError, Result};
use cryopod_image::FileKind;
use cryopod_sys::{pidfd, TargetFd};
use std::os::fd::{AsFd, OwnedFd};

/// The shutdown bits of UDP sockets, one sock_diag dump per network
/// namespace and family for a whole checkpoint.
#[derive(Default)]
pub struct UdpShutdowns(std::collections::HashMap<(u64, i32), std::collections::HashMap<u32, u8>>);

impl UdpShutdowns {
    /// Socket `ino` of `family`, in the network namespace of `pid`.
    fn bits(&mut self, pid: i32, family: i32, ino: u32) -> Result<u8> {
        let key = (crate::unix::netns_of(pid)?, family);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.0.entry(key) {
            slot.insert(crate::nsjoin::in_net_of(pid, move || crate::sockdiag::udp_shutdowns(family))?);
        }
        Ok(self.0.get(&key).and_then(|t| t.get(&ino)).copied().unwrap_or(0))
    }
}

/// Our copies of the tree's connections, for the length of a checkpoint.
#[derive(Default)]
pub struct Repaired {
    fds: Vec<OwnedFd>,
}

impl Repaired {
    /// Put every connection into repair mode, for good: once the tree is
    /// killed, closing our copies then sends nothing to the peers.
    pub fn silence(&self) {
        for fd in &self.fds {
            let _ = cryopod_sys::tcp::set_repair(fd, true);
        }
    }
}

pub const ESTABLISHED: u8 = 1;
/// TCP_SYN_SENT: connecting, no answer yet.
pub const SYN_SENT: u8 = 2;
/// TCP_CLOSE: made and not connected, or closed.
pub const CLOSE: u8 = 7;

/// A socket that sock_diag does not know as a unix one.
pub fn collect(
    pid: i32,
    fd: i32,
    (repaired, udp): (&mut Repaired, &mut UdpShutdowns),
    guard: Option<&Guard>,
) -> Result<FileKind> {
    use cryopod_sys::sock;
    let pfd = pidfd::pidfd_open(pid)?;
    let copy = pidfd::pidfd_getfd(&pfd, pid, TargetFd(fd))?;
    let copy_fd = copy.as_fd();
    let (family, kind) = sock::domain_and_type(copy_fd)?;
    if family == libc::AF_NETLINK {
        let n = cryopod_sys::netlink::queued(copy_fd)?;
        if n > 0 {
            return Err(EngineError::Other(format!(
                "is a netlink socket with messages unread ({n} bytes the first; only the kernel could send them again)"
            )));
        }
        return Ok(FileKind::Netlink(cryopod_sys::netlink::read(copy_fd)?));
    }
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    let protocol = sock::protocol(copy_fd)?;
    if family == libc::AF_PACKET {
        return packet(pid, copy_fd, kind, protocol);
    }
    if inet && kind == libc::SOCK_RAW {
        let (local, _) = sock::inet_name(copy_fd)?;
        let peer = proc_net_peer(pid, family, copy_fd, ("raw", "01"))?.map(|(a, _)| a);
        let opts = sock::changed_options(copy_fd, family, kind, protocol)?;
        return Ok(FileKind::RawIp { family, protocol, local, peer, opts });
    }
    let icmp = if family == libc::AF_INET6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP };
    if inet && kind == libc::SOCK_DGRAM && protocol == icmp {
        let local = sock::inet_name(copy_fd)?;
        // (getpeername says ENOTCONN for ping sockets: no port.)
        let peer = proc_net_peer(pid, family, copy_fd, ("icmp", "01"))?.map(|(a, _)| a);
        let opts = sock::inet_changed_options(copy_fd, family, kind)?;
        return Ok(FileKind::Ping { family, local, peer, opts });
    }
    if inet && kind == libc::SOCK_DGRAM && protocol != libc::IPPROTO_UDP {
        return Err(EngineError::Other(format!(
            "is a datagram socket of protocol {protocol} (UDP-Lite is not carried yet)"
        )));
    }
    if inet && kind == libc::SOCK_DGRAM {
        let (reuseaddr, v6only) = sock::inet_options(copy_fd, family)?;
        let local = sock::inet_name(copy_fd)?;
        let opts = sock::inet_changed_options(copy_fd, family, kind)?;
        let ino = u32::try_from(inode(copy_fd)?).unwrap_or(0);
        // sock_diag lists bound sockets only; a poll shows the reading
        // side of any.
        let shutdown = udp.bits(pid, family, ino)? | sock::polled_shutdown(copy_fd)?;
        let peer = sock::inet_peer(copy_fd);
        return Ok(FileKind::Udp { family, local, peer, reuseaddr, v6only, opts, shutdown });
    }
    if !inet || kind != libc::SOCK_STREAM {
        return Err(EngineError::Other(format!(
            "is a socket of family {family}, type {kind}: only unix, TCP, UDP and netlink sockets can be checkpointed yet"
        )));
    }
    // TCP_LISTEN is 10 here too.
    let (state, waiting, backlog) = sock::tcp_state(copy_fd)?;
    let half_closed = cryopod_sys::tcp::fin_sent(state) || cryopod_sys::tcp::fin_received(state);
    if state == ESTABLISHED || half_closed {
        // Should we die while it is read, the guardian takes it out of
        // repair mode (the tree goes on), or leaves it in (the tree dies).
        if let Some(g) = guard {
            g.sockopt_on_abort(Outcome::Resume, copy.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 0)?;
            // (Leaving repair mode clears SO_REUSEADDR: then set it again.)
            if sock::inet_options(copy_fd, family)?.0 {
                g.sockopt_on_abort(Outcome::Resume, copy.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            }
            g.sockopt_on_abort(Outcome::Kill, copy.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1)?;
        }
        let st = cryopod_sys::tcp::dump(copy_fd, family, state);
        let stall = crate::fault::check("during-tcp-read");
        cryopod_sys::tcp::set_repair(copy_fd, false)?;
        if let Ok(st) = &st {
            cryopod_sys::tcp::keep_reuse(copy_fd, st)?;
        }
        stall?;
        repaired.fds.push(copy);
        return Ok(FileKind::Tcp(st?));
    }
    if state == CLOSE && sock::tcp_never_connected(copy_fd)? {
        let (reuseaddr, v6only) = sock::inet_options(copy_fd, family)?;
        let opts = sock::inet_changed_options(copy_fd, family, kind)?;
        let local = sock::inet_name(copy_fd)?;
        return Ok(FileKind::TcpClosed { family, local, reuseaddr, v6only, opts });
    }
    if state == CLOSE && !sock::tcp_never_connected(copy_fd)? {
        let error = if sock::error_pending(copy_fd)? { pending_error(&copy)? } else { 0 };
        let unread = sock::peek_unread(copy_fd)?;
        let opts = sock::inet_changed_options(copy_fd, family, kind)?;
        return Ok(FileKind::TcpEnded { family, unread, error, opts });
    }
    if state == SYN_SENT {
        let (reuseaddr, v6only) = sock::inet_options(copy_fd, family)?;
        let opts = sock::inet_changed_options(copy_fd, family, kind)?;
        let local = sock::inet_name(copy_fd)?;
        let remote = proc_net_peer(pid, family, copy_fd, ("tcp", "02"))?.ok_or_else(|| {
            EngineError::Other("is a TCP socket connecting to an address that cannot be found".into())
        })?;
        return Ok(FileKind::TcpConnecting { family, local, remote, reuseaddr, v6only, opts });
    }
    if state != LISTEN {
        return Err(EngineError::Other(format!(
            "is a TCP socket in state {state}: only listeners, established and half-closed connections and sockets never connected can be checkpointed"
        )));
    }
    if waiting > 0 {
        return Err(EngineError::Other(format!(
            "is a TCP listener with {waiting} connections waiting to be accepted; let the server accept them first"
        )));
    }
    let (addr, port) = sock::inet_name(copy_fd)?;
    let (reuseaddr, v6only) = sock::inet_options(copy_fd, family)?;
    let opts = sock::inet_changed_options(copy_fd, family, kind)?;
    Ok(FileKind::TcpListen { family, addr, port, backlog, reuseaddr, v6only, opts })
}

/// The peer of socket `fd` when getpeername cannot say (ENOTCONN for a
/// raw socket, which has no port, and for a TCP socket still in
/// SYN_SENT): from /proc/PID/net/`table` (or its IPv6 twin), by the
/// socket's inode, if it is in `state` there (hex, as the table shows).
/// The inode of socket `fd` (the number /proc and sock_diag name it by).
fn inode(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    Ok(rustix::fs::fstat(fd).map_err(|e| EngineError::Other(format!("fstat of a socket: {e}")))?.st_ino)
}

/// The errors a restore can leave pending on an ended connection (see
/// `cryopod_sys::tcp::ended_connection`).
pub const ENDED_ERRORS: [i32; 4] = [libc::ECONNRESET, libc::EPIPE, libc::ECONNREFUSED, libc::ETIMEDOUT];

/// The error pending on TCP socket `copy` (ours, a copy of the program's),
/// read without clearing it (`cryopod_sys::sock_errors`): the program
/// still reads it, before and after the restore.
fn pending_error(copy: &OwnedFd) -> Result<i32> {
    use std::os::fd::AsRawFd;
    let refuse = |why: String| {
        EngineError::Other(format!(
            "is a TCP socket whose connection ended with an error its program has not read yet: {why}"
        ))
    };
    let it = cryopod_sys::sock_errors::SockErrors::load()
        .map_err(|e| refuse(format!("it cannot be read without clearing it here ({e})")))?;
    let errors = it.of(std::process::id() as i32)?;
    let error = errors.get(&copy.as_raw_fd()).copied().unwrap_or(0);
    if !ENDED_ERRORS.contains(&error) {
        return Err(refuse(format!(
            "{}, which cannot be made again (only a reset, a refused connect and a time-out can)",
            cryopod_sys::Errno(error)
        )));
    }
    Ok(error)
}

fn proc_net_peer(
    pid: i32,
    family: i32,
    fd: std::os::fd::BorrowedFd<'_>,
    (table, state): (&str, &str),
) -> Result<Option<(Vec<u8>, u16)>> {
    let ino = inode(fd)?;
    let path = format!("/proc/{pid}/net/{table}{}", if family == libc::AF_INET6 { "6" } else { "" });
    let table =
        std::fs::read_to_string(&path).map_err(|e| EngineError::Proc { path: path.clone(), msg: e.to_string() })?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(9).and_then(|i| i.parse::<u64>().ok()) != Some(ino) {
            continue;
        }
        if f.get(3) != Some(&state) {
            return Ok(None);
        }
        // The address as the kernel holds it, printed one 32-bit word at
        // a time in this machine's byte order; the port in hex.
        let (hex, port) = f.get(2).and_then(|r| r.split_once(':')).unwrap_or(("", ""));
        let words: Option<Vec<u32>> =
            (0..hex.len() / 8).map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()).collect();
        let bytes: Vec<u8> = words.unwrap_or_default().iter().flat_map(|w| w.to_ne_bytes()).collect();
        let want = if family == libc::AF_INET6 { 16 } else { 4 };
        let port = u16::from_str_radix(port, 16).unwrap_or(0);
        return Ok((bytes.len() == want).then_some((bytes, port)));
    }
    Ok(None)
}

/// A packet socket: what it is bound to, its interface by name (seen from
/// `pid`'s network namespace); one with a ring or in a fanout group is
/// refused.
fn packet(pid: i32, fd: std::os::fd::BorrowedFd<'_>, kind: i32, protocol: i32) -> Result<FileKind> {
    const SOL_PACKET: i32 = 263;
    const PACKET_FANOUT: i32 = 18;
    const PACKET_FANOUT_CBPF: u32 = 6;
    const PACKET_FANOUT_EBPF: u32 = 7;
    let mut word = [0u8; 4];
    cryopod_sys::sock::get_raw(fd, SOL_PACKET, PACKET_FANOUT, &mut word)?;
    // id | type << 16 | flags << 24, as setsockopt takes it again.
    let fanout = u32::from_ne_bytes(word);
    if fanout != 0 && [PACKET_FANOUT_CBPF, PACKET_FANOUT_EBPF].contains(&((fanout >> 16) & 0xff)) {
        return Err(EngineError::Other(
            "is a packet socket in a fanout group steered by a BPF program (it cannot be read back)".into(),
        ));
    }
    let (bound, index) = cryopod_sys::packet::binding(fd)?;
    let ino = inode(fd)?;
    let ino = u32::try_from(ino).map_err(|_| EngineError::Other(format!("socket inode {ino} out of range")))?;
    let (ifname, diag, names) = crate::nsjoin::in_net_of(pid, move || {
        let ifname = match index {
            0 => String::new(),
            i => cryopod_sys::packet::if_name(i)?,
        };
        let diag = crate::sockdiag::packet(ino)?;
        let names =
            diag.memberships.iter().map(|m| Ok(cryopod_sys::packet::if_name(m.0)?)).collect::<Result<Vec<String>>>()?;
        Ok((ifname, diag, names))
    })?;
    if diag.ring {
        return Err(EngineError::Other(
            "is a packet socket with a ring (PACKET_RX_RING or TX_RING): not carried yet".into(),
        ));
    }
    let mut memberships = Vec::new();
    for ((_, kind, count, addr), ifname) in diag.memberships.into_iter().zip(names) {
        if addr.len() > 8 {
            return Err(EngineError::Other(format!(
                "is a packet socket with a membership of a {}-byte address",
                addr.len()
            )));
        }
        memberships.push(cryopod_image::PacketMembership { ifname, kind, count, addr });
    }
    let protocol = if bound != 0 { bound } else { protocol as u16 };
    let opts = cryopod_sys::sock::changed_options(fd, libc::AF_PACKET, kind, i32::from(protocol))?;
    Ok(FileKind::Packet { kind, protocol, ifname, opts, memberships, fanout })
}

/// Make a UDP socket or TCP listener of the image again, in the network
/// namespace of `ns_of` (a pod) or here.
pub fn make(kind: &FileKind, ns_of: Option<i32>) -> Result<OwnedFd> {
    use cryopod_sys::sock;
    match kind.clone() {
        FileKind::Udp { family, local, peer, reuseaddr, v6only, opts, shutdown } => {
            crate::nsjoin::in_net(ns_of, move || {
                let fd = sock::inet_socket(libc::SOCK_DGRAM, family, (&local.0, local.1), (reuseaddr, v6only), &opts)?;
                if let Some((a, port)) = &peer {
                    sock::inet_connect(&fd, family, a, *port)?;
                }
                sock::shutdown_bits(&fd, shutdown)?;
                Ok(fd)
            })
        }
        FileKind::TcpListen { family, addr, port, backlog, reuseaddr, v6only, opts } => {
            crate::nsjoin::in_net(ns_of, move || {
                Ok(sock::tcp_listen(family, (&addr, port), backlog as i32, (reuseaddr, v6only), &opts)?)
            })
        }
        FileKind::TcpClosed { family, local, reuseaddr, v6only, opts } => crate::nsjoin::in_net(ns_of, move || {
            Ok(sock::inet_socket(libc::SOCK_STREAM, family, (&local.0, local.1), (reuseaddr, v6only), &opts)?)
        }),
        FileKind::TcpEnded { family, unread, error, opts } => {
            crate::nsjoin::in_net(ns_of, move || Ok(cryopod_sys::tcp::ended_connection(family, &unread, error, &opts)?))
        }
        FileKind::TcpConnecting { family, local, remote, reuseaddr, v6only, opts } => {
            crate::nsjoin::in_net(ns_of, move || {
                let fd = sock::inet_socket(libc::SOCK_STREAM, family, (&local.0, local.1), (reuseaddr, v6only), &opts)?;
                cryopod_sys::fd::set_status_flags(&fd, libc::O_NONBLOCK)?;
                sock::inet_connect_start(&fd, family, &remote.0, remote.1)?;
                Ok(fd)
            })
        }
        FileKind::Ping { family, local, peer, opts } => {
            crate::nsjoin::in_net(ns_of, move || Ok(sock::ping(family, (&local.0, local.1), peer.as_deref(), &opts)?))
        }
        FileKind::RawIp { family, protocol, local, peer, opts } => {
            crate::nsjoin::in_net(ns_of, move || Ok(sock::raw_ip(family, protocol, &local, peer.as_deref(), &opts)?))
        }
        FileKind::Packet { kind, protocol, ifname, opts, memberships, fanout } => {
            crate::nsjoin::in_net(ns_of, move || {
                Ok(cryopod_sys::packet::remake(kind, protocol, &ifname, &opts, &memberships, fanout)?)
            })
        }
        _ => Err(EngineError::Other("not an internet socket".into())),
    }
}

/// Make connection `c` again (still in repair mode: see
/// [`cryopod_sys::tcp::finish`]), in the network namespace of `ns_of`.
pub fn make_connection(c: &cryopod_image::TcpConn, ns_of: Option<i32>) -> Result<OwnedFd> {
    let st = c.clone();
    crate::nsjoin::in_net(ns_of, move || Ok(cryopod_sys::tcp::restore(&st)?))
}

/// address:port of an IPv4 or IPv6 socket, for messages.
pub fn show(family: i32, addr: &[u8], port: u16) -> String {
    match (family, addr.len()) {
        (libc::AF_INET, 4) => format!("{}.{}.{}.{}:{port}", addr[0], addr[1], addr[2], addr[3]),
        (libc::AF_INET6, 16) => {
            let b: [u8; 16] = addr.try_into().unwrap_or([0; 16]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        }
        _ => format!("?:{port}"),
    }
}

/// A TCP listener of the frozen tree with connections waiting to be
/// accepted, or a unix listener with a waiting client that sent data
/// (which no checkpoint can carry: nothing reaches them but an accept):
/// (its process, how many), if there is one. One sock_diag dump
/// of the tree's network namespace; the tree's fds are looked at only when
/// some listener there has connections waiting.
pub fn listener_waiting(root: i32, fr: &crate::freeze::Frozen) -> Result<Option<(i32, u32)>> {
    let mut waiting = crate::nsjoin::in_net_of(root, crate::sockdiag::tcp_listeners_waiting)?;
    // A unix listener whose waiting client sent data already: the data is
    // where no fd reaches until the program accepts it. (The listeners
    // alone first: every socket only if one has clients waiting.)
    let listen = 1u32 << crate::unix::LISTEN;
    let listeners = crate::nsjoin::in_net_of(root, move || crate::unix::diag::dump_states(listen))?;
    if listeners.values().any(|d| !d.pending.is_empty()) {
        let all = crate::nsjoin::in_net_of(root, crate::unix::diag::dump)?;
        for (&ino, d) in &listeners {
            let with_data = d.pending.iter().filter(|c| all.get(c).is_some_and(|c| c.rqlen.1 > 0)).count();
            if with_data > 0 {
                waiting.push((ino, with_data as u32));
            }
        }
    }
    if waiting.is_empty() {
        return Ok(None);
    }
    for &pid in fr.procs.keys() {
        for fd in crate::procfs::fds(pid)? {
            let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else { continue };
            let ino = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u32>().ok());
            if let Some(&(_, n)) = ino.and_then(|i| waiting.iter().find(|(w, _)| *w == i)) {
                return Ok(Some((pid, n)));
            }
        }
    }
    Ok(None)
}
