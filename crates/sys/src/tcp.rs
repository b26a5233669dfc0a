//! TCP_REPAIR: reading an established or half-closed connection's
//! sequence numbers, queues, negotiated options and window without the
//! peer noticing, and making a socket that is that connection again (no
//! handshake). rustix names none of the repair options nor
//! SIOCOUTQ/SIOCOUTQNSD, so those go through `sock`'s raw get/set and one
//! ioctl here; sockets, addresses and plain sends are rustix's.
//!
//! A half-closed connection comes back established, then closes as it
//! had: its own FIN by shutdown(SHUT_WR) once out of repair mode (the
//! peer, which had it already, acknowledges it again), the peer's FIN by
//! a segment we hand the socket over loopback from a raw socket, as the
//! peer had sent it (see [`crate::tcp_fin`]).

use crate::{SysError, SysResult};
use rustix::net::{RecvFlags, SendFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCP_TIMESTAMP: i32 = 24;
const SIOCOUTQNSD: u64 = 0x894B;

/// Everything that makes an established connection: the image's record
/// (plain data; kept in `cryopod-image` so that images name it).
pub use cryopod_image::TcpConn as TcpState;

fn failed(what: &str) -> impl FnOnce(rustix::io::Errno) -> SysError + '_ {
    move |e| SysError::new(what, 0, e.into())
}

use crate::sock::{get_opt as get, get_u32, set_int, set_opt as set};

/// Put a socket into or out of repair mode.
pub fn set_repair(fd: impl AsFd, on: bool) -> SysResult<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, i32::from(on), "setsockopt(TCP_REPAIR)")
}

/// An ioctl that reads one int (queue lengths), for the requests rustix
/// does not name.
fn ioctl_int(fd: BorrowedFd<'_>, req: u64, what: &str) -> SysResult<u32> {
    let mut v: i32 = 0;
    // SAFETY: the request writes one int into `v`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v) } < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(v as u32)
}

/// Up to `len` bytes waiting on `fd`, copied without consuming them.
pub(crate) fn peek(fd: BorrowedFd<'_>, len: usize, what: &str) -> SysResult<Vec<u8>> {
    let mut b = vec![0u8; len];
    if len == 0 {
        return Ok(b);
    }
    let (n, _) = rustix::net::recv(fd, &mut b[..], RecvFlags::PEEK | RecvFlags::DONTWAIT).map_err(failed(what))?;
    b.truncate(n);
    Ok(b)
}

/// TCP states of connections that [`dump`] reads.
pub const ESTABLISHED: u8 = 1;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const CLOSING: u8 = 11;

/// Whether this end sent its FIN in `state`.
pub fn fin_sent(state: u8) -> bool {
    matches!(state, FIN_WAIT1 | FIN_WAIT2 | LAST_ACK | CLOSING)
}

/// Whether this end received the peer's FIN in `state`.
pub fn fin_received(state: u8) -> bool {
    matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// Read connection `fd` (a copy of the owner's; its owner is stopped), in
/// TCP state `state` (established or half-closed). The socket is left in
/// repair mode: closing it then sends nothing to the peer; [`set_repair`]
/// off hands it back unchanged.
pub fn dump(fd: impl AsFd, family: i32, state: u8) -> SysResult<TcpState> {
    let fd = fd.as_fd();
    // Options first: repair mode forces SO_REUSEADDR while it lasts.
    let opts = crate::sock::inet_changed_options(fd, family, libc::SOCK_STREAM)?;
    set_repair(fd, true)?;
    let r = (|| {
        let mut st = TcpState {
            family,
            local: crate::sock::inet_name(fd)?,
            remote: crate::sock::inet_name_of_peer(fd)?,
            opts,
            state,
            ..Default::default()
        };
        let outq = ioctl_int(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")?;
        st.unsent = ioctl_int(fd, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")?;
        let inq = rustix::io::ioctl_fionread(fd).map_err(failed("ioctl(SIOCINQ)"))? as u32;
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        st.snd_seq = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (send)")?;
        st.send_queue = peek(fd, outq as usize, "peek of the send queue")?;
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
        st.rcv_seq = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (receive)")?;
        st.recv_queue = peek(fd, inq as usize, "peek of the receive queue")?;
        let tb = crate::sock::tcp_info(fd, "TCP_INFO")?;
        let options = tb[std::mem::offset_of!(libc::tcp_info, tcpi_options)];
        st.mss = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG")?;
        st.sack = options & TCPI_OPT_SACK != 0;
        st.timestamps = options & TCPI_OPT_TIMESTAMPS != 0;
        if options & TCPI_OPT_WSCALE != 0 {
            // tcpi_snd_wscale and tcpi_rcv_wscale share the byte after
            // tcpi_options (4 bits each).
            let b = tb[6];
            st.wscale = Some((b & 0xf, b >> 4));
        }
        st.timestamp = get_u32(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, "TCP_TIMESTAMP")?;
        let mut w = [0u8; 20];
        get(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &mut w, "TCP_REPAIR_WINDOW")?;
        for (i, c) in w.chunks_exact(4).enumerate() {
            st.window[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        st.nodelay = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY")? != 0;
        // A FIN takes a sequence number: the sequences read count it, the
        // queues' bytes do not (nor does SIOCINQ); SIOCOUTQNSD counts it
        // while it waits behind data not sent yet.
        if fin_sent(state) {
            st.snd_seq = st.snd_seq.wrapping_sub(1);
            st.unsent = st.unsent.saturating_sub(1);
        }
        if fin_received(state) {
            st.rcv_seq = st.rcv_seq.wrapping_sub(1);
            // The window was last advertised past the FIN, which the
            // connection comes back without (TCP_REPAIR_WINDOW refuses a
            // rcv_wup after rcv_nxt): from before it.
            if (st.window[4].wrapping_sub(st.rcv_seq) as i32) > 0 {
                st.window[4] = st.rcv_seq;
            }
        }
        Ok(st)
    })();
    if r.is_err() {
        let _ = set_repair(fd, false);
    }
    r
}

fn send_all(fd: BorrowedFd<'_>, data: &[u8], what: &str) -> SysResult<()> {
    let mut off = 0;
    while off < data.len() {
        off += rustix::net::send(fd, &data[off..], SendFlags::DONTWAIT).map_err(failed(what))?;
    }
    Ok(())
}

/// Make the connection `st` again (family AF_INET or AF_INET6), in the
/// caller's network namespace. It stays in repair mode (silent) until
/// [`finish`], so that the other end of a connection inside the same
/// checkpoint can be made first.
pub fn restore(st: &TcpState) -> SysResult<OwnedFd> {
    let family = st.family;
    let sock = crate::sock::inet_raw_socket(family, libc::SOCK_STREAM, "socket(TCP)")?;
    let fd = sock.as_fd();
    crate::sock::set_options(fd, &st.opts)?;
    make_room(fd, st)?;
    set_repair(fd, true)?;
    let q = |which: i32| set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, which, "TCP_REPAIR_QUEUE");
    // The sequence numbers read are those after the queued data; putting
    // the data back advances them again, so start before it.
    let rcv = st.rcv_seq.wrapping_sub(st.recv_queue.len() as u32);
    let snd = st.snd_seq.wrapping_sub(st.send_queue.len() as u32);
    q(TCP_RECV_QUEUE)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, &rcv.to_ne_bytes(), "TCP_QUEUE_SEQ (receive)")?;
    q(TCP_SEND_QUEUE)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, &snd.to_ne_bytes(), "TCP_QUEUE_SEQ (send)")?;
    let local = crate::sock::inet_sockaddr(family, &st.local.0, st.local.1)?;
    rustix::net::bind(fd, &local).map_err(failed("bind"))?;
    let remote = crate::sock::inet_sockaddr(family, &st.remote.0, st.remote.1)?;
    // The segment size is worked out at connect, from the clamp in force
    // then (the 536-byte default, the option below comes too late): give
    // it the peer's value first, or the connection sends 524-byte segments.
    // (TCP_MAXSEG takes at most 32767: loopback's 65483 gets that.)
    const MAX_USER_MSS: u32 = 32767;
    if let Some(mss) = i32::try_from(st.mss.min(MAX_USER_MSS)).ok().filter(|&m| m >= 88) {
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, mss, "TCP_MAXSEG")?;
    }
    // In repair mode connect sends nothing.
    rustix::net::connect(fd, &remote).map_err(failed("connect"))?;
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MAXSEG, st.mss)];
    if let Some((snd, rcv)) = st.wscale {
        opts.push((TCPOPT_WINDOW, u32::from(snd) | (u32::from(rcv) << 16)));
    }
    if st.sack {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if st.timestamps {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let ob: Vec<u8> = opts.iter().flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes())).collect();
    set(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_OPTIONS, &ob, "TCP_REPAIR_OPTIONS")?;
    if st.timestamps {
        set(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, &st.timestamp.to_ne_bytes(), "TCP_TIMESTAMP")?;
    }
    // Queues: what was received and not read; what was sent and not
    // acknowledged (as sent); the rest is sent normally once repaired.
    q(TCP_RECV_QUEUE)?;
    send_all(fd, &st.recv_queue, "refill of the receive queue")?;
    let sent = st.send_queue.len().saturating_sub(st.unsent as usize);
    q(TCP_SEND_QUEUE)?;
    send_all(fd, &st.send_queue[..sent], "refill of the send queue")?;
    let w: Vec<u8> = st.window.iter().flat_map(|v| v.to_ne_bytes()).collect();
    set(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &w, "TCP_REPAIR_WINDOW")?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, i32::from(st.nodelay), "TCP_NODELAY")?;
    // CLOSING: our FIN went first. Shut now, in repair mode (the FIN is
    // marked as sent, and goes again when its timer fires), so that a
    // FIN the peer sends again meanwhile finds FIN_WAIT1, not an
    // established socket (which would end in LAST_ACK).
    if st.state == CLOSING && st.unsent == 0 {
        crate::sock::shutdown(fd, libc::SHUT_WR)?;
    }
    Ok(sock)
}

/// Buffer sizes that hold the queues of `st` (send, receive), where a
/// new socket's might not: queues are put back whole, not as the peer
/// and the program would drain them.
fn room_needed(st: &TcpState) -> [(i32, usize); 2] {
    const SO_SNDBUFFORCE: i32 = 32;
    const SO_RCVBUFFORCE: i32 = 33;
    // Twice the bytes (the kernel counts its bookkeeping against the
    // size), and some more.
    let room = |len: usize| if len > 16 << 10 { len.saturating_mul(2).saturating_add(256 << 10) } else { 0 };
    [(SO_SNDBUFFORCE, room(st.send_queue.len())), (SO_RCVBUFFORCE, room(st.recv_queue.len()))]
}

/// Make the buffers hold the queues (see [`room_needed`]).
fn make_room(fd: BorrowedFd<'_>, st: &TcpState) -> SysResult<()> {
    for (opt, room) in room_needed(st) {
        if room > 0 {
            let v = i32::try_from(room / 2).unwrap_or(i32::MAX / 2);
            set_int(fd, libc::SOL_SOCKET, opt, v, "setsockopt(SO_SNDBUFFORCE/SO_RCVBUFFORCE)")?;
        }
    }
    Ok(())
}

/// Once the queues are back: the buffer sizes the program had set, and
/// the kernel's tuning of the others (SO_BUF_LOCK as it was).
fn give_back_room(fd: BorrowedFd<'_>, st: &TcpState) -> SysResult<()> {
    if room_needed(st).iter().all(|&(_, room)| room == 0) {
        return Ok(());
    }
    const SO_BUF_LOCK: i32 = 72;
    let sizes: Vec<cryopod_image::SockOpt> = st
        .opts
        .iter()
        .filter(|o| o.level == libc::SOL_SOCKET && [libc::SO_SNDBUF, libc::SO_RCVBUF, SO_BUF_LOCK].contains(&o.name))
        .cloned()
        .collect();
    crate::sock::set_options(fd, &sizes)?;
    if !sizes.iter().any(|o| o.name == SO_BUF_LOCK) {
        set_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, 0, "setsockopt(SO_BUF_LOCK)")?;
    }
    Ok(())
}

/// Leaving repair mode clears SO_REUSEADDR (the kernel's repair mode
/// forces address reuse, and turning it off drops it): set it again where
/// the connection had it.
pub fn keep_reuse(fd: impl AsFd, st: &TcpState) -> SysResult<()> {
    let reuse = st
        .opts
        .iter()
        .any(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR) && o.value.first() == Some(&1));
    if reuse {
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)")?;
    }
    Ok(())
}

/// Leave repair mode (without a window probe), send what had not been
/// sent yet, and close as the connection had: its own FIN sent again, the
/// peer's handed over through `raw` (from [`crate::tcp_fin::sender`], made
/// in the connection's network namespace), in the order of `st.state`.
pub fn finish(fd: impl AsFd, st: &TcpState, raw: Option<&OwnedFd>) -> SysResult<()> {
    let fd = fd.as_fd();
    // TCP_REPAIR_OFF_NO_WP
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, -1, "setsockopt(TCP_REPAIR, off)")?;
    keep_reuse(fd, st)?;
    let sent = st.send_queue.len().saturating_sub(st.unsent as usize);
    send_all(fd, &st.send_queue[sent..], "the unsent data")?;
    give_back_room(fd, st)?;
    let own_fin = || crate::sock::shutdown(fd, libc::SHUT_WR);
    let peer_fin = || match raw {
        Some(r) => crate::tcp_fin::hand_over(r, st),
        None => Err(SysError::new("the peer's FIN (no raw socket)", 0, crate::Errno(libc::EINVAL))),
    };
    match (fin_sent(st.state), fin_received(st.state)) {
        (false, false) => Ok(()),
        (true, false) => own_fin(),
        (false, true) => peer_fin(),
        // Both FINs: the order they crossed in.
        (true, true) if st.state == CLOSING && st.unsent == 0 => peer_fin(),
        (true, true) if st.state == CLOSING => own_fin().and_then(|_| peer_fin()),
        (true, true) => peer_fin().and_then(|_| own_fin()),
    }
}

/// A TCP socket whose connection has ended, in the caller's network
/// namespace: `unread` waits to be read, then `error` if not 0, then the
/// end of the stream; writes fail (EPIPE). Made over loopback with a
/// listener of our own, ending as the original did:
/// - no error: the peer sends `unread` and closes, this end shuts down
///   too, and the peer's acknowledgment ends it (LAST_ACK, then CLOSE);
/// - ECONNRESET: the peer sends `unread` and resets;
/// - EPIPE: the peer sends `unread` and its FIN, then resets (a reset in
///   CLOSE_WAIT);
/// - ECONNREFUSED: a connect to a port of ours that nothing listens on;
/// - ETIMEDOUT: the peer sends `unread`, then drops everything, and this
///   end's one byte times out (TCP_USER_TIMEOUT 1 ms: after the first
///   retransmission, a fifth of a second).
///
/// No packet leaves the namespace.
pub fn ended_connection(family: i32, unread: &[u8], error: i32, opts: &[cryopod_image::SockOpt]) -> SysResult<OwnedFd> {
    let lo: &[u8] =
        if family == libc::AF_INET6 { &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] } else { &[127, 0, 0, 1] };
    let einval = |what: &str| SysError::new(format!("an ended connection: {what}"), 0, crate::Errno(libc::EINVAL));
    let client = crate::sock::inet_raw_socket(family, libc::SOCK_STREAM, "socket(TCP)")?;
    crate::sock::set_options(&client, opts)?;
    if error == libc::ECONNREFUSED {
        if !unread.is_empty() {
            return Err(einval("a refused connect with bytes to read"));
        }
        // Bound, not listening: a SYN to it is answered with a reset.
        let closed = crate::sock::inet_socket(libc::SOCK_STREAM, family, (lo, 0), (false, true), &[])?;
        let (_, port) = crate::sock::inet_name(&closed)?;
        crate::fd::set_status_flags(&client, libc::O_NONBLOCK)?;
        crate::sock::inet_connect_start(&client, family, lo, port)?;
        wait_closed(&client)?;
        return Ok(client);
    }
    let listener = crate::sock::tcp_listen(family, (lo, 0), 1, (false, true), &[])?;
    let (_, port) = crate::sock::inet_name(&listener)?;
    // Room for all of it at once (the peer sends it before closing).
    if unread.len() > 16 << 10 {
        let room = i32::try_from(unread.len().saturating_mul(2)).unwrap_or(i32::MAX / 2);
        set_int(&client, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, room, "setsockopt(SO_RCVBUFFORCE)")?;
    }
    crate::sock::inet_connect(&client, family, lo, port)?;
    let peer = rustix::net::accept(&listener).map_err(failed("accept (loopback)"))?;
    drop(listener);
    let mut off = 0;
    while off < unread.len() {
        off += rustix::net::send(&peer, &unread[off..], SendFlags::empty()).map_err(failed("send (loopback)"))?;
    }
    // A reset overtakes data the receiver has not taken in yet.
    if error != 0 {
        wait_for(&client, "the unread bytes", |c| {
            Ok(rustix::io::ioctl_fionread(c).map_err(failed("ioctl(FIONREAD)"))? as usize >= unread.len())
        })?;
    }
    let reset = |peer: OwnedFd| -> SysResult<()> {
        // Linger 0: closing sends a reset rather than a FIN.
        rustix::net::sockopt::set_socket_linger(&peer, Some(std::time::Duration::ZERO))
            .map_err(failed("setsockopt(SO_LINGER)"))?;
        drop(peer);
        Ok(())
    };
    match error {
        0 => {
            drop(peer);
            crate::sock::shutdown(&client, libc::SHUT_WR)?;
        }
        libc::ECONNRESET => reset(peer)?,
        libc::EPIPE => {
            crate::sock::shutdown(&peer, libc::SHUT_WR)?;
            wait_for(&client, "CLOSE_WAIT", |c| Ok(crate::sock::tcp_state(c)?.0 == CLOSE_WAIT))?;
            reset(peer)?;
        }
        libc::ETIMEDOUT => {
            // Return 0: every segment to the peer is dropped.
            crate::sock::attach_filter(peer.as_fd(), &[6, 0, 0, 0, 0, 0, 0, 0])?;
            set_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 1, "setsockopt(TCP_USER_TIMEOUT)")?;
            rustix::net::send(&client, b"\0", SendFlags::empty()).map_err(failed("send (loopback)"))?;
            wait_closed(&client)?;
            set_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 0, "setsockopt(TCP_USER_TIMEOUT)")?;
            drop(peer);
        }
        _ => return Err(einval(&format!("error {error} cannot be made again"))),
    }
    wait_closed(&client)?;
    Ok(client)
}

/// Wait (a few seconds at most) until `cond` holds on `fd`.
fn wait_for(fd: &OwnedFd, what: &str, cond: impl Fn(&OwnedFd) -> SysResult<bool>) -> SysResult<()> {
    let t = std::time::Instant::now();
    while !cond(fd)? {
        if t.elapsed() > std::time::Duration::from_secs(3) {
            return Err(SysError::new(
                format!("an ended connection (loopback): {what} not there in time"),
                0,
                crate::Errno(libc::ETIMEDOUT),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// Wait until the connection of `fd` is closed (CLOSE).
fn wait_closed(fd: &OwnedFd) -> SysResult<()> {
    wait_for(fd, "the end", |c| Ok(crate::sock::tcp_state(c)?.0 == CLOSE))
}

/// A TCP socket whose connection was reset by its peer, in the caller's
/// network namespace: what a connection the restore cannot give back
/// becomes (its owner's next read says ECONNRESET, then end of file). Made
/// over loopback (a listener of our own that aborts the one connection it
/// accepts); no packet leaves the namespace.
pub fn reset_connection(family: i32) -> SysResult<OwnedFd> {
    let lo: &[u8] =
        if family == libc::AF_INET6 { &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] } else { &[127, 0, 0, 1] };
    let listener = crate::sock::tcp_listen(family, (lo, 0), 1, (false, true), &[])?;
    let (_, port) = crate::sock::inet_name(&listener)?;
    let client = crate::sock::inet_raw_socket(family, libc::SOCK_STREAM, "socket(TCP)")?;
    crate::sock::inet_connect(&client, family, lo, port)?;
    let accepted = rustix::net::accept(&listener).map_err(failed("accept (loopback)"))?;
    // Linger 0: closing sends a reset rather than a FIN.
    rustix::net::sockopt::set_socket_linger(&accepted, Some(std::time::Duration::ZERO))
        .map_err(failed("setsockopt(SO_LINGER)"))?;
    drop(accepted);
    // The reset crosses loopback at once; wait for it to have landed.
    let mut pfd = [rustix::event::PollFd::new(&client, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 };
    rustix::event::poll(&mut pfd, Some(&ts)).map_err(failed("poll (loopback reset)"))?;
    Ok(client)
}
