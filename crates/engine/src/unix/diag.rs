//! sock_diag for unix sockets: one dump per network namespace gives, for
//! every socket, its type, state, bound name, peer, a listener's pending
//! connections and backlog, queue lengths and shutdown state.

use crate::Result;
use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
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

/// Dump every unix socket of the calling thread's network namespace.
pub fn dump() -> Result<HashMap<u32, Diag>> {
    dump_states(u32::MAX)
}

/// Dump the unix sockets of the calling thread's network namespace whose
/// state's bit is in `states` (1 << TCP_LISTEN: the listeners).
pub fn dump_states(states: u32) -> Result<HashMap<u32, Diag>> {
    let req = UnixRequest {
        state_flags: StateFlags::from_bits_retain(states),
        inode: 0,
        show_flags: ShowFlags::NAME | ShowFlags::PEER | ShowFlags::ICONS | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    };
    let mut out = HashMap::new();
    crate::sockdiag::dump(SockDiagMessage::UnixRequest(req), |m| {
        if let SockDiagMessage::UnixResponse(r) = m {
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
    })?;
    Ok(out)
}
