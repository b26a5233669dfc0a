//! What the stubs make themselves, once every process of the tree exists:
//! unix sockets, pidfds, and files under /proc/PID of the tree's processes.
//!
//! Restoring unix sockets: a list of steps, each run by one stub in its
//! own process (so that SO_PEERCRED names the right PID and credentials,
//! and names resolve in the tree's own mount and network namespaces), in
//! the order the restorer sends them. A socket is made at a staging fd of
//! its creator; once all exist, are connected, hold their queued data and
//! their shutdown state, every holder puts it at its fd numbers (taking it
//! from the creator with pidfd_getfd when it is another process).
//!
//! Order: pidfds; listeners; for each listener its accepted connections
//! (connect by the connecting process, then accept), then its pending ones
//! (connect only, in queue order); socket pairs (by their creator);
//! datagram sockets bound and connected; /proc files; queued data sent
//! from the peer, with the files each message carries (taken from where
//! they are by then: a creator's staging fd, or a holder's fd) and its
//! sender's credentials; shutdown and flags; fds placed; staging fds
//! closed; the numbers that only carried files in flight closed.

use crate::unix::{CONNECTED, LISTEN};
use crate::{EngineError, Result};
use cryopod_image::{FileKind, Manifest, Process, UnixSock};
use cryopod_sys::{fd, sock, TargetFd};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A socket's name for messages: a path, or @name for an abstract one.
pub fn show_name(name: &[u8]) -> String {
    match name.split_first() {
        None => "(unnamed)".into(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    /// socket, bind, listen.
    Listen { file: u32 },
    /// socket, connect to a listener's name.
    Connect { file: u32, listener: u32 },
    /// accept on the listener's staging fd.
    Accept { file: u32, listener: u32 },
    /// socketpair; `b` None: the other end is gone (kept at a spare fd until
    /// the data is sent, then closed).
    Pair { a: u32, b: Option<u32> },
    /// A datagram socket, bound if it had a name.
    Datagram { file: u32 },
    /// Connect a datagram socket to its peer's name.
    ConnectDatagram { file: u32, peer: u32 },
    /// Connect a socket to its peer outside the checkpoint, by name.
    ConnectExternal { file: u32 },
    /// Send `to`'s queued messages from `from`'s staging fd (`spare`: from
    /// the spare end of an orphan pair), each with the files it carries
    /// (see [`Plan::sources`]) and its credentials.
    Send { to: u32, from: u32, spare: bool },
    /// Send some of `to`'s queued datagrams (by index) to its name: from
    /// the socket that sent them, if it is in the image (so the receiver
    /// sees the same sender address), else from a fresh unnamed socket.
    SendTo { to: u32, from: Option<u32>, msgs: Vec<usize> },
    /// Shutdown, SO_PASSCRED, status flags; close a spare end.
    Finish { file: u32 },
    /// Put sockets at their fd numbers: (fd, file, creator pid, cloexec).
    Place { fds: Vec<(TargetFd, u32, i32, bool)> },
    /// Close the staging fds of these files.
    Close { files: Vec<u32> },
    /// Close numbers that only carried files in flight.
    Uncarry { fds: Vec<TargetFd> },
    /// A pidfd of process `target` at fd number `fd`.
    Pidfd { fd: TargetFd, target: i32, nonblock: bool, cloexec: bool },
    /// Open a /proc file of a process of the tree (it exists now), or a
    /// namespace file of the stub's own, at the file's staging fd.
    ProcFile { file: u32 },
}

#[derive(Debug, Clone)]
pub struct Step {
    /// The process (as the image numbers it) that runs the step.
    pub pid: i32,
    pub op: Op,
}

/// The steps and where staging fds live.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Staging fd of file f in its creator: `stage + f`; spare ends at
    /// `stage + files + f`.
    pub stage: TargetFd,
    pub nfiles: i32,
    /// Where each file a queued message carries is when the messages are
    /// sent, taken from there with pidfd_getfd.
    pub sources: HashMap<u32, Source>,
}

/// Where a file is when the queued messages are sent.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// At its staging fd in this process, which made it.
    Staged(i32),
    /// At this fd number of this process.
    Held(i32, TargetFd),
}

/// The sockets one stub made, each at its staging number (where other
/// stubs take it from with pidfd_getfd), until the step that closes it.
#[derive(Default)]
pub struct Staged(HashMap<TargetFd, OwnedFd>);

impl Staged {
    /// Move `fd` to staging number `at` and keep it there.
    fn park(&mut self, fd: OwnedFd, at: TargetFd) -> Result<()> {
        let parked = fd::move_to(fd, at, true)?;
        self.0.insert(at, parked);
        Ok(())
    }

    /// The socket staged at `at` by this process.
    fn get(&self, at: TargetFd) -> Result<BorrowedFd<'_>> {
        self.0
            .get(&at)
            .map(|f| f.as_fd())
            .ok_or_else(|| EngineError::Other(format!("no socket staged at fd {at} in this process")))
    }

    /// Close the socket staged at `at`, if any.
    fn close(&mut self, at: TargetFd) {
        self.0.remove(&at);
    }
}

static NO_SOCK: UnixSock = UnixSock {
    ino: 0,
    kind: 0,
    state: 0,
    name: Vec::new(),
    peer: 0,
    backlog: 0,
    pending: Vec::new(),
    queued: Vec::new(),
    queued_from: Vec::new(),
    queued_fds: Vec::new(),
    queued_creds: Vec::new(),
    shutdown: 0,
    peer_cred: (0, 0, 0),
    passcred: false,
    file: None,
    rel_dir: String::new(),
    external: Vec::new(),
    filter: (Vec::new(), false),
};

fn sock_of(m: &Manifest, f: u32) -> Option<&UnixSock> {
    match &m.files.get(f as usize)?.kind {
        FileKind::Unix(u) => Some(u),
        _ => None,
    }
}

impl Plan {
    pub fn staging(&self, f: u32) -> TargetFd {
        TargetFd(self.stage.0 + f as i32)
    }

    pub fn spare(&self, f: u32) -> TargetFd {
        TargetFd(self.stage.0 + self.nfiles + f as i32)
    }

    /// The steps for every unix socket of `m` (empty if there are none).
    /// `stage`: first staging fd, above every fd the tree uses.
    pub fn build(m: &Manifest, stage: TargetFd) -> Result<Plan> {
        let mut p = Plan { steps: Vec::new(), stage, nfiles: m.files.len() as i32, sources: HashMap::new() };
        pidfd_steps(m, &mut p)?;
        let live: Vec<&Process> = m.processes.iter().filter(|p| p.zombie_status.is_none()).collect();
        // Holders of each file, in tree order, and socket files by inode.
        let mut holders: HashMap<u32, Vec<i32>> = HashMap::new();
        for pr in &live {
            for fd in &pr.fds {
                let h = holders.entry(fd.file).or_default();
                if !h.contains(&pr.pid) {
                    h.push(pr.pid);
                }
            }
        }
        let by_ino: HashMap<u32, u32> = (0..m.files.len() as u32)
            .filter_map(|f| sock_of(m, f).map(|u| (u.ino, f)))
            .filter(|(_, f)| holders.contains_key(f))
            .collect();
        let proc_files: Vec<u32> = (0..m.files.len() as u32)
            .filter(|f| matches!(m.files[*f as usize].kind, FileKind::ProcOf { .. } | FileKind::OwnNs { .. }))
            .filter(|f| holders.contains_key(f))
            .collect();
        if by_ino.is_empty() && proc_files.is_empty() {
            return Ok(p);
        }
        let is_live = |pid: i32| pid > 0 && live.iter().any(|pr| pr.pid == pid);
        let first_holder = |f: u32| holders.get(&f).and_then(|h| h.first().copied()).unwrap_or(0);
        let mut creator: HashMap<u32, i32> = HashMap::new();
        let mut done: std::collections::HashSet<u32> = Default::default();
        let mut files: Vec<u32> = by_ino.values().copied().collect();
        files.sort_unstable();
        // Every file of `files` is a socket; the fallback is never used.
        let u = |f: u32| sock_of(m, f).unwrap_or(&NO_SOCK);

        // Listeners, then their accepted and pending connections.
        for &l in files.iter().filter(|&&f| u(f).state == LISTEN) {
            let lu = u(l);
            let c = if is_live(lu.peer_cred.0) { lu.peer_cred.0 } else { first_holder(l) };
            creator.insert(l, c);
            done.insert(l);
            p.steps.push(Step { pid: c, op: Op::Listen { file: l } });
        }
        for &l in files.iter().filter(|&&f| u(f).state == LISTEN) {
            let lu = u(l);
            let pending: Vec<u32> = lu.pending.iter().filter_map(|i| by_ino.get(i).copied()).collect();
            for &a in &files {
                let au = u(a);
                let accepted = au.state == CONNECTED && au.kind == lu.kind && au.name == lu.name && !done.contains(&a);
                let Some(&c) = by_ino.get(&au.peer) else { continue };
                if !accepted || pending.contains(&c) || done.contains(&c) {
                    continue;
                }
                // The client is connected by the process that connected it.
                let who = if is_live(au.peer_cred.0) { au.peer_cred.0 } else { first_holder(c) };
                creator.insert(c, who);
                creator.insert(a, creator[&l]);
                done.insert(a);
                done.insert(c);
                p.steps.push(Step { pid: who, op: Op::Connect { file: c, listener: l } });
                p.steps.push(Step { pid: creator[&l], op: Op::Accept { file: a, listener: l } });
            }
            for c in pending {
                let who = first_holder(c);
                creator.insert(c, who);
                done.insert(c);
                p.steps.push(Step { pid: who, op: Op::Connect { file: c, listener: l } });
            }
        }
        // Pairs (and orphans whose peer is gone).
        for &a in &files {
            if done.contains(&a) {
                continue;
            }
            let au = u(a);
            let peer = by_ino.get(&au.peer).copied().filter(|&b| u(b).peer == au.ino && !done.contains(&b));
            // A connection whose other end was closed (the kernel may not
            // even name the dead peer any more); a datagram socket whose
            // connected peer was closed (made as a pair's end, bound to its
            // name, its messages sent from the spare end, bound to theirs).
            let orphan = au.state == CONNECTED
                && !by_ino.contains_key(&au.peer)
                && au.external.is_empty()
                && (au.kind != libc::SOCK_DGRAM || au.peer == 0);
            if peer.is_none() && !orphan {
                continue;
            }
            let who = if is_live(au.peer_cred.0) { au.peer_cred.0 } else { first_holder(a) };
            creator.insert(a, who);
            done.insert(a);
            if let Some(b) = peer {
                creator.insert(b, who);
                done.insert(b);
            }
            p.steps.push(Step { pid: who, op: Op::Pair { a, b: peer } });
        }
        // Datagram sockets: bound first, then connected to their peers.
        let dgrams: Vec<u32> = files.iter().copied().filter(|f| !done.contains(f)).collect();
        for &f in &dgrams {
            creator.insert(f, first_holder(f));
            p.steps.push(Step { pid: first_holder(f), op: Op::Datagram { file: f } });
        }
        for &f in &dgrams {
            if !u(f).external.is_empty() {
                p.steps.push(Step { pid: creator[&f], op: Op::ConnectExternal { file: f } });
                continue;
            }
            if let Some(&peer) = by_ino.get(&u(f).peer) {
                if u(peer).name.is_empty() {
                    return Err(EngineError::Other(format!(
                        "datagram socket:[{}] is connected to an unnamed socket",
                        u(f).ino
                    )));
                }
                p.steps.push(Step { pid: creator[&f], op: Op::ConnectDatagram { file: f, peer } });
            }
        }
        for &f in &proc_files {
            creator.insert(f, first_holder(f));
            p.steps.push(Step { pid: first_holder(f), op: Op::ProcFile { file: f } });
        }
        // The files queued messages carry: made by a stub by now, or held
        // (pidfds are placed first; every other file since the fork).
        for g in files.iter().flat_map(|&f| u(f).queued_fds.iter().flatten().copied()) {
            let held = || {
                let at = |pr: &&Process| {
                    pr.fds.iter().find(|fd| fd.file == g).map(|fd| Source::Held(pr.pid, TargetFd(fd.fd)))
                };
                live.iter().find_map(at)
            };
            let src = creator.get(&g).map(|&c| Source::Staged(c)).or_else(held).ok_or_else(|| {
                EngineError::Other(format!("file {g}, which a queued message carries, is held by no process"))
            })?;
            p.sources.insert(g, src);
        }
        // Queued data, from the peer's end (or by name).
        for &f in &files {
            let fu = u(f);
            if fu.queued.is_empty() || fu.state == LISTEN {
                continue;
            }
            match by_ino.get(&fu.peer) {
                Some(&from) if u(from).peer == fu.ino => {
                    p.steps.push(Step { pid: creator[&from], op: Op::Send { to: f, from, spare: false } })
                }
                None if fu.state == CONNECTED && (fu.kind != libc::SOCK_DGRAM || fu.peer == 0) => {
                    p.steps.push(Step { pid: creator[&f], op: Op::Send { to: f, from: f, spare: true } })
                }
                _ => {
                    // Runs of datagrams from one sender, in queue order.
                    let sender = |i: usize| {
                        let n = fu.queued_from.get(i).filter(|n| !n.is_empty())?;
                        files.iter().copied().find(|&s| s != f && u(s).kind == libc::SOCK_DGRAM && &u(s).name == n)
                    };
                    let mut i = 0;
                    while i < fu.queued.len() {
                        let from = sender(i);
                        let mut msgs = vec![i];
                        while i + 1 < fu.queued.len() && sender(i + 1) == from {
                            i += 1;
                            msgs.push(i);
                        }
                        let pid = from.map(|s| creator[&s]).unwrap_or(creator[&f]);
                        p.steps.push(Step { pid, op: Op::SendTo { to: f, from, msgs } });
                        i += 1;
                    }
                }
            }
        }
        for &f in &files {
            p.steps.push(Step { pid: creator[&f], op: Op::Finish { file: f } });
        }
        // Every holder takes its sockets; then creators drop staging fds.
        for pr in &live {
            let fds: Vec<(TargetFd, u32, i32, bool)> = pr
                .fds
                .iter()
                .filter(|fd| creator.contains_key(&fd.file))
                .map(|fd| (TargetFd(fd.fd), fd.file, creator[&fd.file], fd.cloexec))
                .collect();
            if !fds.is_empty() {
                p.steps.push(Step { pid: pr.pid, op: Op::Place { fds } });
            }
        }
        let mut by_creator: HashMap<i32, Vec<u32>> = HashMap::new();
        for (&f, &c) in &creator {
            by_creator.entry(c).or_default().push(f);
        }
        let mut cs: Vec<_> = by_creator.into_iter().collect();
        cs.sort();
        for (c, files) in cs {
            p.steps.push(Step { pid: c, op: Op::Close { files } });
        }
        for pr in live.iter().filter(|pr| !pr.carried.is_empty()) {
            let fds = pr.carried.iter().map(|&fd| TargetFd(fd)).collect();
            p.steps.push(Step { pid: pr.pid, op: Op::Uncarry { fds } });
        }
        Ok(p)
    }
}

/// pidfds: each holder opens its own, once every process exists (they
/// name processes, which do not exist yet when the restorer opens files).
fn pidfd_steps(m: &Manifest, p: &mut Plan) -> Result<()> {
    for pr in m.processes.iter().filter(|pr| pr.zombie_status.is_none()) {
        for fd in &pr.fds {
            let Some(f) = m.files.get(fd.file as usize) else { continue };
            if let FileKind::Pidfd { pid } = f.kind {
                if pid != -1 && !m.processes.iter().any(|t| t.pid == pid && t.zombie_status.is_none()) {
                    return Err(EngineError::Other(format!("pidfd {} of process {} names no process", fd.fd, pr.pid)));
                }
                let nonblock = f.flags & libc::O_NONBLOCK as u32 != 0;
                p.steps.push(Step {
                    pid: pr.pid,
                    op: Op::Pidfd { fd: TargetFd(fd.fd), target: pid, nonblock, cloexec: fd.cloexec },
                });
            }
        }
    }
    Ok(())
}

/// Send message `i` of `u`'s queue on `fd` (to `name`), with the files it
/// carries and its credentials.
fn send_queued(
    fd: BorrowedFd,
    u: &UnixSock,
    i: usize,
    name: Option<&[u8]>,
    carried: &HashMap<u32, OwnedFd>,
) -> std::result::Result<(), String> {
    let msg = u.queued.get(i).ok_or("no such message")?;
    let files = u.queued_fds.get(i).map(Vec::as_slice).unwrap_or_default();
    let fds = files
        .iter()
        .map(|g| carried.get(g).map(|f| f.as_fd()).ok_or(format!("file {g} not at hand")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let creds = u.queued_creds.get(i).copied();
    cryopod_sys::unix_queue::send(fd, msg, name, &fds, creds).map_err(|e| e.to_string())
}

fn err(op: &str, f: u32, e: impl std::fmt::Display) -> EngineError {
    EngineError::Other(format!("unix socket (file {f}) {op}: {e}"))
}

/// Bind `fd` to `name`; a path still holding a dead socket's file is
/// unlinked first (its socket was checkpointed and is gone).
fn bind_name(fd: BorrowedFd, name: &[u8]) -> Result<()> {
    match sock::bind(fd, name) {
        Err(e) if e.errno.0 == libc::EADDRINUSE && name.first() != Some(&0) => {
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
            let is_sock = std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false);
            if is_sock {
                let _ = std::fs::remove_file(path);
            }
            Ok(sock::bind(fd, name)?)
        }
        r => Ok(r?),
    }
}

/// A name relative to a directory is bound and reached from there (the
/// stub's working directory is its own until its process's is set).
fn enter_dir_of(u: &UnixSock) -> std::io::Result<()> {
    match u.rel_dir.is_empty() {
        true => Ok(()),
        false => std::env::set_current_dir(&u.rel_dir),
    }
}

/// The socket file a bind made gets its mode back (umask took some).
fn set_file_mode(u: &UnixSock) -> std::io::Result<()> {
    match (u.file, u.name.first()) {
        (Some((mode, _, _)), Some(&b)) if b != 0 => {
            use std::os::unix::fs::PermissionsExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&u.name));
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        }
        _ => Ok(()),
    }
}

fn set_file_owner(u: &UnixSock) -> std::io::Result<()> {
    match (u.file, u.name.first()) {
        (Some((_, uid, gid)), Some(&b)) if b != 0 => {
            std::os::unix::fs::lchown(std::ffi::OsStr::from_bytes(&u.name), Some(uid), Some(gid))
        }
        _ => Ok(()),
    }
}

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;

impl Plan {
    /// Run step `i` in the calling stub (process `p` of `m`), which keeps
    /// the sockets it made in `staged` from one step to the next.
    pub fn run(&self, m: &Manifest, p: &Process, i: usize, staged: &mut Staged) -> Result<()> {
        let step = self.steps.get(i).ok_or_else(|| EngineError::Other(format!("no socket step {i}")))?;
        let euid = p.creds.uids[1];
        let egid = p.creds.gids[1];
        // The files the messages carry, taken while still privileged.
        let carried = self.carried_by(m, &step.op)?;
        // Sends keep the privilege to give messages their credentials: a
        // send to a name checks the socket file as the process would (by
        // its file system ids); a connected send checks nothing.
        let switch = (euid, egid) != (0, 0)
            && !matches!(step.op, Op::Place { .. } | Op::Close { .. } | Op::Pidfd { .. } | Op::Send { .. });
        let by_fs = matches!(step.op, Op::SendTo { .. });
        if switch && by_fs {
            cryopod_sys::creds::set_fs_ids(euid, egid);
        } else if switch {
            cryopod_sys::creds::set_effective_ids(euid, egid)?;
        }
        let r = self.run_op(m, &step.op, staged, &carried);
        if switch && by_fs {
            cryopod_sys::creds::set_fs_ids(0, 0);
        } else if switch {
            cryopod_sys::creds::set_effective_ids(0, 0)?;
        }
        // A socket file given to another owner since its bind: as it was
        // (a user's image may not ask for that: see trust).
        if let (Ok(()), Op::Listen { file } | Op::Datagram { file }) = (&r, &step.op) {
            if let Some(u) =
                sock_of(m, *file).filter(|u| u.file.is_some_and(|(_, uid, gid)| (uid, gid) != (euid, egid)))
            {
                set_file_owner(u).map_err(|e| err("chown", *file, e))?;
            }
        }
        r
    }

    /// Copies of the files `op`'s messages carry, by file.
    fn carried_by(&self, m: &Manifest, op: &Op) -> Result<HashMap<u32, OwnedFd>> {
        let to = match op {
            Op::Send { to, .. } | Op::SendTo { to, .. } => *to,
            _ => return Ok(HashMap::new()),
        };
        let mut got = HashMap::new();
        for &g in sock_of(m, to).iter().flat_map(|u| u.queued_fds.iter().flatten()) {
            if got.contains_key(&g) {
                continue;
            }
            let (pid, at) = match self
                .sources
                .get(&g)
                .ok_or_else(|| err("refill", to, format!("no source for file {g} it carries")))?
            {
                Source::Staged(c) => (*c, self.staging(g)),
                Source::Held(pid, at) => (*pid, *at),
            };
            let pfd = cryopod_sys::pidfd::pidfd_open(pid)?;
            got.insert(g, cryopod_sys::pidfd::pidfd_getfd(&pfd, pid, at)?);
        }
        Ok(got)
    }

    fn run_op(&self, m: &Manifest, op: &Op, staged: &mut Staged, carried: &HashMap<u32, OwnedFd>) -> Result<()> {
        let s = |f: u32| sock_of(m, f).ok_or_else(|| EngineError::Other(format!("file {f} is not a unix socket")));
        match op {
            Op::Listen { file } => {
                let u = s(*file)?;
                enter_dir_of(u).map_err(|e| err("chdir", *file, e))?;
                let fd = sock::socket(u.kind)?;
                bind_name(fd.as_fd(), &u.name).map_err(|e| err("bind", *file, e))?;
                set_file_mode(u).map_err(|e| err("chmod", *file, e))?;
                sock::listen(&fd, u.backlog as i32).map_err(|e| err("listen", *file, e))?;
                staged.park(fd, self.staging(*file))
            }
            Op::Connect { file, listener } => {
                let (u, l) = (s(*file)?, s(*listener)?);
                enter_dir_of(l).map_err(|e| err("chdir", *listener, e))?;
                let fd = sock::socket(u.kind)?;
                if !u.name.is_empty() && u.name != l.name {
                    bind_name(fd.as_fd(), &u.name).map_err(|e| err("bind", *file, e))?;
                }
                sock::connect(&fd, &l.name).map_err(|e| err("connect", *file, e))?;
                staged.park(fd, self.staging(*file))
            }
            Op::Accept { file, listener } => {
                let fd = sock::accept(staged.get(self.staging(*listener))?).map_err(|e| err("accept", *file, e))?;
                staged.park(fd, self.staging(*file))
            }
            Op::Pair { a, b } => {
                let u = s(*a)?;
                let (x, y) = sock::socketpair(u.kind)?;
                // An orphan datagram socket's name, and its dead peer's on
                // the spare end (an abstract one: checked at checkpoint).
                if b.is_none() && u.kind == libc::SOCK_DGRAM {
                    if !u.name.is_empty() {
                        enter_dir_of(u).map_err(|e| err("chdir", *a, e))?;
                        bind_name(x.as_fd(), &u.name).map_err(|e| err("bind", *a, e))?;
                        set_file_mode(u).map_err(|e| err("chmod", *a, e))?;
                    }
                    if let Some(from) = u.queued_from.first().filter(|n| !n.is_empty()) {
                        bind_name(y.as_fd(), from).map_err(|e| err("bind of its dead peer's name", *a, e))?;
                    }
                }
                staged.park(x, self.staging(*a))?;
                match b {
                    Some(b) => staged.park(y, self.staging(*b)),
                    None => staged.park(y, self.spare(*a)),
                }
            }
            Op::Datagram { file } => {
                let u = s(*file)?;
                enter_dir_of(u).map_err(|e| err("chdir", *file, e))?;
                let fd = sock::socket(u.kind)?;
                if !u.name.is_empty() {
                    bind_name(fd.as_fd(), &u.name).map_err(|e| err("bind", *file, e))?;
                    set_file_mode(u).map_err(|e| err("chmod", *file, e))?;
                }
                staged.park(fd, self.staging(*file))
            }
            Op::ConnectDatagram { file, peer } => {
                enter_dir_of(s(*peer)?).map_err(|e| err("chdir", *peer, e))?;
                sock::connect(staged.get(self.staging(*file))?, &s(*peer)?.name)
                    .map_err(|e| err("connect", *file, e))?;
                Ok(())
            }
            Op::Send { to, from, spare } => {
                let fd = staged.get(if *spare { self.spare(*from) } else { self.staging(*from) })?;
                let u = s(*to)?;
                for i in 0..u.queued.len() {
                    send_queued(fd, u, i, None, carried).map_err(|e| err("refill", *to, e))?;
                }
                Ok(())
            }
            Op::ConnectExternal { file } => {
                let u = s(*file)?;
                sock::connect(staged.get(self.staging(*file))?, &u.external).map_err(|e| {
                    EngineError::Other(format!(
                        "the peer outside the checkpoint that socket:[{}] was connected to, {}, cannot be reached: {e}",
                        u.ino,
                        show_name(&u.external)
                    ))
                })
            }
            Op::SendTo { to, from, msgs } => {
                let u = s(*to)?;
                enter_dir_of(u).map_err(|e| err("chdir", *to, e))?;
                let tmp;
                let fd = match from {
                    Some(f) => staged.get(self.staging(*f))?,
                    None => {
                        tmp = sock::socket(libc::SOCK_DGRAM)?;
                        tmp.as_fd()
                    }
                };
                for &i in msgs {
                    send_queued(fd, u, i, Some(&u.name), carried).map_err(|e| err("refill", *to, e))?;
                }
                Ok(())
            }
            Op::Finish { file } => {
                let u = s(*file)?;
                let fd = staged.get(self.staging(*file))?;
                if u.passcred {
                    sock::set_passcred(fd, true)?;
                }
                sock::set_filter_and_lock(fd, (&u.filter.0, u.filter.1)).map_err(|e| err("filter", *file, e))?;
                if u.shutdown & 2 != 0 {
                    sock::shutdown(fd, libc::SHUT_WR).map_err(|e| err("shutdown", *file, e))?;
                }
                if u.shutdown & 1 != 0 && u.state != LISTEN {
                    sock::shutdown(fd, libc::SHUT_RD).map_err(|e| err("shutdown", *file, e))?;
                }
                let flags = m.files[*file as usize].flags & libc::O_NONBLOCK as u32;
                fd::set_status_flags(fd, flags as i32)?;
                staged.close(self.spare(*file));
                Ok(())
            }
            Op::Place { fds } => {
                let me = std::process::id() as i32;
                for &(at, file, creator, cloexec) in fds {
                    if creator == me {
                        fd::dup_to(staged.get(self.staging(file))?, at, cloexec)?;
                    } else {
                        // The pidfd is closed before the copy is placed: it
                        // took the lowest free number, which may be `at`
                        // itself (dropped after, it closed the very fd just
                        // placed there).
                        let got = {
                            let pfd = cryopod_sys::pidfd::pidfd_open(creator)?;
                            cryopod_sys::pidfd::pidfd_getfd(&pfd, creator, self.staging(file))?
                        };
                        fd::place(got, at, cloexec)?;
                    }
                }
                Ok(())
            }
            Op::Close { files } => {
                for &f in files {
                    staged.close(self.staging(f));
                }
                Ok(())
            }
            Op::Uncarry { fds } => {
                for &at in fds {
                    fd::close_at(at);
                }
                Ok(())
            }
            Op::ProcFile { file } => {
                let f = &m.files[*file as usize];
                let fd = match &f.kind {
                    FileKind::ProcOf { pid, rest } => crate::procfs::open_of(*pid, rest, f.flags, f.pos)?,
                    FileKind::OwnNs { ns } => crate::procfs::open_own_ns(ns)?,
                    _ => return Err(EngineError::Other(format!("file {file} is not a /proc file"))),
                };
                staged.park(fd, self.staging(*file))
            }
            Op::Pidfd { fd: at, target, nonblock, cloexec } => {
                let flags = if *nonblock { libc::O_NONBLOCK } else { 0 };
                let got = match *target {
                    -1 => cryopod_sys::pidfd::ended_pidfd(flags)?,
                    t => cryopod_sys::pidfd::pidfd_open_flags(t, flags)?,
                };
                Ok(fd::place(got, *at, *cloexec)?)
            }
        }
    }
}
