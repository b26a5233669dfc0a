//! The peer's FIN of a restored half-closed connection. TCP_REPAIR can
//! make a connection established, not one that has received a FIN: the
//! restore hands the socket, once out of repair mode, the segment the peer
//! had sent (FIN and ACK, at the sequence after the data received, the
//! acknowledgment where the peer had left it, its window), from a raw
//! socket in the connection's network namespace. The destination is this
//! namespace's own address, so the segment crosses loopback and nothing
//! leaves the namespace; the socket answers the peer with an ACK of a FIN
//! the peer knows was received.

use crate::tcp::TcpState;
use crate::{Errno, SysError, SysResult};
use rustix::net::{AddressFamily, SocketAddrV4, SocketAddrV6, SocketFlags, SocketType};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

/// The addresses of `st` as they travel: IPv4 for an IPv4 connection and
/// for an IPv6 socket's IPv4-mapped one, else IPv6.
enum Wire {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn wire(st: &TcpState) -> SysResult<Wire> {
    let bad = || SysError::new("the peer's FIN (bad addresses)", 0, Errno(libc::EINVAL));
    let v4 = |a: &[u8]| <[u8; 4]>::try_from(a).ok().map(Ipv4Addr::from);
    let v6 = |a: &[u8]| <[u8; 16]>::try_from(a).ok().map(Ipv6Addr::from);
    if st.family == libc::AF_INET {
        return Ok(Wire::V4(v4(&st.remote.0).ok_or_else(bad)?, v4(&st.local.0).ok_or_else(bad)?));
    }
    let (src, dst) = (v6(&st.remote.0).ok_or_else(bad)?, v6(&st.local.0).ok_or_else(bad)?);
    Ok(match (src.to_ipv4_mapped(), dst.to_ipv4_mapped()) {
        (Some(s), Some(d)) => Wire::V4(s, d),
        _ => Wire::V6(src, dst),
    })
}

/// A raw socket that sends whole IP packets (IPPROTO_RAW: the header is
/// ours) of the family `st` travels in, made in the caller's network
/// namespace.
pub fn sender(st: &TcpState) -> SysResult<OwnedFd> {
    let family = match wire(st)? {
        Wire::V4(..) => AddressFamily::INET,
        Wire::V6(..) => AddressFamily::INET6,
    };
    rustix::net::socket_with(family, SocketType::RAW, SocketFlags::CLOEXEC, Some(rustix::net::ipproto::RAW))
        .map_err(|e| SysError::new("socket(SOCK_RAW, IPPROTO_RAW)", 0, e.into()))
}

/// The one's complement sum of `parts` (the Internet checksum).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
            sum = sum.wrapping_add(u32::from(w));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The peer's FIN segment (TCP header only, checksum over `pseudo`).
fn fin_segment(st: &TcpState, pseudo: &[u8]) -> [u8; 20] {
    let fin_seq = st.rcv_seq;
    let ack = st.snd_seq.wrapping_sub(st.send_queue.len() as u32);
    let shift = st.wscale.map_or(0, |w| w.0).min(14);
    let window = (st.window[1] >> shift).min(0xffff) as u16;
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&st.remote.1.to_be_bytes());
    t[2..4].copy_from_slice(&st.local.1.to_be_bytes());
    t[4..8].copy_from_slice(&fin_seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x11; // FIN | ACK
    t[14..16].copy_from_slice(&window.to_be_bytes());
    let sum = checksum(&[pseudo, &t]);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// Hand the restored connection `st` (out of repair mode) its peer's FIN
/// through `raw` (see [`sender`]).
pub fn hand_over(raw: &OwnedFd, st: &TcpState) -> SysResult<()> {
    let fail = |e: rustix::io::Errno| SysError::new("sendto (the peer's FIN)", 0, e.into());
    let flags = rustix::net::SendFlags::empty();
    let n = match wire(st)? {
        Wire::V4(src, dst) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
            let tcp = fin_segment(st, &pseudo);
            let mut p = [0u8; 40];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&40u16.to_be_bytes());
            p[6] = 0x40; // don't fragment
            p[8] = 64;
            p[9] = libc::IPPROTO_TCP as u8;
            p[12..16].copy_from_slice(&src.octets());
            p[16..20].copy_from_slice(&dst.octets());
            let sum = checksum(&[&p[..20]]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p[20..].copy_from_slice(&tcp);
            rustix::net::sendto(raw, &p, flags, &SocketAddrV4::new(dst, 0)).map_err(fail)?
        }
        Wire::V6(src, dst) => {
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, libc::IPPROTO_TCP as u8]);
            let tcp = fin_segment(st, &pseudo);
            let mut p = [0u8; 60];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&20u16.to_be_bytes());
            p[6] = libc::IPPROTO_TCP as u8;
            p[7] = 64;
            p[8..24].copy_from_slice(&src.octets());
            p[24..40].copy_from_slice(&dst.octets());
            p[40..].copy_from_slice(&tcp);
            rustix::net::sendto(raw, &p, flags, &SocketAddrV6::new(dst, 0, 0, 0)).map_err(fail)?
        }
    };
    if n == 0 {
        return Err(SysError::new("sendto (the peer's FIN): nothing sent", 0, Errno(libc::EIO)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment with its own checksum in place sums to zero.
    #[test]
    fn checksum_of_a_checksummed_segment_is_zero() {
        let st = TcpState {
            family: libc::AF_INET,
            local: (vec![127, 0, 0, 1], 80),
            remote: (vec![127, 0, 0, 2], 5555),
            snd_seq: 1000,
            rcv_seq: 7,
            window: [0, 65535 << 2, 0, 0, 0],
            wscale: Some((2, 7)),
            ..Default::default()
        };
        let pseudo = [127, 0, 0, 2, 127, 0, 0, 1, 0, 6, 0, 20];
        let t = fin_segment(&st, &pseudo);
        assert_eq!(checksum(&[&pseudo, &t]), 0);
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 7);
        assert_eq!(u16::from_be_bytes([t[14], t[15]]), 65535);
    }
}
