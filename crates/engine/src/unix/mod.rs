//! Unix domain sockets. Checkpoint: sock_diag (read from a thread inside
//! the tree's network namespace) gives each socket's type, state, name,
//! peer and a listener's pending connections; a copy of the fd taken with
//! pidfd_getfd gives peer credentials and the queued messages (peeked, not
//! consumed). Every connection must stay inside the checkpoint. Restore
//! (see [`plan`]): the stubs themselves listen, connect, accept and create
//! pairs, in an order the restorer drives, so that names, backlogs, queues
//! and the PIDs in peer credentials come back as they were.

pub(crate) mod diag;
pub mod in_flight;
pub mod plan;

use crate::{EngineError, Result};
use cryopod_image::{FileKind, OpenFile, UnixSock};
use cryopod_sys::{pidfd, TargetFd};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;

/// TCP_LISTEN and TCP_ESTABLISHED, as unix sockets use them.
pub const LISTEN: u8 = 10;
pub const CONNECTED: u8 = 1;

/// sock_diag tables, one per network namespace (by its inode).
#[derive(Default)]
pub struct UnixTable {
    tables: HashMap<u64, HashMap<u32, diag::Diag>>,
    /// Bytes each socket sent that its peer has not read yet.
    outq: HashMap<u32, u32>,
    /// Our copies of TCP connections (see `inet`).
    pub repaired: crate::inet::Repaired,
    /// UDP sockets' shutdown bits (see `inet`).
    pub udp: crate::inet::UdpShutdowns,
    /// Told about every socket option we change, should we die meanwhile.
    pub guard: Option<crate::guard::Guard>,
    /// Files queued messages carry, not yet linked to the image's files.
    pub in_flight: Vec<in_flight::InFlight>,
    /// Our copies of the files in flight, open until the checkpoint ends
    /// (kcmp compares the next ones with them).
    pub kept: Vec<std::os::fd::OwnedFd>,
    /// `--external-unix`: a connection to a peer outside the checkpoint is
    /// recorded by the peer's name, to connect to again at restore.
    pub external_ok: bool,
}

pub fn netns_of(pid: i32) -> Result<u64> {
    let p = format!("/proc/{pid}/ns/net");
    std::fs::metadata(&p).map(|m| m.ino()).map_err(|e| EngineError::Proc { path: p, msg: e.to_string() })
}

/// Before any process exists: each peer outside the checkpoint that a
/// socket connects to again by path (`--external-unix`) is a socket there
/// (`root`: where the image's paths are found). An abstract name can only
/// be tried by connecting, which the restore does.
pub fn check_external_peers(m: &cryopod_image::Manifest, root: &str) -> Result<()> {
    for f in &m.files {
        let FileKind::Unix(u) = &f.kind else { continue };
        if u.external.first() != Some(&b'/') {
            continue;
        }
        let path = crate::files::under(root, &String::from_utf8_lossy(&u.external));
        if !std::fs::metadata(&path).is_ok_and(|md| md.file_type().is_socket()) {
            return Err(EngineError::Other(format!(
                "socket:[{}] was connected to {} outside the checkpoint, and there is no socket there now",
                u.ino,
                plan::show_name(&u.external)
            )));
        }
    }
    Ok(())
}

impl UnixTable {
    fn lookup(&mut self, pid: i32, ino: u32) -> Result<Option<diag::Diag>> {
        let ns = netns_of(pid)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.tables.entry(ns) {
            slot.insert(crate::nsjoin::run_in(pid, libc::CLONE_NEWNET, diag::dump)?);
        }
        Ok(self.tables.get(&ns).and_then(|t| t.get(&ino)).cloned())
    }

    /// Describe the socket behind fd `fd` of `pid` (inode `ino`), seen
    /// from process `ctx` of the tree (its network namespace and working
    /// directory; `pid` itself, but for a file in flight, which we hold).
    pub fn collect(&mut self, (pid, fd): (i32, i32), ctx: i32, ino: u64) -> Result<FileKind> {
        let unsupported =
            |what: String| EngineError::Unsupported { pid: ctx, what: format!("fd {fd} (socket:[{ino}]) {what}") };
        let ino32 = u32::try_from(ino).map_err(|_| unsupported("has an inode beyond 32 bits".into()))?;
        let Some(d) = self.lookup(ctx, ino32)? else {
            let seen = (&mut self.repaired, &mut self.udp);
            return crate::inet::collect(pid, fd, seen, self.guard.as_ref()).map_err(|e| match e {
                EngineError::Other(why) => EngineError::Other(format!("fd {fd} (socket:[{ino}]) {why}")),
                e => e,
            });
        };
        let pfd = pidfd::pidfd_open(pid)?;
        let copy = pidfd::pidfd_getfd(&pfd, pid, TargetFd(fd))?;
        let peeked = if d.state != LISTEN && d.rqlen.0 > 0 {
            // Peeking moves the socket's peek offset; should we die meanwhile,
            // the guardian puts it back.
            if let Some(g) = &self.guard {
                let old = cryopod_sys::sock::peek_offset(&copy)?;
                let (sol, opt) = (libc::SOL_SOCKET, libc::SO_PEEK_OFF);
                g.sockopt_on_abort(crate::guard::Outcome::Resume, copy.as_fd(), sol, opt, old)?;
            }
            cryopod_sys::unix_queue::peek_queue(&copy, d.rqlen.0 as usize)
                .map_err(|e| unsupported(format!("has unread data that cannot be saved: {}", e.op)))?
        } else {
            Vec::new()
        };
        let passcred = cryopod_sys::sock::passcred(&copy).unwrap_or(false);
        let queued_creds = match passcred {
            true => peeked.iter().map(|m| m.creds).collect::<Option<Vec<_>>>().unwrap_or_default(),
            false => Vec::new(),
        };
        let (mut queued, mut queued_from) = (Vec::new(), Vec::new());
        for (msg, m) in peeked.into_iter().enumerate() {
            if !m.fds.is_empty() {
                self.in_flight.push(in_flight::InFlight { ino: ino32, msg, fds: m.fds, holder: ctx });
            }
            queued.push(m.data);
            if d.kind == libc::SOCK_DGRAM {
                queued_from.push(m.from);
            }
        }
        if d.state != LISTEN {
            self.outq.insert(ino32, d.rqlen.1);
        }
        // A name relative to the binder's working directory: bound there,
        // as far as can be told (its file is a socket there now).
        // The socket file a bound listener or datagram socket made (an
        // accepted socket carries its listener's name, not a file).
        let binder = d.state == LISTEN || d.kind == libc::SOCK_DGRAM;
        let path = d.name.first().filter(|&&b| b != 0 && binder).map(|_| String::from_utf8_lossy(&d.name));
        let relative = path.as_ref().is_some_and(|n| !n.starts_with('/'));
        let sock_file = path.and_then(|n| {
            let at = if relative { format!("/proc/{ctx}/cwd/{n}") } else { format!("/proc/{ctx}/root{n}") };
            std::fs::symlink_metadata(at).ok().filter(|m| m.file_type().is_socket())
        });
        let rel_dir = if relative {
            let cwd = crate::procfs::readlink(&format!("/proc/{ctx}/cwd"))?;
            if sock_file.is_none() || cwd.ends_with(crate::gone::DELETED) {
                return Err(unsupported(format!(
                    "is bound to the relative name {:?}, which is not a socket in the process's working directory (where it was bound cannot be told)",
                    String::from_utf8_lossy(&d.name)
                )));
            }
            cwd
        } else {
            String::new()
        };
        let file = sock_file.map(|m| (m.mode() & 0o7777, m.uid(), m.gid()));
        Ok(FileKind::Unix(UnixSock {
            file,
            rel_dir,
            external: Vec::new(),
            filter: cryopod_sys::sock::filter_and_lock(&copy)?,
            ino: ino32,
            kind: d.kind,
            state: d.state,
            name: d.name,
            peer: d.peer,
            backlog: if d.state == LISTEN { d.rqlen.1 } else { 0 },
            pending: d.pending,
            queued,
            queued_from,
            // Linked to the image's files once all are seen (`in_flight`).
            queued_fds: Vec::new(),
            queued_creds,
            shutdown: d.shutdown,
            peer_cred: cryopod_sys::sock::peer_cred(&copy).unwrap_or((0, 0, 0)),
            passcred,
        }))
    }

    /// With `--external-unix`: each socket connected to a peer outside the
    /// checkpoint is given that peer's name (looked for in the tree's
    /// network namespaces, then in ours, where a pod's host daemons are),
    /// if it has one to connect to again and nothing queued from it.
    pub fn link_external(&mut self, files: &mut [OpenFile]) -> Result<()> {
        if !self.external_ok {
            return Ok(());
        }
        let inside: std::collections::HashSet<u32> = files
            .iter()
            .filter_map(|f| match &f.kind {
                FileKind::Unix(u) => Some(u.ino),
                _ => None,
            })
            .collect();
        let pending: std::collections::HashSet<u32> = files
            .iter()
            .filter_map(|f| match &f.kind {
                FileKind::Unix(u) => Some(u.pending.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        for f in files.iter_mut() {
            let FileKind::Unix(u) = &mut f.kind else { continue };
            let orphan = u.kind != libc::SOCK_DGRAM && u.shutdown == 3;
            if u.state != CONNECTED || inside.contains(&u.peer) || pending.contains(&u.ino) || orphan {
                continue;
            }
            let refuse = |why: String| EngineError::Unsupported {
                pid: 0,
                what: format!("socket:[{}] is connected to socket:[{}] outside the checkpoint, {why}", u.ino, u.peer),
            };
            let name = self.outside_name(u.peer)?.ok_or_else(|| refuse("which cannot be found".into()))?;
            if name.first().is_none_or(|&b| b != 0 && b != b'/') {
                return Err(refuse(format!(
                    "whose name {:?} is not one to connect to again (none, or relative)",
                    plan::show_name(&name)
                )));
            }
            if !u.queued.is_empty() {
                return Err(refuse(format!(
                    "{}, and holds {} messages from it that only it could send again",
                    plan::show_name(&name),
                    u.queued.len()
                )));
            }
            u.external = name;
        }
        Ok(())
    }

    /// The name of socket `ino`, outside the checkpoint.
    fn outside_name(&mut self, ino: u32) -> Result<Option<Vec<u8>>> {
        if let Some(d) = self.tables.values().find_map(|t| t.get(&ino)) {
            return Ok(Some(d.name.clone()));
        }
        let ours = netns_of(std::process::id() as i32)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.tables.entry(ours) {
            slot.insert(diag::dump()?);
        }
        Ok(self.tables.get(&ours).and_then(|t| t.get(&ino)).map(|d| d.name.clone()))
    }

    /// Every connection must be restorable from what the checkpoint holds:
    /// peers and pending clients inside it, no data waiting in a connection
    /// not yet accepted (it sits where no fd reaches), and each queued
    /// message's sender, when the receiver sees credentials, a process of
    /// the tree (`live`) that can send it again.
    pub fn check_links(&self, files: &[OpenFile], live: &std::collections::HashSet<i32>) -> Result<()> {
        let socks: HashMap<u32, &UnixSock> = files
            .iter()
            .filter_map(|f| match &f.kind {
                FileKind::Unix(u) => Some((u.ino, u)),
                _ => None,
            })
            .collect();
        let bad = |what: String| EngineError::Unsupported { pid: 0, what };
        for u in socks.values() {
            let show = plan::show_name(&u.name);
            if u.state == LISTEN {
                for c in &u.pending {
                    if !socks.contains_key(c) {
                        return Err(bad(format!(
                            "listener {show} has a pending connection from socket:[{c}] outside the checkpoint"
                        )));
                    }
                    if self.outq.get(c).copied().unwrap_or(0) > 0 {
                        return Err(bad(format!(
                            "listener {show} has a pending connection (socket:[{c}]) with data sent before accept; \
                             let the server accept it first"
                        )));
                    }
                }
                continue;
            }
            let pending = socks.values().any(|l| l.pending.contains(&u.ino));
            if u.state == CONNECTED && !socks.contains_key(&u.peer) && !pending && u.external.is_empty() {
                // (A datagram socket's dead peer is named 0.)
                let orphan =
                    (u.kind != libc::SOCK_DGRAM && u.shutdown == 3) || (u.kind == libc::SOCK_DGRAM && u.peer == 0);
                // Made again as a pair's end whose spare end, bound to the
                // dead peer's name, sends its messages: one sender, with no
                // name or an abstract one (a path would leave a file).
                if orphan && u.kind == libc::SOCK_DGRAM {
                    let first = u.queued_from.first().cloned().unwrap_or_default();
                    let several = u.queued_from.iter().any(|n| *n != first);
                    if several || first.first().is_some_and(|&b| b != 0) {
                        let from = if several { "several senders".to_string() } else { plan::show_name(&first) };
                        return Err(bad(format!(
                            "datagram socket:[{}], whose peer is gone, holds messages from {from} (only messages from its peer, named in the abstract namespace or not at all, can be sent again)",
                            u.ino
                        )));
                    }
                }
                if !orphan {
                    return Err(bad(format!(
                        "socket:[{}], connected to socket:[{}] outside the checkpoint without `--external-unix` (which connects it again by name at restore),",
                        u.ino, u.peer
                    )));
                }
            }
            if let Some(c) = u.queued_creds.iter().find(|c| !live.contains(&c.0)) {
                return Err(bad(format!(
                    "socket:[{}] receives credentials and holds a message from PID {}, which is not a process of the checkpoint \
                     (no restore could send it with that PID again)",
                    u.ino, c.0
                )));
            }
            if u.kind == libc::SOCK_DGRAM && u.state != CONNECTED && !u.queued.is_empty() && u.name.is_empty() {
                return Err(bad(format!("socket:[{}] has datagrams queued but no name to receive them again", u.ino)));
            }
        }
        Ok(())
    }
}
