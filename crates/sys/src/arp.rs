//! Gratuitous ARP: a pod that arrived on another host announces its
//! address from its own interface, so that the bridges and hosts of its
//! segment learn at once which port its (unchanged) hardware address is
//! behind now, instead of sending its traffic to the old one until their
//! entries age out. An ARP request for its own address, as Linux sends
//! with `arp_notify`.

use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

/// The frame announcing `ip` at hardware address `mac`.
pub fn frame(mac: [u8; 6], ip: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    // Target hardware address zero, target address our own.
    f[38..42].copy_from_slice(&ip);
    f
}

/// Announce `ip` on interface `ifname` of the calling thread's network
/// namespace, `times` times 50 ms apart (a frame can meet a bridge port
/// still coming up).
pub fn announce(ifname: &str, ip: [u8; 4], times: u32) -> SysResult<()> {
    let name = std::ffi::CString::new(ifname).map_err(|_| SysError::new("interface name", 0, Errno(libc::EINVAL)))?;
    // SAFETY: a NUL-terminated name; returns 0 on failure.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(SysError::last(format!("if_nametoindex({ifname})"), 0));
    }
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let raw =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
    if raw < 0 {
        return Err(SysError::last("socket(AF_PACKET)", 0));
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; the name fits (checked) with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        return Err(SysError::new(format!("interface name {ifname}"), 0, Errno(libc::EINVAL)));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req`'s hardware address union member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(SysError::last(format!("SIOCGIFHWADDR({ifname})"), 0));
    }
    // SAFETY: the union member the ioctl just filled.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }
    let f = frame(mac, ip);
    // SAFETY: sockaddr_ll is plain data, filled below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].fill(0xff);
    for i in 0..times {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: `f` and `to` outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(SysError::last(format!("sending a gratuitous ARP on {ifname}"), 0));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_frame_is_an_arp_request_for_our_own_address() {
        let f = super::frame([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], [10, 77, 1, 9]);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &f[38..42], "sender and target address alike");
        assert_eq!(&f[32..38], &[0; 6]);
    }
}
