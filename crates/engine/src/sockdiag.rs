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
