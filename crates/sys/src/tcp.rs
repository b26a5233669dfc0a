//! TCP_REPAIR: reading an established connection's sequence numbers,
//! queues, negotiated options and window without the peer noticing, and
//! making a socket that is that connection again (no handshake).

use crate::{SysError, SysResult};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

fn check(r: i64, what: &str) -> SysResult<i64> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(r)
}

use crate::sock::{get_opt as get, get_u32, set_int, set_opt as set};

/// Put a socket into or out of repair mode.
pub fn set_repair(fd: i32, on: bool) -> SysResult<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, i32::from(on), "setsockopt(TCP_REPAIR)")
}

fn ioctl_int(fd: i32, req: u64, what: &str) -> SysResult<u32> {
    let mut v: i32 = 0;
    // SAFETY: the request writes one int.
    check(unsafe { libc::ioctl(fd, req as _, &mut v) } as i64, what)?;
    Ok(v as u32)
}

fn peek(fd: i32, len: usize, what: &str) -> SysResult<Vec<u8>> {
    let mut b = vec![0u8; len];
    if len == 0 {
        return Ok(b);
    }
    // SAFETY: `b` is a live buffer of `len` bytes.
    let r = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), len, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    let n = check(r as i64, what)? as usize;
    b.truncate(n);
    Ok(b)
}

/// Read connection `fd` (a copy of the owner's; its owner is stopped). The
/// socket is left in repair mode: closing it then sends nothing to the
/// peer; [`set_repair`] off hands it back unchanged.
pub fn dump(fd: i32, family: i32) -> SysResult<TcpState> {
    set_repair(fd, true)?;
    let r = (|| {
        let mut st = TcpState {
            family,
            local: crate::sock::inet_name(fd)?,
            remote: crate::sock::inet_name_of_peer(fd)?,
            ..Default::default()
        };
        let outq = ioctl_int(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")?;
        st.unsent = ioctl_int(fd, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")?;
        let inq = ioctl_int(fd, libc::FIONREAD, "ioctl(SIOCINQ)")?;
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        st.snd_seq = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (send)")?;
        st.send_queue = peek(fd, outq as usize, "peek of the send queue")?;
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
        st.rcv_seq = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ (receive)")?;
        st.recv_queue = peek(fd, inq as usize, "peek of the receive queue")?;
        // SAFETY: tcp_info is plain data filled by the kernel.
        let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
        // SAFETY: a byte view of `ti`, which outlives it.
        let tb = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut ti as *mut libc::tcp_info).cast::<u8>(),
                std::mem::size_of::<libc::tcp_info>(),
            )
        };
        get(fd, libc::IPPROTO_TCP, libc::TCP_INFO, tb, "TCP_INFO")?;
        st.mss = get_u32(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG")?;
        st.sack = ti.tcpi_options & TCPI_OPT_SACK != 0;
        st.timestamps = ti.tcpi_options & TCPI_OPT_TIMESTAMPS != 0;
        if ti.tcpi_options & TCPI_OPT_WSCALE != 0 {
            // tcpi_snd_wscale and tcpi_rcv_wscale share one byte (4 bits each).
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
        Ok(st)
    })();
    if r.is_err() {
        let _ = set_repair(fd, false);
    }
    r
}

fn send_all(fd: i32, data: &[u8], what: &str) -> SysResult<()> {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: a live slice.
        let r = unsafe { libc::send(fd, data[off..].as_ptr().cast(), data.len() - off, libc::MSG_DONTWAIT) };
        off += check(r as i64, what)? as usize;
    }
    Ok(())
}

/// Make the connection `st` again (family AF_INET or AF_INET6), in the
/// caller's network namespace. It stays in repair mode (silent) until
/// [`finish`], so that the other end of a connection inside the same
/// checkpoint can be made first.
pub fn restore(st: &TcpState) -> SysResult<OwnedFd> {
    let family = st.family;
    // SAFETY: integer arguments.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(raw as i64, "socket(TCP)")?;
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
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
    let (local, llen) = crate::sock::inet_sockaddr(family, &st.local.0, st.local.1)?;
    // SAFETY: a valid address of `llen` bytes.
    check(unsafe { libc::bind(fd, (&local as *const libc::sockaddr_storage).cast(), llen) } as i64, "bind")?;
    let (remote, rlen) = crate::sock::inet_sockaddr(family, &st.remote.0, st.remote.1)?;
    // SAFETY: as above; in repair mode connect sends nothing.
    check(unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_storage).cast(), rlen) } as i64, "connect")?;
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
    Ok(sock)
}

/// Leave repair mode (without a window probe) and send what had not been
/// sent yet.
pub fn finish(fd: i32, st: &TcpState) -> SysResult<()> {
    // TCP_REPAIR_OFF_NO_WP
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, -1, "setsockopt(TCP_REPAIR, off)")?;
    let sent = st.send_queue.len().saturating_sub(st.unsent as usize);
    send_all(fd, &st.send_queue[sent..], "the unsent data")
}
