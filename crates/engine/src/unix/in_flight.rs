//! Files in flight: those a queued unix message carries (SCM_RIGHTS), as
//! a server's accepted connection sent to a worker, or a log file handed
//! to a daemon. The peek that copies a message installs its files here.
//! Each is a description some process of the tree holds (kcmp finds it),
//! or one that only messages hold: that one is described like any open
//! file and given to the receiving socket's holder at a spare number, its
//! carrier, so that the restore makes it as it makes every file, the
//! message's sender takes it from there, and the number is closed once
//! the queues are refilled.

use crate::files::{FileTable, KEEP_FLAGS};
use crate::{EngineError, Result};
use cryopod_image::{Fd, FileKind, OpenFile, Process};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The files message `msg` of socket `ino` carries, as the peek gave them.
pub struct InFlight {
    pub ino: u32,
    pub msg: usize,
    pub fds: Vec<OwnedFd>,
    /// The process of the tree the receiving socket was found in: files
    /// only in flight are seen from there, and carried by it.
    pub holder: i32,
}

/// Files in flight that sockets in flight carry in turn, at most this deep.
const NESTING_MAX: usize = 8;

impl FileTable {
    /// Link every file in flight to the image's files (adding those that
    /// only messages hold) and note each socket's messages' files. Returns
    /// the files no process holds, each with the process to carry it.
    pub fn link_in_flight(&mut self, mem: &mut crate::mm::MemCollector) -> Result<Vec<(i32, u32)>> {
        let me = std::process::id() as i32;
        let mut carried = Vec::new();
        for _ in 0..NESTING_MAX {
            let batch = std::mem::take(&mut self.unix.in_flight);
            if batch.is_empty() {
                return Ok(carried);
            }
            for inf in batch {
                let mut files = Vec::with_capacity(inf.fds.len());
                for fd in inf.fds {
                    let (file, new) = self.in_flight_file(me, &fd, inf.holder, mem)?;
                    if new {
                        carried.push((inf.holder, file));
                    }
                    files.push(file);
                    self.unix.kept.push(fd);
                }
                let sock = self.files.iter_mut().find_map(|f| match &mut f.kind {
                    FileKind::Unix(u) if u.ino == inf.ino => Some(u),
                    _ => None,
                });
                let Some(u) = sock else {
                    return Err(EngineError::Other(format!("socket:[{}] carrying files is not in the image", inf.ino)));
                };
                u.queued_fds.resize(u.queued.len(), Vec::new());
                if let Some(slot) = u.queued_fds.get_mut(inf.msg) {
                    *slot = files;
                }
            }
        }
        Err(EngineError::Unsupported {
            pid: 0,
            what: format!("sockets in flight carry sockets in flight more than {NESTING_MAX} deep"),
        })
    }

    /// The image's file for our copy `fd` of a file in flight, and whether
    /// it is new (held by no process).
    fn in_flight_file(
        &mut self,
        me: i32,
        fd: &OwnedFd,
        holder: i32,
        mem: &mut crate::mm::MemCollector,
    ) -> Result<(u32, bool)> {
        let raw = fd.as_raw_fd();
        let link = format!("/proc/self/fd/{raw}");
        let md = std::fs::metadata(&link).map_err(|e| EngineError::Proc { path: link.clone(), msg: e.to_string() })?;
        if let Some(idx) = self.seen_before(me, raw, &md)? {
            return Ok((idx, false));
        }
        let target = crate::procfs::readlink(&link)?;
        let (pos, flags, locks) = crate::procfs::fdinfo(me, raw)?;
        if !locks.is_empty() {
            return Err(EngineError::Unsupported {
                pid: holder,
                what: format!("a queued message carries {target} with a lock on it, held by no process"),
            });
        }
        let kind = self.kind_of((me, raw), holder, &target, &md, flags, mem).map_err(|e| match e {
            EngineError::Unsupported { what, .. } => {
                EngineError::Unsupported { pid: holder, what: format!("a file a queued message carries: {what}") }
            }
            e => e,
        })?;
        let idx = self.files.len() as u32;
        self.files.push(OpenFile { flags: flags & KEEP_FLAGS, pos, kind });
        self.seen.push((me, raw, idx, md.dev(), md.ino()));
        Ok((idx, true))
    }
}

/// Give each file only messages hold to its carrier, at a number above
/// every one it uses.
pub fn add_carriers(procs: &mut [Process], carried: &[(i32, u32)]) -> Result<()> {
    for &(pid, file) in carried {
        let p = procs
            .iter_mut()
            .find(|p| p.pid == pid && p.zombie_status.is_none())
            .ok_or_else(|| EngineError::Other(format!("no process {pid} to carry a file in flight")))?;
        let fd = p.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
        p.fds.push(Fd { fd, file, cloexec: true });
        p.carried.push(fd);
    }
    Ok(())
}
