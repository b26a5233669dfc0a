//! One sock_diag exchange (a dump request, its answers until Done) in the
//! calling thread's network namespace, for the unix table
//! (`unix::diag`), for TCP listeners with connections waiting and for the
//! shutdown state of UDP sockets.

use crate::{EngineError, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

pub fn err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Other(format!("sock_diag: {what}"))
}

/// Send dump request `req`; hand every answer to `each`.
pub fn dump(req: SockDiagMessage, mut each: impl FnMut(SockDiagMessage)) -> Result<()> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(err)?;
    sock.bind_auto().map_err(err)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(hdr, req.into());
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    sock.send(&buf, 0).map_err(err)?;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0).map_err(err)?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n]).map_err(err)?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(err(format!("{e:?}"))),
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// The shutdown bits (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2) of every UDP socket
/// of `family` in the calling thread's network namespace that has some,
/// by inode (bound sockets only: an unbound one is in no table).
pub fn udp_shutdowns(family: i32) -> Result<std::collections::HashMap<u32, u8>> {
    use netlink_packet_sock_diag::inet::nlas::Nla;
    let id = if family == libc::AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() };
    let req = InetRequest {
        family: family as u8,
        protocol: libc::IPPROTO_UDP as u8,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: id,
    };
    let mut out = std::collections::HashMap::new();
    dump(SockDiagMessage::InetRequest(req), |m| {
        if let SockDiagMessage::InetResponse(r) = m {
            let bits = r.nlas.iter().find_map(|n| if let Nla::Shutdown(s) = n { Some(*s) } else { None });
            if let Some(b) = bits.filter(|&b| b != 0) {
                out.insert(r.header.inode, b);
            }
        }
    })?;
    Ok(out)
}

/// TCP listeners (IPv4 and IPv6) of the calling thread's network namespace
/// with connections waiting to be accepted: (inode, how many).
pub fn tcp_listeners_waiting() -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for (family, id) in [(libc::AF_INET as u8, SocketId::new_v4()), (libc::AF_INET6 as u8, SocketId::new_v6())] {
        let req = InetRequest {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: id,
        };
        dump(SockDiagMessage::InetRequest(req), |m| {
            if let SockDiagMessage::InetResponse(r) = m {
                if r.header.recv_queue > 0 {
                    out.push((r.header.inode, r.header.recv_queue));
                }
            }
        })?;
    }
    Ok(out)
}

/// What packet_diag tells of one packet socket beyond its options.
#[derive(Debug, Default)]
pub struct PacketDiag {
    /// Memberships (PACKET_ADD_MEMBERSHIP): (interface index, PACKET_MR_*
    /// type, times added, address).
    pub memberships: Vec<(i32, u16, u32, Vec<u8>)>,
    /// A receive or transmit ring is set up.
    pub ring: bool,
}

/// packet_diag's record of packet socket `ino` in the calling thread's
/// network namespace (the netlink crates have no packet_diag: the request
/// and the answers are laid out here, every length checked).
pub fn packet(ino: u32) -> Result<PacketDiag> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const PACKET_SHOW_MCLIST: u32 = 0x02;
    const PACKET_SHOW_RING_CFG: u32 = 0x04;
    const PACKET_DIAG_MCLIST: u16 = 1;
    const PACKET_DIAG_RX_RING: u16 = 2;
    const PACKET_DIAG_TX_RING: u16 = 3;
    /// struct packet_diag_msg; struct packet_diag_mclist.
    const MSG: usize = 16;
    const MCLIST: usize = 44;
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    // nlmsghdr, then struct packet_diag_req.
    let mut req = Vec::with_capacity(36);
    req.extend_from_slice(&36u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&[0; 8]);
    req.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&(PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(err)?;
    sock.bind_auto().map_err(err)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    sock.send(&req, 0).map_err(err)?;
    let mut rx = vec![0u8; 1 << 16];
    let mut out = PacketDiag::default();
    loop {
        let n = sock.recv(&mut &mut rx[..], 0).map_err(err)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&rx, off).unwrap_or(0) as usize;
            let kind = u16_at(&rx, off + 4).unwrap_or(0);
            if len < 16 || off + len > n {
                return Err(err("a packet_diag answer of a bad length"));
            }
            let body = &rx[off + 16..off + len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = u32_at(body, 0).map_or(0, |e| -(e as i32));
                    return Err(err(format!("packet_diag: {}", cryopod_sys::Errno(e))));
                }
                _ if u32_at(body, 4) == Some(ino) => {
                    let mut at = MSG;
                    while at + 4 <= body.len() {
                        let alen = usize::from(u16_at(body, at).unwrap_or(0));
                        let atype = u16_at(body, at + 2).unwrap_or(0) & 0x3fff;
                        if alen < 4 || at + alen > body.len() {
                            return Err(err("a packet_diag attribute of a bad length"));
                        }
                        let data = &body[at + 4..at + alen];
                        match atype {
                            PACKET_DIAG_MCLIST => {
                                for m in data.chunks_exact(MCLIST) {
                                    let index = u32_at(m, 0).unwrap_or(0) as i32;
                                    let count = u32_at(m, 4).unwrap_or(0);
                                    let mtype = u16_at(m, 8).unwrap_or(0);
                                    let addr_len = usize::from(u16_at(m, 10).unwrap_or(0)).min(32);
                                    out.memberships.push((index, mtype, count, m[12..12 + addr_len].to_vec()));
                                }
                            }
                            PACKET_DIAG_RX_RING | PACKET_DIAG_TX_RING => out.ring = true,
                            _ => {}
                        }
                        at += alen.div_ceil(4) * 4;
                    }
                }
                _ => {}
            }
            off += len.div_ceil(4) * 4;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}
