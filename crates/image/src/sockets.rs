//! The records of sockets in an image: unix sockets (with their queued
//! messages, the files and credentials those carry, filters), TCP
//! connections as TCP_REPAIR reads them, netlink sockets, and the socket
//! options kept for internet, raw and packet sockets. Kept apart from
//! [`crate::records`], which names them in `FileKind` and validates them.

use crate::records::FileKind;
use serde::{Deserialize, Serialize};

/// A unix domain socket, as sock_diag and the socket itself describe it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct UnixSock {
    /// Inode number (how peers and pending connections refer to it).
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: i32,
    /// Kernel state: 10 listening, 1 connected, 7 unconnected.
    pub state: u8,
    /// Bound address: path bytes, or a NUL then an abstract name; empty if
    /// unbound. An accepted socket carries its listener's address.
    pub name: Vec<u8>,
    /// Inode of the peer (0: none).
    pub peer: u32,
    /// A listener's backlog.
    pub backlog: u32,
    /// A listener's not yet accepted connections: inodes of their clients,
    /// in queue order.
    pub pending: Vec<u32>,
    /// Unread messages (for a stream socket, unread bytes in chunks).
    pub queued: Vec<Vec<u8>>,
    /// For each queued datagram, its sender's address (empty: unnamed).
    pub queued_from: Vec<Vec<u8>>,
    /// For each queued message, the files it carries (SCM_RIGHTS: indices
    /// into the manifest's files, in order); empty when none carries any.
    pub queued_fds: Vec<Vec<u32>>,
    /// For each queued message, its sender's (pid, uid, gid), recorded
    /// when the socket receives credentials (SO_PASSCRED); else empty.
    pub queued_creds: Vec<(i32, u32, u32)>,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) bits.
    pub shutdown: u8,
    /// SO_PEERCRED: the process that connected or listened, (pid, uid, gid);
    /// pid 0 when it is outside the checkpoint.
    pub peer_cred: (i32, u32, u32),
    pub passcred: bool,
    /// The socket file a bound listener or datagram socket made: (mode
    /// bits, uid, gid), set again after bind.
    pub file: Option<(u32, u32, u32)>,
    /// For a name relative to the binder's working directory: that
    /// directory (a path of the tree), where the name is bound and
    /// reached again; empty otherwise.
    pub rel_dir: String,
    /// For a socket connected to a peer outside the checkpoint, recorded
    /// on request (`--external-unix`): the peer's name (a path or an
    /// abstract name; a stream's peer carries its listener's), connected
    /// to again at restore. Empty otherwise.
    pub external: Vec<u8>,
    /// A classic BPF filter (struct sock_filter instructions; empty:
    /// none), and whether it is locked.
    pub filter: (Vec<u8>, bool),
}

/// A TCP connection as TCP_REPAIR reads it: established, or half-closed
/// (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING: one or both ends sent
/// their FIN, and the socket is still open).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TcpConn {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// (address bytes, port) of both ends.
    pub local: (Vec<u8>, u16),
    pub remote: (Vec<u8>, u16),
    /// The sequence numbers after the queued data (a FIN not counted).
    pub snd_seq: u32,
    pub rcv_seq: u32,
    /// The state it was in (TCP_ESTABLISHED, TCP_FIN_WAIT1, ...): whether
    /// this end sent its FIN, and whether it received the peer's.
    pub state: u8,
    /// Sent but not acknowledged, then `unsent` bytes not yet sent.
    pub send_queue: Vec<u8>,
    pub unsent: u32,
    pub recv_queue: Vec<u8>,
    pub mss: u32,
    pub wscale: Option<(u8, u8)>,
    pub sack: bool,
    pub timestamps: bool,
    pub timestamp: u32,
    pub window: [u32; 5],
    pub nodelay: bool,
    pub opts: Vec<SockOpt>,
}

/// A socket option that differs from a new socket's (see [`SOCK_OPTS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// The socket options kept, in the order they are set again: (level,
/// option, most bytes of its value). The send and receive buffer sizes
/// only where the program set them (the SO_BUF_LOCK bits), which come
/// last.
pub const SOCK_OPTS: [(i32, i32, usize); 43] = [
    (1, 25, 16), // SO_BINDTODEVICE (before bind)
    (1, 2, 4),   // SO_REUSEADDR (before bind; an accepted socket's)
    (1, 15, 4),  // SO_REUSEPORT (before bind)
    (0, 15, 4),  // IP_FREEBIND (before bind)
    (1, 6, 4),   // SO_BROADCAST
    (1, 9, 4),   // SO_KEEPALIVE
    (1, 13, 8),  // SO_LINGER
    (1, 36, 4),  // SO_MARK
    (1, 18, 4),  // SO_RCVLOWAT
    (1, 10, 4),  // SO_OOBINLINE
    (1, 20, 16), // SO_RCVTIMEO
    (1, 21, 16), // SO_SNDTIMEO
    (1, 29, 4),  // SO_TIMESTAMP
    (6, 1, 4),   // TCP_NODELAY
    (6, 3, 4),   // TCP_CORK
    (6, 4, 4),   // TCP_KEEPIDLE
    (6, 5, 4),   // TCP_KEEPINTVL
    (6, 6, 4),   // TCP_KEEPCNT
    (6, 9, 4),   // TCP_DEFER_ACCEPT
    (6, 18, 4),  // TCP_USER_TIMEOUT
    (6, 13, 16), // TCP_CONGESTION
    (6, 25, 4),  // TCP_NOTSENT_LOWAT
    (0, 1, 4),   // IP_TOS
    (0, 2, 4),   // IP_TTL
    (0, 33, 4),  // IP_MULTICAST_TTL
    (0, 34, 4),  // IP_MULTICAST_LOOP
    (41, 16, 4), // IPV6_UNICAST_HOPS
    (41, 67, 4), // IPV6_TCLASS
    (1, 12, 4),  // SO_PRIORITY (always, after the TOS, which sets it too)
    (1, 7, 4),   // SO_SNDBUF (if locked)
    (1, 8, 4),   // SO_RCVBUF (if locked)
    (1, 72, 4),  // SO_BUF_LOCK
    // A classic BPF filter, as SO_GET_FILTER reads it (struct sock_filter
    // instructions, BPF_MAXINSNS at most), then its lock.
    (1, 26, 4096 * 8), // SO_ATTACH_FILTER
    (1, 44, 4),        // SO_LOCK_FILTER
    // Raw IP sockets.
    (0, 3, 4),   // IP_HDRINCL
    (255, 1, 4), // ICMP_FILTER (SOL_RAW)
    (58, 1, 32), // ICMP6_FILTER
    (41, 7, 4),  // IPV6_CHECKSUM
    // Packet sockets.
    (263, 10, 4), // PACKET_VERSION
    (263, 8, 4),  // PACKET_AUXDATA
    (263, 9, 4),  // PACKET_ORIGDEV
    (263, 12, 4), // PACKET_RESERVE
    (263, 23, 4), // PACKET_IGNORE_OUTGOING
];

/// A netlink socket: its protocol and type, the port id it is bound to,
/// the multicast groups it joined, where it is connected, and its
/// SOL_NETLINK flags. Its unread messages are not carried (only the
/// kernel could send them again, and a program tells its messages by
/// their sender): one with messages waiting is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct NetlinkSock {
    /// NETLINK_ROUTE, NETLINK_GENERIC, NETLINK_KOBJECT_UEVENT, ...
    pub protocol: i32,
    /// SOCK_RAW or SOCK_DGRAM.
    pub kind: i32,
    /// The port id (0: never bound nor used).
    pub portid: u32,
    /// The groups joined, as NETLINK_LIST_MEMBERSHIPS gives them: bit
    /// `g - 1` of the words for group `g`.
    pub groups: Vec<u32>,
    /// connect()'s destination: (port id, group).
    pub peer: (u32, u32),
    /// SOL_NETLINK flags that are on (see [`NETLINK_FLAGS`]).
    pub flags: Vec<i32>,
    /// A classic BPF filter (struct sock_filter instructions; empty:
    /// none), and whether it is locked.
    pub filter: (Vec<u8>, bool),
}

/// Is `f` a classic BPF program an image may hold (whole instructions,
/// BPF_MAXINSNS at most)?
pub fn filter_ok(f: &[u8]) -> bool {
    f.len().is_multiple_of(8) && f.len() <= 4096 * 8
}

/// The SOL_NETLINK flags kept: PKTINFO, BROADCAST_ERROR, NO_ENOBUFS,
/// LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, GET_STRICT_CHK.
pub const NETLINK_FLAGS: [i32; 7] = [3, 4, 5, 8, 10, 11, 12];

/// The most words of netlink group bits an image may hold (32768 groups).
pub const NETLINK_GROUP_WORDS_MAX: usize = 1024;

impl FileKind {
    /// The options of an internet socket (none for other files).
    pub fn sock_opts(&self) -> &[SockOpt] {
        match self {
            FileKind::Udp { opts, .. }
            | FileKind::TcpListen { opts, .. }
            | FileKind::TcpClosed { opts, .. }
            | FileKind::TcpConnecting { opts, .. }
            | FileKind::TcpEnded { opts, .. }
            | FileKind::Tcp(TcpConn { opts, .. })
            | FileKind::RawIp { opts, .. }
            | FileKind::Ping { opts, .. }
            | FileKind::Packet { opts, .. } => opts,
            _ => &[],
        }
    }
}

/// Is `o` one of [`SOCK_OPTS`], with a value no longer than it may be?
pub fn sock_opt_ok(o: &SockOpt) -> bool {
    SOCK_OPTS.iter().any(|&(l, n, max)| (l, n) == (o.level, o.name) && !o.value.is_empty() && o.value.len() <= max)
}

/// One membership of a packet socket (PACKET_ADD_MEMBERSHIP), added
/// `count` times: on interface `ifname`, of type `kind` (PACKET_MR_*),
/// with link-layer address `addr` (at most 8 bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PacketMembership {
    pub ifname: String,
    pub kind: u16,
    pub count: u32,
    pub addr: Vec<u8>,
}
