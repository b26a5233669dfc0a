//! Packet sockets: whole Ethernet frames, sent out of an interface or
//! caught as they arrive. A moving pod's gratuitous ARP is sent this way
//! (see [`crate::arp`]), and so are the frames that reach a pod's old host
//! while it moves: caught there ([`Catcher`]), carried over, and sent into
//! the pod at its new host ([`Sender`]), so that its peers' segments
//! are delivered rather than lost and sent again only after their
//! retransmission timeout. A program's own packet sockets are read
//! ([`binding`]) and made again ([`remake`]) by checkpoints.

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

/// What a packet socket is bound to: (protocol in network byte order, as
/// `socket` took it, and interface index; 0: all interfaces).
pub fn binding(fd: impl std::os::fd::AsFd) -> SysResult<(u16, i32)> {
    // SAFETY: sockaddr_ll is plain data; getsockname writes at most `len`
    // bytes into it.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: as above.
    let r = unsafe { libc::getsockname(fd.as_fd().as_raw_fd(), (&mut a as *mut libc::sockaddr_ll).cast(), &mut len) };
    if r != 0 {
        return Err(SysError::last("getsockname (packet socket)", 0));
    }
    Ok((a.sll_protocol, a.sll_ifindex))
}

/// The name of interface `index` in the calling thread's namespace.
pub fn if_name(index: i32) -> SysResult<String> {
    let mut b = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `b` holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(index as u32, b.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(SysError::last(format!("if_indextoname({index})"), 0));
    }
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

/// A program's packet socket made again in the calling thread's network
/// namespace: `kind` (SOCK_RAW, SOCK_DGRAM), `protocol` as [`binding`]
/// read it, its options, bound to interface `ifname` if one, then its
/// memberships added (each as many times as it had been) and its fanout
/// group joined (`fanout`: PACKET_FANOUT's value; 0: none).
pub fn remake(
    kind: i32,
    protocol: u16,
    ifname: &str,
    opts: &[cryopod_image::SockOpt],
    memberships: &[cryopod_image::PacketMembership],
    fanout: u32,
) -> SysResult<OwnedFd> {
    let sock = crate::sock::any_socket(libc::AF_PACKET, kind, i32::from(protocol), "socket(AF_PACKET)")?;
    crate::sock::set_options(&sock, opts)?;
    if !ifname.is_empty() {
        // SAFETY: sockaddr_ll is plain data; all zero is valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = protocol;
        a.sll_ifindex = if_index(ifname)? as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `a` is a valid sockaddr_ll of `len` bytes.
        if unsafe { libc::bind(sock.as_raw_fd(), (&a as *const libc::sockaddr_ll).cast(), len) } != 0 {
            return Err(SysError::last(format!("bind (packet socket, interface {ifname})"), 0));
        }
    }
    const SOL_PACKET: i32 = 263;
    const PACKET_ADD_MEMBERSHIP: i32 = 1;
    const PACKET_FANOUT: i32 = 18;
    for m in memberships {
        // SAFETY: packet_mreq is plain data; all zero is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = if_index(&m.ifname)? as i32;
        mreq.mr_type = m.kind;
        let n = m.addr.len().min(mreq.mr_address.len());
        mreq.mr_alen = n as u16;
        mreq.mr_address[..n].copy_from_slice(&m.addr[..n]);
        if m.count > 1024 {
            return Err(SysError::new(format!("a packet membership added {} times", m.count), 0, Errno(libc::EINVAL)));
        }
        for _ in 0..m.count {
            let what = format!("setsockopt(PACKET_ADD_MEMBERSHIP, type {}, on {})", m.kind, m.ifname);
            setsockopt(&sock, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, &what)?;
        }
    }
    if fanout != 0 {
        // The group's id as it was: a unique one the kernel chose is asked
        // for by number (PACKET_FANOUT_FLAG_UNIQUEID would choose anew).
        const UNIQUEID: u32 = 0x20 << 24;
        setsockopt(&sock, SOL_PACKET, PACKET_FANOUT, &(fanout & !UNIQUEID), "setsockopt(PACKET_FANOUT)")?;
    }
    Ok(sock)
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

/// A packet socket that sends out of one interface, made ahead and kept:
/// closing a packet socket waits for an RCU grace period
/// (`synchronize_net`: 8-16 ms each on this machine), which must not fall
/// inside a pod's downtime. [`Sender::close_aside`] closes it on a thread
/// of its own.
pub struct Sender {
    sock: OwnedFd,
    index: u32,
    name: String,
}

impl Sender {
    /// For interface `name` of the calling thread's network namespace.
    pub fn new(name: &str) -> SysResult<Sender> {
        Ok(Sender { sock: socket(0)?, index: if_index(name)?, name: name.to_string() })
    }

    pub fn send(&self, frame: &[u8]) -> SysResult<()> {
        send(&self.sock, self.index, frame)
    }

    /// Send `frames` (e.g. into a pod, out of its host-side veth).
    pub fn send_all(&self, frames: &[Vec<u8>]) -> SysResult<()> {
        frames.iter().try_for_each(|f| self.send(f))
    }

    /// The interface's hardware address.
    pub fn hw_addr(&self) -> SysResult<[u8; 6]> {
        hw_addr(&self.sock, &self.name)
    }

    /// Close it without waiting for the grace period.
    pub fn close_aside(self) {
        let _ = std::thread::Builder::new().name("close-packet".into()).spawn(move || drop(self));
    }
}

/// Catches the frames arriving on any interface of the calling thread's
/// network namespace to or from one hardware address, from its creation
/// on (a frame from it is seen as it comes out of its veth: before a
/// locked bridge port drops it).
pub struct Catcher {
    sock: OwnedFd,
    mac: [u8; 6],
}

/// Frames caught, by direction.
#[derive(Debug, Default)]
pub struct Caught {
    /// Sent to the address.
    pub to: Vec<Vec<u8>>,
    /// Sent from it.
    pub from: Vec<Vec<u8>>,
}

impl Caught {
    pub fn bytes(&self) -> usize {
        self.to.iter().chain(&self.from).map(Vec::len).sum()
    }
}

impl Catcher {
    pub fn new(mac: [u8; 6]) -> SysResult<Catcher> {
        // No protocol until the filter is on: nothing else gets in first.
        let sock = socket(0)?;
        let a = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let b = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
        // Destination (bytes 0..6) or source (6..12) address equal to
        // `mac`: take the frame.
        let prog = [
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 2, a),
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 4),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 4, 0, b),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 6),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, a),
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 10),
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
        Ok(Catcher { sock, mac })
    }

    /// The frames caught so far as they arrived on an interface (not as
    /// one sent them on), appended to `out` until it holds `max_bytes`.
    pub fn take(&self, out: &mut Caught, max_bytes: usize) -> SysResult<()> {
        let mut held = out.bytes();
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
            let mut f = buf[..n].to_vec();
            // Caught between veths, a segment's checksum may be left to a
            // device that never computes it: sent again, it would be dropped.
            fill_checksum(&mut f);
            match f.get(6..12) == Some(&self.mac[..]) {
                true => out.from.push(f),
                false => out.to.push(f),
            }
        }
    }
}

/// Compute the TCP or UDP checksum of an IPv4 or IPv6 frame (with no IPv6
/// extension header) in place; other frames are left as they are.
pub fn fill_checksum(f: &mut [u8]) {
    let Some(&[e0, e1]) = f.get(12..14) else { return };
    let (l4, proto, pseudo) = match u16::from_be_bytes([e0, e1]) {
        0x0800 => {
            let Some(&vihl) = f.get(14) else { return };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let Some(ip) = f.get(14..14 + ihl.max(20)) else { return };
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let (proto, frag) = (ip[9], u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff);
            if frag != 0 || total < ihl || 14 + total > f.len() {
                return;
            }
            let mut sum = sum16(&ip[12..20]);
            sum += u32::from(proto) + (total - ihl) as u32;
            (14 + ihl..14 + total, proto, sum)
        }
        0x86dd => {
            let Some(ip) = f.get(14..54) else { return };
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if 54 + len > f.len() {
                return;
            }
            let proto = ip[6];
            let sum = sum16(&ip[8..40]) + u32::from(proto) + len as u32;
            (54..54 + len, proto, sum)
        }
        _ => return,
    };
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return,
    };
    let seg = &mut f[l4];
    if seg.len() < at + 2 {
        return;
    }
    seg[at..at + 2].fill(0);
    let mut sum = pseudo + sum16(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The ones' complement sum of `b` as 16-bit words (odd end padded).
fn sum16(b: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for w in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
        s = (s & 0xffff) + (s >> 16);
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 frame's checksum is filled in, whatever was there: the
    /// ones' complement sum over the pseudo header and the segment then
    /// comes to 0xffff.
    #[test]
    fn a_udp_checksum_is_filled_in() {
        // 10.0.0.1:1000 -> 10.0.0.2:2000, payload "hi".
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = [0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 10, 0xde, 0xad, b'h', b'i']);
        fill_checksum(&mut f);
        // The sum over pseudo header and segment, checksum included, is 0xffff.
        let mut s = sum16(&f[26..34]) + 17 + 10 + sum16(&f[34..]);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(s, 0xffff);
        assert_ne!(&f[40..42], &[0xde, 0xad]);
    }

    /// A frame to the address and one from it are caught, each once, in
    /// its direction; another is not (over loopback in a namespace of
    /// this test's own: frames sent there come back as arriving).
    #[test]
    fn frames_to_and_from_the_address_are_caught_and_no_other() {
        // A network namespace of our own, for this thread only.
        let t = std::thread::spawn(|| {
            // SAFETY: unshare for this thread (a new network namespace).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
            if !up.is_ok_and(|s| s.success()) {
                return None;
            }
            let mac = [2, 0x11, 0x22, 0x33, 0x44, 0x55];
            let c = Catcher::new(mac).ok()?;
            let frame = |dst: [u8; 6], src: [u8; 6]| {
                let mut f = vec![0u8; 60];
                f[..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&src);
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f
            };
            let other = [2, 9, 9, 9, 9, 9];
            Sender::new("lo").ok()?.send_all(&[frame(mac, other), frame(other, mac), frame(other, other)]).ok()?;
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut got = Caught::default();
            c.take(&mut got, 1 << 20).ok()?;
            Some(got)
        });
        let Some(got) = t.join().unwrap() else {
            eprintln!("no network namespace of our own here: not run");
            return;
        };
        assert_eq!(got.to.len(), 1, "{got:?}");
        assert_eq!(got.from.len(), 1, "{got:?}");
    }
}
