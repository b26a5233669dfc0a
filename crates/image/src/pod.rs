//! The pod's own state in an image, beside its processes: names, limits,
//! network configuration, the mounts the pod made, and the files of its
//! tmpfs mounts (an archive next to the manifest, checked by hash).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodImage {
    /// Name of the pod when it was checkpointed (restore may choose another).
    pub name: String,
    pub hostname: String,
    pub domainname: String,
    /// Root file system (host path), if the pod had one.
    pub rootfs: Option<String>,
    /// The pod's address: (IPv4 as a number, prefix length).
    pub ip: Option<(u32, u8)>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub cmd: Vec<String>,
    /// Output went to the pod's log (a detached pod).
    pub detached: bool,
    /// Interfaces of the pod's network namespace with their IPv4 addresses.
    pub links: Vec<PodLink>,
    /// IPv4 routes of the main table.
    pub routes: Vec<PodRoute>,
    /// Settings of its network namespace: (path under /proc/sys, value).
    pub net_sysctls: Vec<(String, String)>,
    /// Mounts the pod made beyond the standard ones, parents first.
    pub mounts: Vec<PodMount>,
    /// Archive (tar) of every tmpfs mount's files, if any: file name in the
    /// image directory, its size and BLAKE3.
    pub tmpfs_archive: Option<(String, u64, [u8; 32])>,
    /// The pod's IPC namespace.
    pub ipc: PodIpc,
    /// The pod ran in its own user namespace (`--userns`); credentials and
    /// owners in the image are the pod's own ids.
    pub userns: bool,
}

/// SysV objects keep their ids (processes use them); owner and mode are
/// (uid, gid, mode).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodIpc {
    pub shm: Vec<ShmSegment>,
    pub sem: Vec<SemSet>,
    pub msg: Vec<MsgQueue>,
    pub mqueue: Vec<PosixMqueue>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShmSegment {
    pub key: i32,
    pub id: i32,
    pub perm: (u32, u32, u32),
    pub size: u64,
    /// Contents: a file in the image directory, its size and BLAKE3.
    pub data: (String, u64, [u8; 32]),
    /// Marked for removal (IPC_RMID) while still attached: it goes with
    /// its last attachment.
    pub removed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SemSet {
    pub key: i32,
    pub id: i32,
    pub perm: (u32, u32, u32),
    pub values: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MsgQueue {
    pub key: i32,
    pub id: i32,
    pub perm: (u32, u32, u32),
    pub qbytes: u64,
    /// (type, text) in queue order.
    pub msgs: Vec<(i64, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PosixMqueue {
    /// Name without the leading '/'.
    pub name: String,
    pub perm: (u32, u32, u32),
    pub maxmsg: i64,
    pub msgsize: i64,
    /// (priority, bytes) in the order they would be received.
    pub msgs: Vec<(u32, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodLink {
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub addrs: Vec<(u32, u8)>,
    /// Hardware address (kept when the pod comes back at the same address,
    /// so that peers' neighbour caches stay right).
    pub mac: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodRoute {
    pub dst: u32,
    pub prefix: u8,
    pub gateway: Option<u32>,
    pub dev: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodMount {
    /// Where it is mounted, inside the pod.
    pub target: String,
    /// The source as the mount table shows it (tmpfs and fresh mounts).
    pub source: String,
    pub kind: PodMountKind,
    /// MS_* flags (read-only, nosuid, ...).
    pub flags: u64,
    /// File-system options (e.g. "size=1m,mode=755").
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum PodMountKind {
    /// A tmpfs; its files are in the archive under `tmpfs/<index>/`.
    Tmpfs { index: u32 },
    /// A bind mount of a path inside the pod.
    Bind { source: String },
    /// proc, sysfs, devpts, mqueue: a fresh instance of that file system.
    Fresh { fstype: String },
}
