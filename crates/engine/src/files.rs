//! Open files: which file each fd refers to, which fds (in one process or
//! several) share one open file description, offsets and flags, pipe and
//! FIFO contents (copied without consuming them), deleted files' contents.
//! Restore opens every description in the restorer before the stubs fork,
//! so descriptions shared between processes stay shared; each stub then puts
//! its fds at their numbers (see `tree`).

use crate::procfs;
use crate::{EngineError, Result};
use cryopod_image::{Fd, FileKind, FileLock, LockKind, Manifest, ObjectOrigin, OpenFile};
use cryopod_sys::{events, fd as fds, TargetFd};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// fdinfo flag bits that describe the open file, kept on restore.
pub(crate) const KEEP_FLAGS: u32 = (libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECTORY
    | libc::O_PATH) as u32;

pub fn data_segments(f: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    fds::data_segments(f, size)
}

/// All open file descriptions of a checkpoint.
#[derive(Default)]
pub struct FileTable {
    pub files: Vec<OpenFile>,
    mapped: HashMap<String, u32>,
    /// (pid, fd, file index, dev, ino) of every description seen so far.
    pub(crate) seen: Vec<(i32, i32, u32, u64, u64)>,
    pipes_with_data: std::collections::HashSet<u64>,
    /// Where the tree's root directory is seen from here: "" for a plain
    /// tree, `/proc/<pod init>/root` for a pod (its paths are relative to
    /// its own root).
    pub root: String,
    /// Files outside the tree's root that the restorer will supply by name:
    /// (dev, inode, name).
    pub external: Vec<(u64, u64, String)>,
    /// Unix sockets seen through sock_diag.
    pub unix: crate::unix::UnixTable,
    /// Open file descriptions whose locks (flock, OFD, lease) are recorded
    /// already (by the first process seen with them).
    locked: std::collections::HashSet<u32>,
    /// Pseudo-terminal descriptions, linked once all are seen
    /// ([`crate::tty::finish`]).
    pub ptys: Vec<crate::tty::Seen>,
}

/// Prefix a path of the tree with where its root is seen from here.
pub fn under(root: &str, path: &str) -> String {
    format!("{root}{path}")
}

fn path_kind(root: &str, path: &str) -> Result<FileKind> {
    let host = under(root, path);
    let md = std::fs::metadata(&host).map_err(|e| EngineError::Proc { path: path.into(), msg: e.to_string() })?;
    let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    Ok(FileKind::Path {
        path: path.into(),
        size: md.len(),
        mtime_ns: mtime,
        ino: md.ino(),
        dev: md.dev(),
        mode: md.mode(),
    })
}

impl FileTable {
    /// The file behind a memory mapping (re-mapped by path on restore).
    pub fn mapped_file(&mut self, pid: i32, path: &str, inode: u64) -> Result<u32> {
        if let Some(&i) = self.mapped.get(path) {
            return Ok(i);
        }
        let i = self.files.len() as u32;
        let kind = path_kind(&self.root, path)?;
        if matches!(kind, FileKind::Path { ino, .. } if ino != inode) {
            return Err(EngineError::Unsupported {
                pid,
                what: format!("mapping of {path}, a file outside the pod's root file system"),
            });
        }
        self.files.push(OpenFile { flags: libc::O_RDONLY as u32, pos: 0, kind });
        self.mapped.insert(path.to_string(), i);
        Ok(i)
    }

    /// Every fd of `pid`. Memfds and deleted files become memory objects of
    /// `mem` (shared with the areas that map them).
    /// The descriptors of process `pid`, and the file locks it holds
    /// through them (see [`crate::locks`]).
    pub fn collect_fds(&mut self, pid: i32, mem: &mut crate::mm::MemCollector) -> Result<(Vec<Fd>, Vec<FileLock>)> {
        let mut out = Vec::new();
        let mut locks: Vec<FileLock> = Vec::new();
        // POSIX locks are the process's, listed under each of its
        // descriptors of the file: (dev, inode, the lock) once.
        let mut posix = std::collections::HashSet::new();
        for fd in procfs::fds(pid)? {
            let link = format!("/proc/{pid}/fd/{fd}");
            let target = procfs::readlink(&link)?;
            let (pos, flags, lock_lines) = procfs::fdinfo(pid, fd)?;
            let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
            let md =
                std::fs::metadata(&link).map_err(|e| EngineError::Proc { path: link.clone(), msg: e.to_string() })?;
            let idx = match self.seen_before(pid, fd, &md)? {
                Some(i) => i,
                None => {
                    let kind = self.kind_of((pid, fd), pid, &target, &md, flags, mem)?;
                    let i = self.files.len() as u32;
                    self.files.push(OpenFile { flags: flags & KEEP_FLAGS, pos, kind });
                    self.seen.push((pid, fd, i, md.dev(), md.ino()));
                    i
                }
            };
            out.push(Fd { fd, file: idx, cloexec });
            let what = format!("fd {fd} ({target})");
            let mut own_taken = false;
            for line in &lock_lines {
                let Some(l) = crate::locks::parse(line, (pid, fd), &what)? else { continue };
                match l.kind {
                    LockKind::Posix if posix.insert((md.dev(), md.ino(), l.write, l.start, l.end)) => locks.push(l),
                    LockKind::Posix => {}
                    _ if !self.locked.contains(&idx) => {
                        own_taken = true;
                        locks.push(l);
                    }
                    _ => {}
                }
            }
            if own_taken {
                self.locked.insert(idx);
            }
        }
        Ok((out, locks))
    }

    /// The file of the image that fd `fd` of `pid` (of file `md`) is the
    /// same open file description as, if one was seen before (kcmp).
    pub(crate) fn seen_before(&self, pid: i32, fd: i32, md: &std::fs::Metadata) -> Result<Option<u32>> {
        for &(p2, fd2, idx, dev, ino) in &self.seen {
            if (dev, ino) == (md.dev(), md.ino()) && fds::same_open_file(pid, TargetFd(fd), p2, TargetFd(fd2))? {
                return Ok(Some(idx));
            }
        }
        Ok(None)
    }

    /// What fd `fd` of `pid` is, seen from process `ctx` of the tree (its
    /// namespaces and working directory: `pid` itself, but for a file in
    /// flight, which we hold; see [`crate::unix::in_flight`]).
    pub(crate) fn kind_of(
        &mut self,
        (pid, fd): (i32, i32),
        ctx: i32,
        target: &str,
        md: &std::fs::Metadata,
        flags: u32,
        mem: &mut crate::mm::MemCollector,
    ) -> Result<FileKind> {
        let ft = md.mode() & libc::S_IFMT;
        let unsupported = |what: &str| EngineError::Unsupported { pid, what: format!("fd {fd} ({target}, {what})") };
        if let Some((ns, _)) = target.split_once(":[").filter(|_| target.ends_with(']')) {
            const NSFS_MAGIC: i64 = 0x6e73_6673;
            if cryopod_sys::fs::fs_magic(&format!("/proc/{pid}/fd/{fd}")).ok() == Some(NSFS_MAGIC) {
                return own_ns(ctx, ns, md.ino()).map_err(&unsupported);
            }
        }
        const PROC_SUPER_MAGIC: i64 = 0x9fa0;
        if let Some((of, rest)) = procfs::split_pid_path(target) {
            if cryopod_sys::fs::fs_magic(&format!("/proc/{pid}/fd/{fd}")).ok() == Some(PROC_SUPER_MAGIC) {
                // Whether that process is in the tree is known once all are
                // collected (`link_proc_files`).
                return Ok(FileKind::ProcOf { pid: of, rest: rest.to_string() });
            }
        }
        if flags & libc::O_PATH as u32 != 0 {
            return self.opath(target, md).map_err(&unsupported);
        }
        match ft {
            libc::S_IFREG | libc::S_IFDIR => {
                if target.ends_with(crate::gone::DELETED) || target.starts_with("/memfd:") {
                    if ft == libc::S_IFDIR {
                        let path = target.trim_end_matches(crate::gone::DELETED);
                        if !path.starts_with('/') {
                            return Err(unsupported("not reachable by path"));
                        }
                        return Ok(FileKind::GoneDir { path: path.to_string(), mode: md.mode() & 0o7777 });
                    }
                    let link = format!("/proc/{pid}/fd/{fd}");
                    let origin = crate::mm::object_origin(target, &link)?;
                    return Ok(FileKind::Object { object: mem.object(&link, origin)? });
                }
                if !target.starts_with('/') {
                    return Err(unsupported("not reachable by path"));
                }
                const MQUEUE_MAGIC: i64 = 0x1980_0202;
                if cryopod_sys::fs::fs_magic(&format!("/proc/{pid}/fd/{fd}")).ok() == Some(MQUEUE_MAGIC) {
                    // A pod's queues are saved with its IPC namespace.
                    if self.root.is_empty() {
                        return Err(unsupported("a POSIX message queue (supported in pods)"));
                    }
                    return Ok(FileKind::Mqueue { name: target.trim_start_matches('/').to_string() });
                }
                if let Some((_, _, key)) = self.external.iter().find(|e| (e.0, e.1) == (md.dev(), md.ino())) {
                    return Ok(FileKind::External { key: key.clone() });
                }
                let kind = path_kind(&self.root, target)?;
                match kind {
                    FileKind::Path { ino, dev, .. } if (ino, dev) != (md.ino(), md.dev()) => {
                        Err(unsupported("a file outside the pod's root file system"))
                    }
                    k => Ok(k),
                }
            }
            libc::S_IFCHR => {
                let major = cryopod_sys::fs::major(md.rdev());
                let file = self.files.len() as u32;
                if (major, cryopod_sys::fs::minor(md.rdev())) == (5, 2) {
                    let (kind, seen) = crate::tty::master(pid, fd, file)?;
                    self.ptys.push(seen);
                    return Ok(kind);
                }
                let pts = crate::tty::pts_index(md.rdev());
                if let Some(index) = pts {
                    let seen = crate::tty::Seen { file, holder: (pid, fd), devpts: md.dev(), index, master: false };
                    self.ptys.push(seen);
                }
                if pts.is_some() || major == 4 || (major == 5 && md.rdev() & 0xff != 2) {
                    Ok(FileKind::Terminal { path: target.to_string() })
                } else {
                    Ok(FileKind::CharDev { path: target.to_string(), rdev: md.rdev() })
                }
            }
            libc::S_IFIFO => {
                let ino = md.ino();
                // Contents once per pipe, copied without consuming them.
                let queued = if self.pipes_with_data.insert(ino) { peek_pipe(pid, fd)? } else { Vec::new() };
                if target.starts_with("pipe:") {
                    let capacity = pipe_capacity(pid, fd)?;
                    let write = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                    Ok(FileKind::Pipe { pipe: ino, write, capacity, queued })
                } else {
                    let path = target.strip_suffix(crate::gone::DELETED);
                    let deleted = path.is_some();
                    let path = path.unwrap_or(target).to_string();
                    Ok(FileKind::Fifo { path, pipe: ino, queued, deleted })
                }
            }
            libc::S_IFSOCK => self.unix.collect((pid, fd), ctx, md.ino()),
            _ if target == "anon_inode:bpf-map" => crate::bpfmap::collect(pid, fd).map_err(|e| match e {
                EngineError::Other(why) => unsupported(&why),
                e => e,
            }),
            _ if target == "anon_inode:[fanotify]" => {
                crate::fanotify::collect(pid, fd, &self.root).map_err(|e| match e {
                    EngineError::Other(why) => unsupported(&why),
                    e => e,
                })
            }
            _ if target == "anon_inode:inotify" => crate::inotify::collect(pid, fd, &self.root).map_err(|e| match e {
                EngineError::Other(why) => unsupported(&why),
                e => e,
            }),
            _ if target.starts_with("anon_inode:") => {
                crate::events::anon_inode_kind(pid, fd, target).map_err(|e| match e {
                    EngineError::Other(why) => unsupported(&why),
                    e => e,
                })
            }
            _ => Err(unsupported("this kind of file")),
        }
    }
}

/// A namespace file: of a namespace process `pid` is in (the kind `ns`
/// as the file's link names it), by its name under /proc/PID/ns.
fn own_ns(pid: i32, ns: &str, ino: u64) -> std::result::Result<FileKind, &'static str> {
    let names: &[&str] = match ns {
        "pid" => &["pid", "pid_for_children"],
        "time" => &["time", "time_for_children"],
        n => &[n][..],
    };
    let own = names.iter().find(|n| {
        cryopod_image::NS_NAMES.contains(n)
            && std::fs::metadata(format!("/proc/{pid}/ns/{n}")).is_ok_and(|m| m.ino() == ino)
    });
    match own {
        Some(n) => Ok(FileKind::OwnNs { ns: n.to_string() }),
        None => Err("a namespace file of a namespace the process is not in (only its own are carried)"),
    }
}

impl FileTable {
    /// Once every process is collected: a /proc file of a process of the
    /// tree (`pids`: as the tree's /proc numbers them) is opened again by a
    /// stub at restore; of another process, a plain tree's is reopened by
    /// path, a pod's is refused (its /proc shows the pod's processes only,
    /// unless the pod uses the host's).
    pub fn link_proc_files(&mut self, pids: &std::collections::HashSet<i32>, pod: bool) -> Result<()> {
        for f in self.files.iter_mut() {
            let FileKind::ProcOf { pid, rest } = &f.kind else { continue };
            if pids.contains(pid) {
                continue;
            }
            let path = if rest.is_empty() { format!("/proc/{pid}") } else { format!("/proc/{pid}/{rest}") };
            if pod {
                return Err(EngineError::Unsupported {
                    pid: *pid,
                    what: format!("{path} is open in the pod: a /proc file of a process outside it"),
                });
            }
            f.kind = path_kind(&self.root, &path)?;
        }
        Ok(())
    }

    /// An O_PATH descriptor: its path must still name that very file (in
    /// a pod, inside its root).
    fn opath(&self, target: &str, md: &std::fs::Metadata) -> std::result::Result<FileKind, &'static str> {
        if target.ends_with(crate::gone::DELETED) || !target.starts_with('/') {
            return Err("an O_PATH descriptor of a file whose name is gone");
        }
        let here = std::fs::symlink_metadata(under(&self.root, target))
            .map_err(|_| "an O_PATH descriptor not reachable by its path")?;
        if (here.dev(), here.ino()) != (md.dev(), md.ino()) {
            return Err("an O_PATH descriptor whose path now names another file, or lies outside the pod's root");
        }
        Ok(FileKind::OPath { path: target.to_string(), mode: md.mode() })
    }
}

fn open_proc_fd(pid: i32, fd: i32) -> Result<std::fs::File> {
    let p = format!("/proc/{pid}/fd/{fd}");
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&p)
        .map_err(|e| EngineError::Proc { path: p, msg: e.to_string() })
}

fn peek_pipe(pid: i32, fd: i32) -> Result<Vec<u8>> {
    let f: OwnedFd = open_proc_fd(pid, fd)?.into();
    Ok(cryopod_sys::pipe::peek(&f, pid)?)
}

fn pipe_capacity(pid: i32, fd: i32) -> Result<i32> {
    let f: OwnedFd = open_proc_fd(pid, fd)?.into();
    Ok(cryopod_sys::pipe::capacity(&f))
}

/// The path a file mapping is re-created from.
pub fn mapping_path(f: &OpenFile) -> String {
    match &f.kind {
        FileKind::Path { path, .. } => path.clone(),
        _ => String::new(),
    }
}

/// Refuse a restore if a mapped file changed since the checkpoint.
pub fn check_mapped_files(m: &Manifest, root: &str) -> Result<()> {
    for p in &m.processes {
        for v in &p.vmas {
            if let cryopod_image::VmaKind::File { file, .. } = v.kind {
                if let FileKind::Path { path, size, mtime_ns, .. } = &m.files[file as usize].kind {
                    let md = std::fs::metadata(under(root, path))
                        .map_err(|e| EngineError::Other(format!("mapped file {path} cannot be opened: {e}")))?;
                    let mt = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
                    if md.len() != *size || mt != *mtime_ns {
                        return Err(EngineError::Other(format!(
                            "mapped file {path} changed since the checkpoint (size {} then, {} now; modified at {} \
                             ns then, {mt} ns now)",
                            size,
                            md.len(),
                            mtime_ns
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

fn open_err(path: &str) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Other(format!("cannot open {path}: {e}"))
}

fn open_with(path: &str, flags: u32) -> Result<OwnedFd> {
    let acc = flags & libc::O_ACCMODE as u32;
    let f = std::fs::OpenOptions::new()
        .read(acc == libc::O_RDONLY as u32 || acc == libc::O_RDWR as u32)
        .write(acc == libc::O_WRONLY as u32 || acc == libc::O_RDWR as u32)
        .custom_flags((flags & !(libc::O_ACCMODE as u32)) as i32)
        .open(path)
        .map_err(open_err(path))?;
    Ok(f.into())
}

/// Open, in the restorer, every description that some fd refers to, each
/// moved to a number >= `base` (see [`Opened`]).
/// Paths are opened under `root` (see [`under`]); external files come from
/// `inherit` (name, fd of ours). TCP connections whose local address is
/// `closed_at` are given back reset (see [`cryopod_sys::tcp::reset_connection`]).
pub fn open_all(
    m: &Manifest,
    base: i32,
    objects: &HashMap<u32, OwnedFd>,
    root: &str,
    inherit: &[(String, BorrowedFd<'_>)],
    ns_of: Option<i32>,
    closed_at: Option<&[u8]>,
) -> Result<Opened> {
    let mut used = vec![false; m.files.len()];
    for p in &m.processes {
        for f in &p.fds {
            used[f.file as usize] = true;
        }
    }
    let mut opening = Opening::default();
    let mut out = Vec::new();
    let mut tcp = Vec::new();
    let pairs = crate::tty::make_pairs(m, ns_of)?;
    let mut gone = crate::gone::Made { ghosts: Default::default(), root: root.to_string() };
    for (i, f) in m.files.iter().enumerate() {
        // Unix sockets are made by the stubs themselves (see unix::plan);
        // TCP connections after everything else (listeners first).
        if !used[i]
            || matches!(
                f.kind,
                FileKind::Unix(_)
                    | FileKind::Tcp(_)
                    | FileKind::Pidfd { .. }
                    | FileKind::ProcOf { .. }
                    | FileKind::OwnNs { .. }
            )
        {
            if used[i] && matches!(f.kind, FileKind::Tcp(_)) {
                tcp.push(i);
            }
            out.push(None);
            continue;
        }
        let fd = match f.kind {
            FileKind::PtyMaster { .. } | FileKind::PtySlave { .. } => crate::tty::open_end(f, &pairs),
            _ => open_one(f, &mut opening, objects, root, inherit, ns_of, &mut gone.ghosts),
        }
        .map_err(EngineError::during(format!("file {}", describe(m, f))))?;
        out.push(Some(fds::dup_at_least(&fd, base)?));
    }
    drop(opening);
    crate::tty::seal_pairs(m, &pairs)?;
    let cwds = crate::gone::make_cwds(m, &mut gone)?;
    // Both ends of a connection inside the checkpoint exist before either
    // leaves repair mode (or the first would meet no one and be reset).
    let mut made = Vec::new();
    for &i in &tcp {
        let f = &m.files[i];
        let FileKind::Tcp(c) = &f.kind else { continue };
        let closed = closed_at.is_some_and(|a| c.local.0 == a);
        let during = || EngineError::during(format!("file {}", describe(m, f)));
        let fd = if closed {
            let family = c.family;
            crate::nsjoin::in_net(ns_of, move || Ok(cryopod_sys::tcp::reset_connection(family)?))
        } else {
            crate::inet::make_connection(c, ns_of)
        }
        .map_err(during())?;
        let raw = match !closed && cryopod_sys::tcp::fin_received(c.state) {
            true => {
                let st = c.clone();
                Some(crate::nsjoin::in_net(ns_of, move || Ok(cryopod_sys::tcp_fin::sender(&st)?)).map_err(during())?)
            }
            false => None,
        };
        made.push((i, fd, closed, raw));
    }
    let mut conns = Vec::new();
    for (i, fd, closed, raw) in made {
        let f = &m.files[i];
        fds::set_status_flags(&fd, (f.flags & !(libc::O_ACCMODE as u32)) as i32)?;
        out[i] = Some(fds::dup_at_least(&fd, base)?);
        if !closed {
            conns.push(Connection { fd, file: i, raw });
        }
    }
    Ok(Opened { srcs: out, conns, pairs, gone, cwds })
}

/// What [`open_all`] made: one fd per `m.files` entry (None for
/// mapping-only entries and what the stubs make), the TCP connections
/// still in repair mode, and the pseudo-terminal pairs (whose terminal
/// ends session leaders take as their controlling terminals).
pub struct Opened {
    pub srcs: Vec<Option<OwnedFd>>,
    pub conns: Vec<Connection>,
    pub pairs: std::collections::BTreeMap<u32, crate::tty::Pair>,
    /// Names made again for files whose names were gone (removed when
    /// this is dropped, after the tree holds them), and the working
    /// directories to enter for removed ones (see [`crate::gone`]).
    pub gone: crate::gone::Made,
    pub cwds: HashMap<String, String>,
}

/// A restored TCP connection, still in repair mode until the tree is
/// complete (see [`finish_connections`]): a restore that fails or is cut
/// short before then closes it without a word to the peer.
pub struct Connection {
    /// Our copy of the socket the tree gets.
    pub fd: OwnedFd,
    /// Its file in the image.
    pub file: usize,
    /// For a connection that had received its peer's FIN: a raw socket in
    /// its network namespace to hand it over (`cryopod_sys::tcp_fin`).
    pub raw: Option<OwnedFd>,
}

/// Let every restored connection out of repair mode (and send what it had
/// not sent yet), once the whole tree is made. The guardian is told first:
/// should we die after this, while the tree is killed, it puts them back
/// into repair mode so that they still close without a word.
pub fn finish_connections(m: &Manifest, conns: &[Connection], guard: &crate::guard::Guard) -> Result<()> {
    use crate::guard::Outcome;
    for c in conns {
        guard.sockopt_on_abort(Outcome::Kill, c.fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1)?;
    }
    for c in conns {
        let f = &m.files[c.file];
        if let FileKind::Tcp(conn) = &f.kind {
            cryopod_sys::tcp::finish(&c.fd, conn, c.raw.as_ref())
                .map_err(|e| EngineError::during(format!("file {}", describe(m, f)))(e.into()))?;
        }
    }
    Ok(())
}

/// A short description of a file for error messages and inspect.
pub fn describe(m: &Manifest, f: &OpenFile) -> String {
    match &f.kind {
        FileKind::Path { path, .. } => path.clone(),
        FileKind::Object { object } => match m.objects.get(*object as usize).map(|o| &o.origin) {
            Some(ObjectOrigin::Memfd { name, .. }) => format!("/memfd:{name} (deleted)"),
            Some(ObjectOrigin::Deleted { path, .. }) => format!("{path} (deleted)"),
            _ => format!("object {object}"),
        },
        FileKind::CharDev { path, .. } => path.clone(),
        FileKind::External { key } => format!("external file {key:?}"),
        FileKind::Mqueue { name } => format!("POSIX message queue /{name}"),
        FileKind::TcpListen { family, addr, port, .. } => {
            format!("TCP listener {}", crate::inet::show(*family, addr, *port))
        }
        FileKind::TcpEnded { unread, error: 0, .. } => {
            format!("TCP socket whose connection ended, {} bytes unread", unread.len())
        }
        FileKind::TcpEnded { unread, error, .. } => format!(
            "TCP socket whose connection ended with {} not yet read, {} bytes unread",
            cryopod_sys::Errno(*error),
            unread.len()
        ),
        FileKind::TcpConnecting { family, local, remote, .. } => format!(
            "TCP socket connecting from {} to {}",
            crate::inet::show(*family, &local.0, local.1),
            crate::inet::show(*family, &remote.0, remote.1)
        ),
        FileKind::TcpClosed { family, local, .. } => {
            format!("TCP socket never connected, at {}", crate::inet::show(*family, &local.0, local.1))
        }
        FileKind::Inotify { watches } => format!("inotify ({} watches)", watches.len()),
        FileKind::Fanotify { marks, .. } => format!("fanotify group ({} marks)", marks.len()),
        FileKind::BpfMap(b) => format!(
            "BPF map {:?} of type {} ({} entries{})",
            String::from_utf8_lossy(&b.name),
            b.map_type,
            b.entries.len(),
            if b.frozen { ", frozen" } else { "" }
        ),
        FileKind::Pidfd { pid } => format!("pidfd of process {pid}"),
        FileKind::RawIp { family, protocol, local, .. } => {
            format!("raw socket of protocol {protocol} at {}", crate::inet::show(*family, local, 0))
        }
        FileKind::Ping { family, local, .. } => {
            format!("ICMP socket {} (identifier {})", crate::inet::show(*family, &local.0, 0), local.1)
        }
        FileKind::Packet { protocol, ifname, .. } => format!(
            "packet socket for protocol {:#06x} on {}",
            u16::from_be(*protocol),
            if ifname.is_empty() { "every interface" } else { ifname }
        ),
        FileKind::Netlink(n) => format!(
            "netlink socket (protocol {}, port id {}, {} groups)",
            n.protocol,
            n.portid,
            n.groups.iter().map(|w| w.count_ones()).sum::<u32>()
        ),
        FileKind::Udp { family, local, peer, .. } => format!(
            "UDP socket {}{}",
            crate::inet::show(*family, &local.0, local.1),
            peer.as_ref().map(|p| format!(" -> {}", crate::inet::show(*family, &p.0, p.1))).unwrap_or_default()
        ),
        FileKind::Tcp(c) => format!(
            "TCP connection {} -> {}, {} bytes to send, {} to read",
            crate::inet::show(c.family, &c.local.0, c.local.1),
            crate::inet::show(c.family, &c.remote.0, c.remote.1),
            c.send_queue.len(),
            c.recv_queue.len()
        ),
        FileKind::Unix(u) => format!(
            "unix socket:[{}] {} {}, {} messages queued{}{}",
            u.ino,
            match u.kind {
                libc::SOCK_STREAM => "stream",
                libc::SOCK_DGRAM => "dgram",
                _ => "seqpacket",
            },
            crate::unix::plan::show_name(&u.name),
            u.queued.len(),
            match u.queued_fds.iter().map(Vec::len).sum::<usize>() {
                0 => String::new(),
                n => format!(" carrying {n} files"),
            },
            if u.queued_creds.is_empty() { "" } else { " with their senders' credentials" }
        ),
        FileKind::Terminal { path } => format!("{path} (terminal)"),
        FileKind::PtyMaster { index, .. } => format!("master of /dev/pts/{index}"),
        FileKind::PtySlave { index } => format!("/dev/pts/{index} (its master in the tree)"),
        FileKind::Pipe { pipe, write, queued, .. } => {
            format!("pipe:[{pipe}] {} end, {} bytes queued", if *write { "write" } else { "read" }, queued.len())
        }
        FileKind::Fifo { path, queued, deleted, .. } => {
            format!("fifo {path}{}, {} bytes queued", if *deleted { crate::gone::DELETED } else { "" }, queued.len())
        }
        FileKind::GoneDir { path, .. } => format!("{path}{}", crate::gone::DELETED),
        FileKind::OPath { path, .. } => format!("{path} (O_PATH)"),
        FileKind::ProcOf { pid, rest } => format!("/proc/{pid}/{rest} (of a process of the tree)"),
        FileKind::OwnNs { ns } => format!("its own {ns} namespace"),
        FileKind::EventFd { count, .. } => format!("eventfd (count {count})"),
        FileKind::SignalFd { mask } => format!("signalfd (mask {mask:#x})"),
        FileKind::TimerFd { interval_ns, value_ns, ticks, .. } => {
            format!("timerfd (next in {value_ns} ns, every {interval_ns} ns, {ticks} unread)")
        }
        FileKind::Epoll { entries, .. } => format!("epoll ({} watched)", entries.len()),
    }
}

/// What opening one description after another keeps: each pipe's two
/// ends by inode (a FIFO's: its holder, twice), and a holder per FIFO,
/// open for both directions so that neither end's open blocks or sees the
/// other gone.
#[derive(Default)]
struct Opening {
    pipes: HashMap<u64, (OwnedFd, OwnedFd)>,
    fifo_holders: Vec<OwnedFd>,
    /// BPF maps made: their ids at checkpoint, then now.
    bpf_maps: HashMap<u32, u32>,
}

fn open_one(
    f: &OpenFile,
    opening: &mut Opening,
    objects: &HashMap<u32, OwnedFd>,
    root: &str,
    inherit: &[(String, BorrowedFd<'_>)],
    ns_of: Option<i32>,
    ghosts: &mut crate::gone::Ghosts,
) -> Result<OwnedFd> {
    let flags = f.flags;
    let status = (flags & !(libc::O_ACCMODE as u32)) as i32;
    let fd = match &f.kind {
        FileKind::Path { path, mode, .. } => {
            let path = &under(root, path);
            let fd = if mode & libc::S_IFMT == libc::S_IFDIR {
                open_with(path, libc::O_RDONLY as u32 | libc::O_DIRECTORY as u32)?
            } else {
                open_with(path, flags)?
            };
            fds::seek_to(&fd, f.pos)?;
            fd
        }
        FileKind::Object { object } => {
            // A new description of the object created by `create_objects`.
            let obj =
                objects.get(object).ok_or_else(|| EngineError::Other(format!("object {object} was not created")))?;
            let fd = open_with(&format!("/proc/self/fd/{}", obj.as_raw_fd()), flags)?;
            fds::seek_to(&fd, f.pos)?;
            fd
        }
        FileKind::CharDev { path, .. } => open_with(&under(root, path), flags | libc::O_NOCTTY as u32)?,
        FileKind::Unix(_)
        | FileKind::Tcp(_)
        | FileKind::Pidfd { .. }
        | FileKind::ProcOf { .. }
        | FileKind::OwnNs { .. } => {
            return Err(EngineError::Other(
                "made apart (unix sockets, pidfds, /proc files by the stubs, TCP last)".into(),
            ))
        }
        FileKind::PtyMaster { .. } | FileKind::PtySlave { .. } => {
            return Err(EngineError::Other("made apart (pseudo-terminal pairs first)".into()))
        }
        FileKind::Mqueue { name } => {
            let pid = ns_of.ok_or_else(|| EngineError::Other("a message queue outside a pod".into()))?;
            let flags = (f.flags & (libc::O_ACCMODE | libc::O_NONBLOCK) as u32) as i32;
            crate::nsjoin::run_in(pid, libc::CLONE_NEWIPC, {
                let name = name.clone();
                move || Ok(cryopod_sys::ipc::mq_open_fd(&name, flags)?)
            })?
        }
        FileKind::Inotify { watches } => {
            let fd = crate::inotify::restore(watches, root)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::BpfMap(b) => {
            let fd = crate::bpfmap::restore(b, flags, &mut opening.bpf_maps)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::Fanotify { flags, event_flags, marks } => {
            let fd = crate::fanotify::restore(*flags, *event_flags, marks, root)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::Udp { .. }
        | FileKind::TcpListen { .. }
        | FileKind::TcpClosed { .. }
        | FileKind::TcpConnecting { .. }
        | FileKind::TcpEnded { .. }
        | FileKind::RawIp { .. }
        | FileKind::Ping { .. }
        | FileKind::Packet { .. } => {
            let fd = crate::inet::make(&f.kind, ns_of)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::Netlink(n) => {
            let n = n.clone();
            let fd = crate::nsjoin::in_net(ns_of, move || Ok(cryopod_sys::netlink::make(&n)?))?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::External { key } => {
            let (_, fd) = inherit.iter().find(|(k, _)| k == key).ok_or_else(|| {
                EngineError::Other(format!("the image needs the external file {key:?}, which was not supplied"))
            })?;
            fds::dup_at_least(fd, 3)?
        }
        FileKind::Terminal { path } => {
            // Attach to the terminal the restorer runs in, if any.
            let mine = (0..3).find_map(|i| {
                let l = std::fs::read_link(format!("/proc/self/fd/{i}")).ok()?;
                let md = std::fs::metadata(&l).ok()?;
                let major = cryopod_sys::fs::major(md.rdev());
                ((136..=143).contains(&major) || major == 4).then(|| l.to_string_lossy().into_owned())
            });
            let p = mine.unwrap_or_else(|| path.clone());
            open_with(&p, flags | libc::O_NOCTTY as u32)?
        }
        FileKind::Pipe { pipe, write, capacity, queued } => {
            let pipes = &mut opening.pipes;
            let (r, w) = match pipes.get(pipe) {
                Some(e) => (e.0.try_clone().map_err(open_err("pipe"))?, e.1.try_clone().map_err(open_err("pipe"))?),
                None => {
                    let (r, w) = cryopod_sys::pipe::pipe()?;
                    fill_pipe(&w, *capacity, queued)?;
                    let c = (r.try_clone().map_err(open_err("pipe"))?, w.try_clone().map_err(open_err("pipe"))?);
                    pipes.insert(*pipe, c);
                    (r, w)
                }
            };
            let fd = if *write { w } else { r };
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::EventFd { count, semaphore } => {
            let fd = events::eventfd(0, if *semaphore { libc::EFD_SEMAPHORE } else { 0 })?;
            if *count > 0 {
                cryopod_sys::io::write_all(&fd, &count.to_ne_bytes())?;
            }
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::SignalFd { mask } => {
            let fd = events::signalfd(*mask, 0)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::TimerFd { clock, interval_ns, value_ns, ticks } => {
            let fd = events::timerfd(*clock, 0)?;
            crate::events::restore_timerfd(&fd, *clock, *interval_ns, *value_ns, *ticks)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::Epoll { .. } => {
            // The interest list is registered by the owning stub, under its
            // own fd numbers (see tree.rs).
            events::epoll_create(0)?
        }
        FileKind::GoneDir { path, mode } => {
            let at = ghosts.make(root, path, crate::gone::Kind::Dir { mode: *mode })?;
            let fd = open_with(&under(root, &at), libc::O_RDONLY as u32 | libc::O_DIRECTORY as u32)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
        FileKind::OPath { path, mode } => {
            let nofollow = if mode & libc::S_IFMT == libc::S_IFLNK { libc::O_NOFOLLOW } else { 0 };
            let fd = open_with(&under(root, path), (libc::O_PATH | nofollow) as u32)?;
            let now = cryopod_sys::fs::fstat_mode(&fd)?;
            if now & libc::S_IFMT != mode & libc::S_IFMT {
                return Err(EngineError::Other(format!(
                    "{path} is another kind of file now (mode {now:o}, was {mode:o})"
                )));
            }
            fd
        }
        FileKind::Fifo { path, pipe, queued, deleted } => {
            let made;
            let path = match deleted {
                true => {
                    made = ghosts.make(root, path, crate::gone::Kind::Fifo)?;
                    &under(root, &made)
                }
                false => &under(root, path),
            };
            if !opening.pipes.contains_key(pipe) {
                let holder = open_with(path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
                fill_pipe(&holder, 0, queued)?;
                let c = holder.try_clone().map_err(open_err(path))?;
                opening.pipes.insert(*pipe, (c, holder.try_clone().map_err(open_err(path))?));
                opening.fifo_holders.push(holder);
            }
            let fd = open_with(path, flags | libc::O_NONBLOCK as u32)?;
            fds::set_status_flags(&fd, status)?;
            fd
        }
    };
    Ok(fd)
}

fn fill_pipe(w: &OwnedFd, capacity: i32, data: &[u8]) -> Result<()> {
    if capacity > 0 {
        cryopod_sys::pipe::set_capacity(w, capacity.max(data.len() as i32));
    }
    if !data.is_empty() {
        fds::set_status_flags(w, libc::O_NONBLOCK)?;
        cryopod_sys::io::write_all(w, data)?;
    }
    Ok(())
}

/// Re-create, in the restorer, every memfd and deleted file of the image
/// with its contents, at fd numbers >= `base` (stubs inherit them: areas map
/// them, fds reopen them). A deleted file is created under its old name when
/// that is free (so links read "<path> (deleted)" again), else beside it,
/// and unlinked at once.
pub fn create_objects(
    m: &Manifest,
    reader: &cryopod_image::store::PackReader,
    base: i32,
    root: &str,
) -> Result<HashMap<u32, OwnedFd>> {
    let mut out = HashMap::new();
    for (i, o) in m.objects.iter().enumerate() {
        let file: std::fs::File = match &o.origin {
            ObjectOrigin::SharedAnon => continue,
            ObjectOrigin::Memfd { name, .. } => events::memfd_create(name)?.into(),
            ObjectOrigin::Deleted { path, mode } => {
                let path = under(root, path);
                let at = if std::path::Path::new(&path).exists() {
                    format!("{path}.cryopod-restore-{}-{i}", std::process::id())
                } else {
                    path.clone()
                };
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(&at)
                    .map_err(open_err(&at))?;
                let _ = std::fs::remove_file(&at);
                f
            }
        };
        let what = format!("memory object {i}");
        file.set_len(o.size).map_err(|e| EngineError::Other(format!("{what}: {e}")))?;
        let seals = match &o.origin {
            ObjectOrigin::Memfd { seals, .. } => *seals,
            _ => 0,
        };
        let mut buf = vec![0u8; (cryopod_image::CHUNK_PAGES * cryopod_image::PAGE) as usize];
        for run in &o.runs {
            if let Some(j) = crate::pages::FillJob::of(run, 0) {
                let ch = &m.chunks[j.chunk as usize];
                reader.read_chunk(ch, &mut buf)?;
                // Never past the object's size: its last page may be partial.
                let r = j.range();
                let n = (r.len() as u64).min(o.size.saturating_sub(run.addr)) as usize;
                file.write_all_at(&buf[r.start..r.start + n], run.addr)
                    .map_err(|e| EngineError::Other(format!("{what}: {e}")))?;
            }
        }
        if seals != 0 {
            events::memfd_add_seals(&file, seals).map_err(|e| EngineError::Other(format!("{what}: {e}")))?;
        }
        out.insert(i as u32, fds::dup_at_least(&file, base)?);
    }
    Ok(out)
}
