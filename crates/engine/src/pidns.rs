//! PID namespaces. A pod's processes are recorded with the PIDs they see
//! themselves (their namespace's, PID 1 being the pod's first process), so
//! that they get exactly those back in a fresh namespace whatever the host
//! runs. The engine itself works with host PIDs: checkpoint translates at
//! the end, restore looks host PIDs up once the stubs exist.

use crate::{procfs, EngineError, Result};
use cryopod_image::{FileKind, Manifest};
use std::collections::HashMap;

/// The innermost PID of task `tid` of process `pid` (last NSpid field).
pub fn ns_pid(pid: i32, tid: i32) -> Result<i32> {
    let st = procfs::read(pid, &format!("task/{tid}/status"))?;
    procfs::status_field(&st, "NSpid")
        .and_then(|v| v.split_whitespace().last().and_then(|x| x.parse().ok()))
        .ok_or_else(|| EngineError::Proc { path: format!("/proc/{pid}/task/{tid}/status"), msg: "no NSpid".into() })
}

/// host PID → pod PID for every task of these processes (zombies included).
pub fn pod_pids(procs: impl Iterator<Item = (i32, Vec<i32>)>) -> Result<HashMap<i32, i32>> {
    let mut map = HashMap::new();
    for (pid, tids) in procs {
        map.insert(pid, ns_pid(pid, pid)?);
        for t in tids {
            map.insert(t, ns_pid(pid, t)?);
        }
    }
    Ok(map)
}

/// Rewrite every PID of a pod's manifest into the pod's own numbering.
pub fn to_pod(m: &mut Manifest, map: &HashMap<i32, i32>) -> Result<()> {
    let tr = |what: &str, of: i32, pid: i32| {
        map.get(&pid).copied().ok_or_else(|| EngineError::Unsupported {
            pid: of,
            what: format!("its {what} {pid} is outside the pod (a pod's processes must stay in its own sessions)"),
        })
    };
    let root = m.root_pid;
    for p in &mut m.processes {
        let host = p.pid;
        p.pid = tr("pid", host, host)?;
        p.ppid = if host == root { 0 } else { tr("parent", host, p.ppid)? };
        p.pgid = tr("process group", host, p.pgid)?;
        p.sid = tr("session", host, p.sid)?;
        for t in &mut p.threads {
            t.tid = tr("thread", host, t.tid)?;
        }
        // A foreground group with no process left is not set again.
        if let Some(c) = &mut p.ctty {
            c.foreground = map.get(&c.foreground).copied().unwrap_or(0);
        }
        for t in &mut p.posix_timers {
            if t.notify_tid != 0 {
                t.notify_tid = tr("timer's target thread", host, t.notify_tid)?;
            }
        }
    }
    for f in &mut m.files {
        match &mut f.kind {
            FileKind::Epoll { owner, entries } => {
                *owner = tr("epoll owner", *owner, *owner)?;
                for e in entries.iter_mut() {
                    if let Some((q, _)) = &mut e.file_at {
                        *q = tr("epoll entry's holder", *q, *q)?;
                    }
                }
            }
            FileKind::Pidfd { pid } if *pid != -1 => *pid = tr("pidfd's process", *pid, *pid)?,
            // A peer that is not in the pod (or gone) shows as PID 0 there.
            FileKind::Unix(u) => {
                u.peer_cred.0 = map.get(&u.peer_cred.0).copied().unwrap_or(0);
                for c in u.queued_creds.iter_mut() {
                    c.0 = tr("queued message's sender", c.0, c.0)?;
                }
            }
            _ => {}
        }
    }
    m.root_pid = tr("pid", root, root)?;
    if m.root_pid != 1 {
        return Err(EngineError::Other(format!("the pod's first process has PID {} in the pod, not 1", m.root_pid)));
    }
    Ok(())
}

/// Rewrite the uids and gids of a pod in its own user namespace (host ids
/// `base..base+count` are its `0..count`) as the pod sees them.
pub fn ids_to_pod(m: &mut Manifest, (base, count): (u32, u32)) -> Result<()> {
    let tr = |pid: i32, id: u32| {
        id.checked_sub(base).filter(|&v| v < count).ok_or_else(|| EngineError::Unsupported {
            pid,
            what: format!("id {id} is not mapped into the pod's user namespace"),
        })
    };
    for p in &mut m.processes {
        let pid = p.pid;
        if p.zombie_status.is_some() {
            continue;
        }
        for v in p.creds.uids.iter_mut().chain(p.creds.gids.iter_mut()).chain(p.creds.groups.iter_mut()) {
            *v = tr(pid, *v)?;
        }
    }
    for f in &mut m.files {
        if let FileKind::Unix(u) = &mut f.kind {
            // A peer outside the pod shows as the overflow id there.
            u.peer_cred.1 = tr(0, u.peer_cred.1).unwrap_or(65534);
            u.peer_cred.2 = tr(0, u.peer_cred.2).unwrap_or(65534);
            for c in u.queued_creds.iter_mut() {
                (c.1, c.2) = (tr(c.0, c.1)?, tr(c.0, c.2)?);
            }
        }
    }
    Ok(())
}

/// Host PIDs of restored tasks, by the PIDs recorded in the image. For a
/// plain tree both are the same.
#[derive(Default)]
pub struct HostPids {
    map: HashMap<i32, i32>,
    pod: bool,
}

impl HostPids {
    /// A plain tree: recorded PIDs are host PIDs.
    pub fn plain() -> HostPids {
        HostPids::default()
    }

    /// A pod: every task below `root` (a host PID), by its innermost PID.
    pub fn of_tree(root: i32) -> Result<HostPids> {
        let mut h = HostPids { map: HashMap::new(), pod: true };
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            h.add_threads(pid)?;
            if procfs::stat(pid)?.state != 'Z' {
                queue.extend(procfs::children(pid)?);
            }
        }
        Ok(h)
    }

    /// Learn the threads of process `pid` (a host PID), e.g. once created.
    pub fn add_threads(&mut self, pid: i32) -> Result<()> {
        if !self.pod {
            return Ok(());
        }
        for t in procfs::tids(pid)? {
            self.map.insert(ns_pid(pid, t)?, t);
        }
        Ok(())
    }

    /// The host PID of recorded PID `pid`.
    pub fn host(&self, pid: i32) -> Result<i32> {
        if !self.pod {
            return Ok(pid);
        }
        self.map.get(&pid).copied().ok_or_else(|| EngineError::Other(format!("restored task {pid} has no host PID")))
    }
}
