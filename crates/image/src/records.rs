//! The records of an image: one per process, thread, memory area, open file
//! and page chunk (sockets' in [`crate::sockets`], inotify, fanotify and
//! BPF maps' in [`crate::kernel_objects`]). Plain data; `Manifest::validate`
//! checks every cross reference and bound so that restore code can index
//! without panicking.

use crate::kernel_objects::*;
use crate::sockets::*;
use crate::{ImageError, Result};
use serde::{Deserialize, Serialize};

pub const PAGE: u64 = 4096;
/// Pages per chunk at most: chunks cover aligned 64 KiB windows.
pub const CHUNK_PAGES: u64 = 16;

/// Can a chunk hold `len` bytes of data: 1 to `CHUNK_PAGES` whole pages?
pub fn chunk_len_ok(len: u32) -> bool {
    len != 0 && u64::from(len) % PAGE == 0 && u64::from(len) <= CHUNK_PAGES * PAGE
}
/// Number of x86_64 general registers in `user_regs_struct`.
pub const NREGS: usize = 27;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub tool_version: String,
    pub created_unix: u64,
    /// `uname -r` of the checkpointing kernel.
    pub kernel: String,
    /// The checkpointing CPU: restore needs every state component and
    /// instruction set it recorded.
    pub cpu: crate::cpu::CpuImage,
    /// BLAKE3 of the vDSO text; a restored task keeps its vDSO address and
    /// relies on the same code being there.
    pub vdso_hash: [u8; 32],
    pub root_pid: i32,
    pub processes: Vec<Process>,
    /// Open file descriptions, referenced by fds (shared ones appear once).
    pub files: Vec<OpenFile>,
    /// Memory objects saved with their contents (shared anonymous memory,
    /// memfds, deleted files), referenced by areas and fds.
    pub objects: Vec<MemObject>,
    /// Page packs (files in the image directory).
    pub packs: Vec<Pack>,
    /// Content-addressed page chunks.
    pub chunks: Vec<Chunk>,
    /// The pod's own state, for the checkpoint of a pod (PIDs in the
    /// records are then the pod's own, its PID 1 being the root).
    pub pod: Option<crate::pod::PodImage>,
    /// The image this one was made on (`--parent`): packs homed
    /// [`PackHome::Parent`] are found through it (see [`crate::chain`]).
    pub parent: Option<ParentLink>,
    /// The shared store holding packs homed [`PackHome::Store`] (`--store`).
    pub store: Option<StoreLink>,
    /// cgroups below the root process's that processes of the tree are in,
    /// with their settings, parents first.
    pub cgroups: Vec<CgroupDir>,
}

/// The namespace files under /proc/PID/ns.
pub const NS_NAMES: [&str; 10] =
    ["net", "uts", "ipc", "pid", "pid_for_children", "mnt", "cgroup", "user", "time", "time_for_children"];

/// The cgroup v1 controllers whose places and settings are kept.
pub const CGROUP_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// The settings kept of a cgroup: (controller, file).
pub const CGROUP_SETTINGS: [(&str, &str); 6] = [
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.soft_limit_in_bytes"),
    ("pids", "pids.max"),
    ("cpu", "cpu.shares"),
    ("cpu", "cpu.cfs_period_us"),
    ("cpu", "cpu.cfs_quota_us"),
];

/// A cgroup below the tree root's, in one controller's hierarchy: its
/// path relative to the root's (components without "." or ".."), and the
/// values of its settings (see [`CGROUP_SETTINGS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CgroupDir {
    pub controller: String,
    pub path: String,
    pub settings: Vec<(String, String)>,
}

impl CgroupDir {
    /// A controller of [`CGROUP_CONTROLLERS`], a relative path of plain
    /// names, settings of that controller with short plain values.
    pub fn is_valid(&self) -> bool {
        let plain = |c: &str| !c.is_empty() && c != "." && c != ".." && !c.contains('\0');
        CGROUP_CONTROLLERS.contains(&self.controller.as_str())
            && self.path.len() <= 4096
            && self.path.split('/').all(plain)
            && self.settings.iter().all(|(f, v)| {
                CGROUP_SETTINGS.contains(&(self.controller.as_str(), f.as_str()))
                    && v.len() <= 32
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    }
}

/// Longest chain of parent images one image may read through.
pub const MAX_CHAIN: u32 = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pack {
    pub name: String,
    pub size: u64,
    /// Where the pack file lives.
    pub home: PackHome,
}

/// Where a pack file lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum PackHome {
    /// In the image's own directory.
    Own,
    /// In the directory of the image this many links up the parent chain
    /// (1: the parent), at most [`MAX_CHAIN`].
    Parent(u32),
    /// In the `packs` directory of the image's store.
    Store,
}

/// The image an incremental checkpoint was made on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParentLink {
    /// Absolute path of its directory.
    pub path: String,
    /// BLAKE3 of its manifest file: a parent replaced or changed since is
    /// refused rather than read.
    pub manifest_hash: [u8; 32],
}

/// The shared store an image keeps (some of) its chunks in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreLink {
    /// Absolute path of the store directory.
    pub path: String,
    /// The store's identity (its `store-id` file): another store at the
    /// same path is refused.
    pub store_id: [u8; 16],
    /// This image's identity in the store: its root record, and the prefix
    /// of the packs it wrote there.
    pub image_id: [u8; 16],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Chunk {
    /// BLAKE3 of the page data (not of what is stored); keyed in a sealed
    /// image (see [`crate::seal`]).
    #[serde(with = "digest_words")]
    pub hash: [u8; 32],
    pub pack: u32,
    pub offset: u64,
    /// Bytes of page data (a whole number of pages).
    pub len: u32,
    /// How the data is stored: see [`crate::codec`] and [`crate::seal`].
    pub codec: Codec,
    /// Bytes in the pack (`len` when stored raw; see [`Codec::stored_ok`]).
    pub stored: u32,
}

/// How a chunk's bytes are stored in its pack.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw,
    /// One zstd frame, smaller than the data.
    Zstd,
    /// The data sealed under the image's key (see [`crate::seal`]).
    SealedRaw,
    /// A zstd frame of the data, smaller than the data, sealed.
    SealedZstd,
}

impl Codec {
    /// Whether the stored bytes are sealed under a key.
    pub fn is_sealed(self) -> bool {
        matches!(self, Codec::SealedRaw | Codec::SealedZstd)
    }

    /// Whether the data is compressed (sealed or not).
    pub fn is_compressed(self) -> bool {
        matches!(self, Codec::Zstd | Codec::SealedZstd)
    }

    /// The sealed form of a codec.
    pub fn sealed(self) -> Codec {
        match self {
            Codec::Raw | Codec::SealedRaw => Codec::SealedRaw,
            Codec::Zstd | Codec::SealedZstd => Codec::SealedZstd,
        }
    }

    /// Bytes stored for a chunk of `len` bytes of data whose inner form
    /// (the data, or its zstd frame) has `inner` bytes.
    pub fn stored_len(self, inner: u32) -> u32 {
        match self.is_sealed() {
            true => inner.saturating_add(crate::seal::CHUNK_OVERHEAD),
            false => inner,
        }
    }

    /// Whether `stored` bytes can hold a chunk of `len` bytes of data in
    /// this codec: raw data is itself, a zstd frame is smaller than the
    /// data, and a seal adds exactly its nonce and tag to either.
    pub fn stored_ok(self, len: u32, stored: u32) -> bool {
        let inner = match self.is_sealed() {
            true => match stored.checked_sub(crate::seal::CHUNK_OVERHEAD) {
                Some(i) => i,
                None => return false,
            },
            false => stored,
        };
        match self.is_compressed() {
            false => inner == len,
            true => inner > 0 && inner < len,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Threads; the first one is the thread-group leader (tid == pid).
    pub threads: Vec<Thread>,
    pub vmas: Vec<Vma>,
    pub mm: MmInfo,
    pub fds: Vec<Fd>,
    /// The file locks it takes again at restore (see [`FileLock`]).
    pub locks: Vec<FileLock>,
    /// Signal dispositions for signals 1..=64 (index 0 is signal 1).
    pub sigactions: Vec<SigAction>,
    /// Process-wide pending signals (raw siginfo).
    pub shared_pending: Vec<Vec<u8>>,
    pub creds: Creds,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<(u64, u64)>,
    pub itimers: Vec<ItimerVal>,
    pub posix_timers: Vec<PosixTimer>,
    /// Set for a zombie: its exit status as seen by wait.
    pub zombie_status: Option<i32>,
    /// Stopped by a signal (job control) when checkpointed.
    pub stopped: bool,
    /// Process-wide attributes a restored stub would otherwise keep from
    /// the restorer.
    pub attrs: ProcAttrs,
    /// For a session leader whose controlling terminal is a pair of the
    /// image: that terminal (its session's processes inherit it).
    pub ctty: Option<Ctty>,
    /// (controller, path) of each cgroup of [`Manifest::cgroups`] it is in
    /// (in the others, the root's).
    pub cgroups: Vec<(String, String)>,
    /// Numbers among `fds` that hold a file only so that a queued message
    /// can carry it again (it was in flight and nowhere else): closed once
    /// the queues are refilled.
    pub carried: Vec<i32>,
}

/// Process-wide attributes that a fork inherits (or cryopod's own work
/// changes), restored explicitly so that nothing of the restorer shows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProcAttrs {
    /// PR_GET_DUMPABLE: 0, 1, or 2 (suid_dumpable; not settable, left as
    /// the credentials make it).
    pub dumpable: u32,
    /// PR_SET_CHILD_SUBREAPER.
    pub child_subreaper: bool,
    /// PR_SET_THP_DISABLE.
    pub thp_disable: bool,
    /// /proc/PID/coredump_filter.
    pub coredump_filter: u32,
    /// /proc/PID/oom_score_adj, -1000..=1000.
    pub oom_score_adj: i32,
    /// /proc/PID/loginuid (u32::MAX: never set).
    pub loginuid: u32,
    /// PR_SET_MEMORY_MERGE: every area of the process offered to KSM,
    /// those it maps later too.
    pub memory_merge: bool,
    /// mlockall(MCL_FUTURE): the mlockall flags that make areas mapped
    /// later locked (MCL_FUTURE, with MCL_ONFAULT if locked on fault); 0
    /// when they are not.
    pub lock_future: u32,
    /// The membarrier registrations of its address space
    /// (MEMBARRIER_CMD_GET_REGISTRATIONS: a mask of the REGISTER_*
    /// commands issued).
    pub membarrier: u32,
}

/// Per-thread attributes that a fork or clone inherits, restored
/// explicitly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ThreadAttrs {
    /// PR_SET_PDEATHSIG (0: none).
    pub pdeathsig: i32,
    /// PR_SET_TIMERSLACK, in ns (0: leave the default).
    pub timer_slack_ns: u64,
    /// Nice value, -20..=19.
    pub nice: i32,
    /// Scheduling policy (SCHED_*: 0 other, 1 FIFO, 2 RR, 3 batch, 5
    /// idle, 6 deadline), its flags (reset-on-fork...) and parameters.
    pub sched: SchedParams,
    /// I/O priority as ioprio_get reports it (0: none set, it follows the
    /// nice value).
    pub ioprio: u32,
    /// Memory policy: mode (with its MPOL_F_* flags) and nodes (bit n:
    /// node n; nodes 64 and above are refused at checkpoint).
    pub mempolicy: (i32, u64),
    /// In seccomp strict mode (entered again last of all).
    pub seccomp_strict: bool,
}

/// A thread's scheduling parameters beyond its nice value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SchedParams {
    pub policy: u32,
    pub flags: u64,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Thread {
    pub tid: i32,
    pub regs: Vec<u64>,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    pub comm: String,
    pub clear_child_tid: u64,
    pub robust_list: (u64, u64),
    pub rseq: Option<(u64, u32, u32)>,
    /// (ss_sp, ss_flags, ss_size)
    pub sigaltstack: (u64, i32, u64),
    pub pending: Vec<Vec<u8>>,
    /// CPU affinity mask words (empty: leave as is).
    pub affinity: Vec<u64>,
    /// Seccomp filters, oldest first: (flags, BPF program, 8 bytes per
    /// instruction).
    pub seccomp: Vec<(u64, Vec<u8>)>,
    pub attrs: ThreadAttrs,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ItimerVal {
    pub interval_us: u64,
    pub value_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub notify: i32,
    pub signo: i32,
    pub sigval: u64,
    pub notify_tid: i32,
    pub interval_ns: u64,
    pub value_ns: u64,
    pub overrun: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Creds {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MmInfo {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
    pub exe: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (heap, stacks, anonymous mmaps).
    Anon,
    /// A mapping of an object saved in the image (`Manifest::objects`):
    /// shared anonymous memory, a memfd or a deleted file, shared or private.
    Object {
        object: u32,
        pgoff: u64,
    },
    /// A file mapping; `file` indexes `Manifest::files`.
    File {
        file: u32,
        pgoff: u64,
    },
    Vvar,
    VvarVclock,
    Vdso,
    Vsyscall,
    /// A SysV shared memory attachment (segment id); the segment and its
    /// contents belong to the pod's IPC namespace record.
    SysvShm {
        id: i32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub shared: bool,
    pub kind: VmaKind,
    /// Name as shown in maps ("[heap]", "[stack]", a path, "").
    pub name: String,
    /// madvise-relevant flags (`MADV_*` behaviour bits, see `vma_flags`).
    pub madv: u32,
    /// Its own memory policy (mbind): mode with its MPOL_F_* flags, and
    /// nodes (bit n: node n); None when it follows the process's.
    pub policy: Option<(i32, u64)>,
    /// Pages saved for this area (private anon, or CoW'd file pages).
    pub runs: Vec<Run>,
}

/// madvise behaviours recorded per VMA.
pub mod vma_flags {
    pub const HUGEPAGE: u32 = 1;
    pub const NOHUGEPAGE: u32 = 2;
    pub const DONTFORK: u32 = 4;
    pub const WIPEONFORK: u32 = 8;
    pub const DONTDUMP: u32 = 16;
    pub const GROWSDOWN: u32 = 32;
    pub const LOCKED: u32 = 64;
    /// mlock2(MLOCK_ONFAULT): pages locked as they are touched.
    pub const LOCKONFAULT: u32 = 128;
    pub const SEQUENTIAL: u32 = 256;
    pub const RANDOM: u32 = 512;
    /// MADV_MERGEABLE: offered to KSM.
    pub const MERGEABLE: u32 = 1024;
}

/// A run of pages: zero pages (nothing stored) or data of one chunk: its
/// pages `from..from + pages` (a whole chunk, or part of one an
/// incremental image shares with its parent).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub pages: u32,
    pub chunk: Option<u32>,
    /// First page of the chunk the run holds.
    pub from: u32,
}

impl Run {
    /// The run's data: (chunk, first page in it), None for zero pages.
    pub fn data(&self) -> Option<(u32, u32)> {
        self.chunk.map(|c| (c, self.from))
    }
}

/// A memory object whose contents the image holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemObject {
    /// Size in bytes (a file's size need not be a whole number of pages).
    pub size: u64,
    pub origin: ObjectOrigin,
    /// Runs with addresses relative to the object's start.
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ObjectOrigin {
    /// MAP_SHARED|MAP_ANONYMOUS memory ("/dev/zero (deleted)").
    SharedAnon,
    /// memfd_create(name).
    /// A memfd with its seals (F_GET_SEALS), added again after filling it.
    Memfd { name: String, seals: u32 },
    /// A regular file unlinked while mapped or open.
    Deleted { path: String, mode: u32 },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub file: u32,
    pub cloexec: bool,
}

/// A lock on a file, taken again through descriptor `fd` of the process
/// that records it: a POSIX record lock by the process that owns it; a
/// flock, an open file description (OFD) lock or a lease, which belong to
/// an open file description, once, by the first process (in the image's
/// order) that has that description.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLock {
    pub fd: i32,
    pub kind: LockKind,
    /// A write (exclusive) lock, else read (shared).
    pub write: bool,
    /// First byte, and last (None: to the end of the file, however far it
    /// grows); a flock or a lease covers the whole file.
    pub start: u64,
    pub end: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LockKind {
    Posix,
    Flock,
    Ofd,
    Lease,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenFile {
    /// open(2) flags (access mode, O_APPEND, O_NONBLOCK, ...).
    pub flags: u32,
    pub pos: u64,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum FileKind {
    /// A regular file or directory by path; `size`/`mtime_ns`/`ino` detect
    /// changes between checkpoint and restore.
    Path { path: String, size: u64, mtime_ns: i128, ino: u64, dev: u64, mode: u32 },
    /// A memfd, or a regular file unlinked while open: its contents are a
    /// memory object of the image.
    Object { object: u32 },
    /// A character device (by path, e.g. /dev/null, /dev/urandom, a tty).
    CharDev { path: String, rdev: u64 },
    /// A unix domain socket.
    Unix(UnixSock),
    /// A listening TCP socket (IPv4 or IPv6) with no connection waiting.
    TcpListen { family: i32, addr: Vec<u8>, port: u16, backlog: u32, reuseaddr: bool, v6only: bool, opts: Vec<SockOpt> },
    /// A TCP socket made (and maybe bound) but never connected nor
    /// listening: `local` its address, all zero when unbound.
    TcpClosed { family: i32, local: (Vec<u8>, u16), reuseaddr: bool, v6only: bool, opts: Vec<SockOpt> },
    /// A TCP socket whose connection has ended (CLOSE after a connection:
    /// closed both ways, reset, refused or timed out): reads give
    /// `unread`, then `error` if not 0 (the error pending, not yet read:
    /// ECONNRESET, EPIPE, ECONNREFUSED or ETIMEDOUT), then the end of the
    /// stream; writes fail.
    TcpEnded { family: i32, unread: Vec<u8>, error: i32, opts: Vec<SockOpt> },
    /// A TCP socket whose connect is in progress (SYN_SENT): made again,
    /// bound to `local`, and connecting to `remote` anew (the peer had
    /// answered nothing; a new SYN is what a retransmission would be).
    TcpConnecting {
        family: i32,
        local: (Vec<u8>, u16),
        remote: (Vec<u8>, u16),
        reuseaddr: bool,
        v6only: bool,
        opts: Vec<SockOpt>,
    },
    /// An established TCP connection (TCP_REPAIR state).
    Tcp(TcpConn),
    /// A pidfd naming process `pid` of the checkpoint.
    Pidfd { pid: i32 },
    /// A namespace file (nsfs) of a namespace its first holder is in, as
    /// /proc/self/ns/`ns` names it there (net, uts, ipc, pid,
    /// pid_for_children, mnt, cgroup, user, time, time_for_children).
    OwnNs { ns: String },
    /// An inotify instance and its watches (queued events are not kept).
    Inotify { watches: Vec<InotifyWatch> },
    /// A BPF map and its contents (see [`BpfMapRec`]).
    BpfMap(Box<BpfMapRec>),
    /// A fanotify group: fanotify_init's flags and event file flags, and
    /// its marks. Events
    /// queued at checkpoint are not kept.
    Fanotify { flags: u32, event_flags: u32, marks: Vec<FanMark> },
    /// A UDP socket: bound address, default peer if connected. Datagrams
    /// queued for it are not kept (UDP may lose them anyway).
    Udp {
        family: i32,
        local: (Vec<u8>, u16),
        peer: Option<(Vec<u8>, u16)>,
        reuseaddr: bool,
        v6only: bool,
        opts: Vec<SockOpt>,
        /// shutdown(2) bits: 1 reading, 2 writing.
        shutdown: u8,
    },
    /// A netlink socket (see [`NetlinkSock`]).
    Netlink(NetlinkSock),
    /// An ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP or ICMPV6): bound
    /// address and identifier (`local`: the identifier is the port, 0 when
    /// none was taken yet), connected peer. Replies queued for it are not
    /// kept (as for UDP).
    Ping { family: i32, local: (Vec<u8>, u16), peer: Option<Vec<u8>>, opts: Vec<SockOpt> },
    /// A raw IP socket (SOCK_RAW) of `protocol`: bound address (all zero
    /// when unbound), connected peer. Packets queued for it are not kept
    /// (as for UDP).
    RawIp { family: i32, protocol: i32, local: Vec<u8>, peer: Option<Vec<u8>>, opts: Vec<SockOpt> },
    /// A packet socket (AF_PACKET, SOCK_RAW or SOCK_DGRAM) for `protocol`
    /// (network byte order), bound to the interface `ifname` (empty: all).
    /// Packets queued for it are not kept. Its memberships (promiscuous
    /// mode, multicast...) and its fanout group (PACKET_FANOUT's value:
    /// id, type and flags; 0 for none) are carried.
    Packet {
        kind: i32,
        protocol: u16,
        ifname: String,
        opts: Vec<SockOpt>,
        memberships: Vec<crate::sockets::PacketMembership>,
        fanout: u32,
    },
    /// A POSIX message queue descriptor of a pod (the queue is part of the
    /// pod's IPC record); `name` without the leading '/'.
    Mqueue { name: String },
    /// A file outside the checkpointed tree's reach that the restorer
    /// supplies under this name (a pod's log, for instance).
    External { key: String },
    /// The restoring shell's terminal: attach to whatever terminal `cryopod
    /// restore` runs in.
    Terminal { path: String },
    /// The master of a pseudo-terminal pair, whose terminal end is
    /// /dev/pts/`index` of the tree's devpts, made again at that index.
    PtyMaster { index: u32, tty: Box<PtyState> },
    /// The terminal end of a pair whose master is in the image.
    PtySlave { index: u32 },
    /// One end of a pipe (`pipe` groups both ends; `write` says which).
    Pipe { pipe: u64, write: bool, capacity: i32, queued: Vec<u8> },
    /// A FIFO opened by path; `deleted`: its name was removed while it was
    /// open (it is made again, opened, and its name removed again).
    Fifo { path: String, pipe: u64, queued: Vec<u8>, deleted: bool },
    /// A directory removed while open (so empty): made again under its
    /// name, opened, and removed again.
    GoneDir { path: String, mode: u32 },
    /// A file or directory under /proc/`pid` of a process in the tree
    /// (`rest`: the path below it, empty for the directory itself), opened
    /// again once that process exists.
    ProcOf { pid: i32, rest: String },
    /// An O_PATH descriptor: a place in the file tree, not an open file
    /// (`mode`: its file's type and permissions; a symbolic link itself
    /// when opened with O_NOFOLLOW).
    OPath { path: String, mode: u32 },
    /// An eventfd and its counter.
    EventFd { count: u64, semaphore: bool },
    /// A signalfd and its signal mask (bit n-1 = signal n).
    SignalFd { mask: u64 },
    /// A timerfd: clock, interval and remaining time (ns), and expirations
    /// not yet read.
    TimerFd { clock: i32, interval_ns: u64, value_ns: u64, ticks: u64 },
    /// An epoll instance and its interest list, registered by process
    /// `owner` under its fd numbers.
    Epoll { owner: i32, entries: Vec<EpollEntry> },
}

/// A file an epoll instance watches: registered under fd number `fd` of
/// the owner, with its events and data. `file_at`: the watched file is
/// not the owner's fd `fd` (closed, given to another file, or the entry was
/// registered by another process sharing the instance) but (process, fd)
/// holds it (the entry lives as long as the file does).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollEntry {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    pub file_at: Option<(i32, i32)>,
}

/// A pseudo-terminal pair's state, read from its master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PtyState {
    pub termios: TermiosRec,
    /// Rows, columns, width and height in pixels.
    pub winsize: [u16; 4],
    /// Packet mode (TIOCPKT).
    pub packet: bool,
    /// The terminal end may not be opened (TIOCSPTLCK).
    pub locked: bool,
    /// Exclusive mode (TIOCEXCL).
    pub exclusive: bool,
    /// What the terminal end wrote that the master has not read yet.
    pub unread: Vec<u8>,
}

/// A terminal's settings (struct termios2), field by field.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TermiosRec {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
    pub ispeed: u32,
    pub ospeed: u32,
}

/// The controlling terminal of a session, kept on its leader: a pair of
/// the image (`index`) and its foreground process group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ctty {
    pub index: u32,
    pub foreground: i32,
}

/// The most files one queued message carries (the kernel's SCM_MAX_FD).
pub const MSG_FDS_MAX: usize = 253;

/// The most a pair may hold unread (the kernel buffers 64 KiB at most).
pub const PTY_UNREAD_MAX: usize = 1 << 20;

fn bad(what: String) -> ImageError {
    ImageError::Corrupt(what)
}

impl Manifest {
    /// Check every cross-reference and bound. After this, any index in the
    /// manifest is valid and every address range well formed.
    pub fn validate(&self) -> Result<()> {
        if self.processes.is_empty() {
            return Err(bad("no processes".into()));
        }
        self.cpu.check().map_err(|e| bad(format!("CPU record: {e}")))?;
        if !self.processes.iter().any(|p| p.pid == self.root_pid) {
            return Err(bad(format!("root pid {} has no process record", self.root_pid)));
        }
        for (i, c) in self.chunks.iter().enumerate() {
            let pack =
                self.packs.get(c.pack as usize).ok_or_else(|| bad(format!("chunk {i}: pack {} missing", c.pack)))?;
            if !chunk_len_ok(c.len) {
                return Err(bad(format!("chunk {i}: length {} is not 1..=16 pages", c.len)));
            }
            if !c.codec.stored_ok(c.len, c.stored) {
                return Err(bad(format!("chunk {i}: {} bytes stored for {} bytes {:?}", c.stored, c.len, c.codec)));
            }
            if c.offset.checked_add(u64::from(c.stored)).is_none_or(|e| e > pack.size) {
                return Err(bad(format!("chunk {i}: beyond the end of pack {}", pack.name)));
            }
        }
        // An image is sealed whole or not at all.
        if self.chunks.first().is_some_and(|f| self.chunks.iter().any(|c| c.codec.is_sealed() != f.codec.is_sealed())) {
            return Err(bad("sealed and plain chunks are mixed".into()));
        }
        for p in &self.packs {
            if p.name.contains('/') || p.name.starts_with('.') || p.name.is_empty() || p.name.contains('\0') {
                return Err(bad(format!("pack name {:?} is not a plain file name", p.name)));
            }
            match p.home {
                PackHome::Own => {}
                PackHome::Parent(d) if (1..=MAX_CHAIN).contains(&d) && self.parent.is_some() => {}
                PackHome::Store if self.store.is_some() => {}
                h => return Err(bad(format!("pack {} is homed {h:?}, which the image does not link", p.name))),
            }
        }
        let abs = |p: &str| p.starts_with('/') && !p.contains('\0') && p.len() < 4096;
        let sibling = |p: &str| crate::chain::sibling_name(p).is_some();
        if self.parent.as_ref().is_some_and(|l| !abs(&l.path) && !sibling(&l.path))
            || self.store.as_ref().is_some_and(|l| !abs(&l.path))
        {
            return Err(bad(
                "a parent path is neither absolute nor a sibling's, or a store path is not absolute".into()
            ));
        }
        let mut cgroups = std::collections::HashSet::new();
        for (i, c) in self.cgroups.iter().enumerate() {
            // Parents first: a cgroup's parent (if not the root's) is listed before it.
            let parent_listed =
                c.path.rsplit_once('/').is_none_or(|(parent, _)| cgroups.contains(&(c.controller.as_str(), parent)));
            if !c.is_valid() || !parent_listed || !cgroups.insert((c.controller.as_str(), c.path.as_str())) {
                return Err(bad(format!("cgroup {i}: bad, repeated, or listed before its parent")));
            }
        }
        if let Some(p) =
            self.processes.iter().find(|p| p.cgroups.iter().any(|(c, d)| !cgroups.contains(&(c.as_str(), d.as_str()))))
        {
            return Err(bad(format!("process {}: in a cgroup the image does not list", p.pid)));
        }
        // Pseudo-terminal pairs: one master each.
        let mut masters = std::collections::HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if let FileKind::PtyMaster { index, tty } = &f.kind {
                if !masters.insert(*index) || tty.unread.len() > PTY_UNREAD_MAX {
                    return Err(bad(format!(
                        "file {i}: a second master of pseudo-terminal {index}, or too much unread"
                    )));
                }
            }
        }
        let mut pids = std::collections::HashSet::new();
        for p in &self.processes {
            if p.pid <= 0 || !pids.insert(p.pid) {
                return Err(bad(format!("pid {} is invalid or repeated", p.pid)));
            }
            self.validate_process(p)?;
            if p.ctty.is_some_and(|c| p.sid != p.pid || !masters.contains(&c.index)) {
                return Err(bad(format!(
                    "process {}: a controlling terminal of no pair, or not a session leader",
                    p.pid
                )));
            }
        }
        for (i, s) in self.objects.iter().enumerate() {
            if s.origin == ObjectOrigin::SharedAnon && s.size % PAGE != 0 {
                return Err(bad(format!("memory object {i}: size not page aligned")));
            }
            let pages_end =
                s.size.checked_next_multiple_of(PAGE).ok_or_else(|| bad(format!("memory object {i}: size")))?;
            self.validate_runs(&s.runs, 0, pages_end, &format!("memory object {i}"))?;
            match &s.origin {
                ObjectOrigin::Memfd { name, .. } if name.len() > 249 || name.contains('\0') => {
                    return Err(bad(format!("memory object {i}: bad memfd name")));
                }
                ObjectOrigin::Deleted { path, .. } if !path.starts_with('/') || path.contains('\0') => {
                    return Err(bad(format!("memory object {i}: bad path")));
                }
                _ => {}
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if let FileKind::Object { object } = f.kind {
                if object as usize >= self.objects.len() {
                    return Err(bad(format!("file {i} names object {object}")));
                }
            }
            if let FileKind::Unix(u) = &f.kind {
                if u.name.len() > 108 || ![1, 2, 5].contains(&u.kind) {
                    return Err(bad(format!("file {i}: unix socket with a bad name or type")));
                }
                self.validate_in_flight(u).map_err(|why| bad(format!("file {i}: {why}")))?;
                let external_ok = match u.external.first() {
                    None => true,
                    Some(&0) => u.external.len() <= 108,
                    Some(&b'/') => u.external.len() <= 108 && !u.external.contains(&0),
                    Some(_) => false,
                };
                if !external_ok || !filter_ok(&u.filter.0) {
                    return Err(bad(format!("file {i}: a unix socket's outside peer with a bad name")));
                }
            }
            if !f.kind.sock_opts().iter().all(sock_opt_ok) {
                return Err(bad(format!("file {i}: a socket option not kept, or too long")));
            }
            if let FileKind::Netlink(n) = &f.kind {
                let ok = [2, 3].contains(&n.kind)
                    && (0..32).contains(&n.protocol)
                    && n.groups.len() <= NETLINK_GROUP_WORDS_MAX
                    && n.flags.iter().all(|f| NETLINK_FLAGS.contains(f))
                    && filter_ok(&n.filter.0);
                if !ok {
                    return Err(bad(format!("file {i}: a netlink socket of a bad type, protocol, groups or flags")));
                }
            }
            if let FileKind::BpfMap(b) = &f.kind {
                if !b.is_consistent() {
                    return Err(bad(format!("file {i}: a BPF map of a bad type, sizes or entries")));
                }
            }
            if let FileKind::OwnNs { ns } = &f.kind {
                if !NS_NAMES.contains(&ns.as_str()) {
                    return Err(bad(format!("file {i}: a namespace file of no known kind")));
                }
            }
            if let FileKind::ProcOf { pid, rest } = &f.kind {
                let in_tree = self.processes.iter().any(|p| p.pid == *pid && p.zombie_status.is_none());
                if !in_tree || rest.starts_with('/') || rest.split('/').any(|c| c == ".." || c == ".") {
                    return Err(bad(format!("file {i}: a /proc file of no process of the image, or a bad path")));
                }
            }
            if let FileKind::Epoll { owner, entries } = &f.kind {
                let live = |pid: i32| self.processes.iter().any(|p| p.pid == pid && p.zombie_status.is_none());
                let bad_at =
                    |(pid, fd): (i32, i32), e: &EpollEntry| fd < 0 || !live(pid) || (pid, fd) == (*owner, e.fd);
                if entries.iter().any(|e| e.fd < 0 || e.file_at.is_some_and(|a| bad_at(a, e))) {
                    return Err(bad(format!("file {i}: an epoll entry with a bad fd number")));
                }
            }
            if matches!(f.kind, FileKind::PtySlave { index } if !masters.contains(&index)) {
                return Err(bad(format!("file {i}: a pseudo-terminal whose master is not in the image")));
            }
        }
        Ok(())
    }

    fn validate_process(&self, p: &Process) -> Result<()> {
        let who = format!("process {}", p.pid);
        if p.zombie_status.is_none() && (p.threads.is_empty() || p.threads[0].tid != p.pid) {
            return Err(bad(format!("{who}: first thread must be the leader")));
        }
        let mut tids = std::collections::HashSet::new();
        for t in &p.threads {
            if t.tid <= 0 || !tids.insert(t.tid) {
                return Err(bad(format!("{who}: thread id {} invalid or repeated", t.tid)));
            }
            if t.regs.len() != NREGS {
                return Err(bad(format!("{who}: thread {} has {} registers", t.tid, t.regs.len())));
            }
            if t.seccomp.iter().any(|(_, p)| p.is_empty() || p.len() % 8 != 0 || p.len() > 4096 * 8) {
                return Err(bad(format!("{who}: thread {} has a malformed seccomp filter", t.tid)));
            }
            self.validate_xstate(&t.xstate).map_err(|e| bad(format!("{who}: thread {}: {e}", t.tid)))?;
        }
        if p.zombie_status.is_none() && p.sigactions.len() != 64 {
            return Err(bad(format!("{who}: {} signal actions instead of 64", p.sigactions.len())));
        }
        let mut prev_end = 0u64;
        for v in &p.vmas {
            if v.start % PAGE != 0 || v.end % PAGE != 0 || v.start >= v.end || v.start < prev_end {
                return Err(bad(format!("{who}: memory area {:#x}-{:#x} malformed or overlapping", v.start, v.end)));
            }
            prev_end = v.end;
            match v.kind {
                VmaKind::Object { object, pgoff } => {
                    let s = self
                        .objects
                        .get(object as usize)
                        .ok_or_else(|| bad(format!("{who}: object {object} missing")))?;
                    // A mapping may extend past the end of a file (SIGBUS
                    // there), but not of shared anonymous memory.
                    if s.origin == ObjectOrigin::SharedAnon
                        && pgoff
                            .checked_mul(PAGE)
                            .and_then(|o| o.checked_add(v.end - v.start))
                            .is_none_or(|e| e > s.size)
                    {
                        return Err(bad(format!("{who}: area {:#x} exceeds its shared object", v.start)));
                    }
                }
                VmaKind::File { file, .. } if file as usize >= self.files.len() => {
                    return Err(bad(format!("{who}: area {:#x} names file {file}", v.start)));
                }
                _ => {}
            }
            self.validate_runs(&v.runs, v.start, v.end, &format!("{who} area {:#x}", v.start))?;
        }
        for f in &p.fds {
            if f.fd < 0 || f.file as usize >= self.files.len() {
                return Err(bad(format!("{who}: fd {} names file {}", f.fd, f.file)));
            }
        }
        if let Some(c) = p.carried.iter().find(|&&c| !p.fds.iter().any(|f| f.fd == c)) {
            return Err(bad(format!("{who}: fd {c} carried for a queued message is not among its fds")));
        }
        Ok(())
    }

    /// What a unix socket's queued messages carry: one list per message
    /// (or none), each within what one message can carry and naming files
    /// of the image; credentials naming a live process of the image (the
    /// kernel refuses a PID that names none).
    fn validate_in_flight(&self, u: &UnixSock) -> std::result::Result<(), String> {
        let per_message = |n: usize| n == 0 || n == u.queued.len();
        if !per_message(u.queued_fds.len()) || !per_message(u.queued_creds.len()) {
            return Err("files or credentials of queued messages that are not one per message".into());
        }
        let files = self.files.len();
        if u.queued_fds.iter().any(|m| m.len() > MSG_FDS_MAX || m.iter().any(|&f| f as usize >= files)) {
            return Err("a queued message carrying too many files, or files not in the image".into());
        }
        let live = |pid: i32| self.processes.iter().any(|p| p.pid == pid && p.zombie_status.is_none());
        if let Some(c) = u.queued_creds.iter().find(|c| !live(c.0)) {
            return Err(format!("a queued message's credentials name PID {}, no process of the image", c.0));
        }
        Ok(())
    }

    /// A thread's XSAVE area: the CPU record's size, and only components
    /// that CPU had marked as in use (XSTATE_BV), in standard format.
    fn validate_xstate(&self, x: &[u8]) -> std::result::Result<(), String> {
        if x.len() != self.cpu.xsave_size as usize {
            return Err(format!("xstate of {} bytes, the CPU's XSAVE area has {}", x.len(), self.cpu.xsave_size));
        }
        let header = crate::cpu::XSAVE_LEGACY as usize;
        let word = |at: usize| x.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let (bv, comp) = (word(header).unwrap_or(0), word(header + 8).unwrap_or(0));
        if bv & !self.cpu.xcr0 != 0 || comp != 0 {
            return Err(format!("xstate header XSTATE_BV {bv:#x} XCOMP_BV {comp:#x} (XCR0 {:#x})", self.cpu.xcr0));
        }
        Ok(())
    }

    fn validate_runs(&self, runs: &[Run], start: u64, end: u64, who: &str) -> Result<()> {
        let mut prev = start;
        for r in runs {
            let len = u64::from(r.pages) * PAGE;
            if r.addr % PAGE != 0 || r.addr < prev || r.addr.checked_add(len).is_none_or(|e| e > end) || r.pages == 0 {
                return Err(bad(format!("{who}: page run at {:#x} out of bounds", r.addr)));
            }
            prev = r.addr + len;
            match r.chunk {
                Some(c) => {
                    let ch = self.chunks.get(c as usize).ok_or_else(|| bad(format!("{who}: chunk {c} missing")))?;
                    let end = (u64::from(r.from) + u64::from(r.pages)) * PAGE;
                    if end > u64::from(ch.len) {
                        return Err(bad(format!(
                            "{who}: run of {} pages from page {} of a chunk of {} bytes",
                            r.pages, r.from, ch.len
                        )));
                    }
                }
                None if r.from != 0 => return Err(bad(format!("{who}: a zero run with an offset"))),
                None => {}
            }
        }
        Ok(())
    }

    /// Bytes of page data referenced (with repeats), and stored (unique).
    pub fn memory_bytes(&self) -> (u64, u64) {
        let refd: u64 = self
            .processes
            .iter()
            .flat_map(|p| p.vmas.iter())
            .flat_map(|v| v.runs.iter())
            .chain(self.objects.iter().flat_map(|s| s.runs.iter()))
            .filter(|r| r.chunk.is_some())
            .map(|r| u64::from(r.pages) * PAGE)
            .fold(0, u64::saturating_add);
        let stored = self.chunks.iter().map(|c| u64::from(c.len)).fold(0, u64::saturating_add);
        (refd, stored)
    }

    /// How many images up its parent chain the image reads chunks from.
    pub fn chain_depth(&self) -> u32 {
        self.packs
            .iter()
            .filter_map(|p| if let PackHome::Parent(d) = p.home { Some(d) } else { None })
            .max()
            .unwrap_or(0)
    }

    /// How many chunks are stored compressed.
    pub fn compressed_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.codec.is_compressed()).count()
    }

    /// Bytes the chunks take in their packs (compressed where it paid).
    pub fn packed_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.stored)).fold(0, u64::saturating_add)
    }
}

/// A chunk digest encoded as four little-endian u64 words: under the fixed
/// width, little-endian bincode options of the manifest and the store
/// index, byte for byte what `[u8; 32]` gives, in an eighth of the calls
/// (a 4 GiB image's 66k chunk records cost ~10 ms each way byte by byte).
pub(crate) mod digest_words {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut w = [0u64; 4];
        for (w, b) in w.iter_mut().zip(d.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *w = u64::from_le_bytes(a);
        }
        (w[0], w[1], w[2], w[3]).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let (a, b, c, e) = <(u64, u64, u64, u64)>::deserialize(d)?;
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(8).zip([a, b, c, e]) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bincode::Options;

    /// A chunk record as format 6 defined it, with the digest as 32 bytes.
    #[derive(Serialize, Deserialize)]
    struct Bytewise {
        hash: [u8; 32],
        pack: u32,
        offset: u64,
        len: u32,
        codec: Codec,
        stored: u32,
    }

    #[test]
    fn digest_words_encode_as_the_32_bytes() {
        let o = || bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian();
        let hash: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let c = Chunk { hash, pack: 3, offset: 1 << 40, len: 65536, codec: Codec::Zstd, stored: 777 };
        let b = Bytewise { hash, pack: 3, offset: 1 << 40, len: 65536, codec: Codec::Zstd, stored: 777 };
        let (words, bytes) = (o().serialize(&c).unwrap(), o().serialize(&b).unwrap());
        assert_eq!(words, bytes);
        assert_eq!(o().deserialize::<Chunk>(&bytes).unwrap(), c);
        assert_eq!(o().deserialize::<Bytewise>(&words).unwrap().hash, hash);
    }
}
