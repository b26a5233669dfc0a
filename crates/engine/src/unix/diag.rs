//! sock_diag for unix sockets: one dump per network namespace gives, for
//! every socket, its type, state, bound name, peer, a listener's pending
//! connections and backlog, queue lengths and shutdown state.

use crate::{EngineError, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

/// What sock_diag says about one unix socket.
#[derive(Debug, Clone, Default)]
pub struct Diag {
    pub kind: i32,
    pub state: u8,
    pub name: Vec<u8>,
    pub peer: u32,
    pub pending: Vec<u32>,
    /// Listener: pending count and backlog; others: bytes queued to read
    /// and bytes sent but not yet read by the peer.
    pub rqlen: (u32, u32),
    pub shutdown: u8,
}

fn err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Other(format!("sock_diag: {what}"))
}

/// Dump every unix socket of the calling thread's network namespace.
pub fn dump() -> Result<HashMap<u32, Diag>> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(err)?;
    sock.bind_auto().map_err(err)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let req = UnixRequest {
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::NAME | ShowFlags::PEER | ShowFlags::ICONS | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    };
    let mut packet = NetlinkMessage::new(hdr, SockDiagMessage::UnixRequest(req).into());
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    sock.send(&buf, 0).map_err(err)?;
    let mut out = HashMap::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0).map_err(err)?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n]).map_err(err)?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(err(format!("{e:?}"))),
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r)) => {
                    let mut d = Diag { kind: i32::from(r.header.kind), state: r.header.state, ..Default::default() };
                    for nla in &r.nlas {
                        match nla {
                            Nla::Name(UnixDiagName::Pathname(p)) => d.name = p.as_bytes().to_vec(),
                            Nla::Name(UnixDiagName::Abstract(a)) => {
                                d.name = std::iter::once(0).chain(a.iter().copied()).collect()
                            }
                            Nla::Peer(p) => d.peer = *p,
                            Nla::PendingConnections(v) => d.pending = v.clone(),
                            Nla::ReceiveQueueLength(a, b) => d.rqlen = (*a, *b),
                            Nla::Shutdown(s) => d.shutdown = *s,
                            _ => {}
                        }
                    }
                    out.insert(r.header.inode, d);
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}
