//! Packet sockets: whole Ethernet frames, sent out of an interface or
//! caught as they arrive. A moving pod's gratuitous ARP is sent this way
//! (see [`crate::arp`]), and so are the frames that reach a pod's old host
//! while it moves: caught there ([`Catcher`]), carried over, and sent into
//! the pod at its new host ([`send_frames`]), so that its peers' segments
//! are delivered rather than lost and sent again only after their
//! retransmission timeout.

use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ALL: u16 = 0x0003;
/// `sll_pkttype` of a frame we sent ourselves.
const PACKET_OUTGOING: u8 = 4;
/// The largest frame taken.
const MAX_FRAME: usize = 65536;

/// A new packet socket for `protocol` (0: none, until bound), non-blocking.
pub fn socket(protocol: u16) -> SysResult<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, flags, i32::from(protocol.to_be())) };
    if raw < 0 {
        return Err(SysError::last("socket(AF_PACKET)", 0));
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The index of interface `name` in the calling thread's namespace.
pub fn if_index(name: &str) -> SysResult<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| SysError::new("interface name", 0, Errno(libc::EINVAL)))?;
    // SAFETY: a NUL-terminated name; returns 0 on failure.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(SysError::last(format!("if_nametoindex({name})"), 0)),
        i => Ok(i),
    }
}

/// The hardware address of interface `name` (through any socket `sock`).
pub fn hw_addr(sock: &OwnedFd, name: &str) -> SysResult<[u8; 6]> {
    // SAFETY: ifreq is plain data; the name fits (checked) with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(SysError::new(format!("interface name {name}"), 0, Errno(libc::EINVAL)));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req`'s hardware address union member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(SysError::last(format!("SIOCGIFHWADDR({name})"), 0));
    }
    // SAFETY: the union member the ioctl just filled.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Send `frame` (a whole Ethernet frame) out of interface `index`.
pub fn send(sock: &OwnedFd, index: u32, frame: &[u8]) -> SysResult<()> {
    // SAFETY: sockaddr_ll is plain data, filled below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    if let Some(dst) = frame.get(..6) {
        to.sll_addr[..6].copy_from_slice(dst);
    }
    // SAFETY: `frame` and `to` outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(SysError::last(format!("sending a frame on interface {index}"), 0));
    }
    Ok(())
}

/// Send `frames` out of interface `name` (a pod's host-side veth: into
/// the pod).
pub fn send_frames(name: &str, frames: &[Vec<u8>]) -> SysResult<()> {
    let sock = socket(0)?;
    let index = if_index(name)?;
    frames.iter().try_for_each(|f| send(&sock, index, f))
}

/// Catches the frames arriving on any interface of the calling thread's
/// network namespace for one hardware address, from its creation on.
pub struct Catcher {
    sock: OwnedFd,
}

impl Catcher {
    pub fn new(mac: [u8; 6]) -> SysResult<Catcher> {
        // No protocol until the filter is on: nothing else gets in first.
        let sock = socket(0)?;
        let a = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let b = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
        // Destination address (bytes 0..6) equal to `mac`: take the frame.
        let prog = [
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, a),
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 4),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, b),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, MAX_FRAME as u32),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        ];
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        setsockopt(&sock, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog, "SO_ATTACH_FILTER")?;
        let size: i32 = 4 << 20;
        // (Beyond the system's limit: we are root.)
        let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size, "SO_RCVBUFFORCE");
        // SAFETY: sockaddr_ll is plain data.
        let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        at.sll_family = libc::AF_PACKET as u16;
        at.sll_protocol = ETH_P_ALL.to_be();
        // SAFETY: `at` is a valid sockaddr_ll of the length given.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&at as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(SysError::last("bind(AF_PACKET)", 0));
        }
        Ok(Catcher { sock })
    }

    /// The frames caught so far that arrived from elsewhere (not sent from
    /// here), appended to `out` until it holds `max_bytes`.
    pub fn take(&self, out: &mut Vec<Vec<u8>>, max_bytes: usize) -> SysResult<()> {
        let mut held: usize = out.iter().map(Vec::len).sum();
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            // SAFETY: sockaddr_ll is plain data, filled by the kernel.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are ours, with their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = Errno::last();
                return match e.0 {
                    libc::EAGAIN => Ok(()),
                    libc::EINTR => continue,
                    _ => Err(SysError::new("receiving caught frames", 0, e)),
                };
            }
            let n = n as usize;
            if from.sll_pkttype == PACKET_OUTGOING || held + n > max_bytes {
                continue;
            }
            held += n;
            out.push(buf[..n].to_vec());
        }
    }
}

fn setsockopt<T>(sock: &OwnedFd, level: i32, name: i32, value: &T, what: &str) -> SysResult<()> {
    // SAFETY: `value` is a live T of the size given, read by the kernel.
    let r = unsafe {
        libc::setsockopt(sock.as_raw_fd(), level, name, (value as *const T).cast(), std::mem::size_of::<T>() as u32)
    };
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(())
}
