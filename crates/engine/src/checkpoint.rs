//! Checkpoint orchestration: freeze → collect every process → write pages
//! → write manifest → kill or resume. Any failure before the end resumes
//! and detaches every task, leaving the tree as it was, and removes what
//! was written (see [`crate::outdir`]).

use crate::files::FileTable;
use crate::freeze::{self, Frozen};
use crate::guard::{Guard, Outcome};
use crate::injection::{self, GadgetCache};
use crate::mm::MemCollector;
use crate::outdir::OutDir;
use crate::{fault, ident, pages, procfs, signals, threads, EngineError, Progress, Result};
use cryopod_image::{Manifest, PodImage, Process};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct CheckpointOptions<'a> {
    /// Root of the tree (host PID); for a pod, its first process.
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    /// Worker threads for reading, hashing and writing pages.
    pub threads: usize,
    /// Set for the checkpoint of a pod.
    pub pod: Option<PodCheckpoint<'a>>,
    /// A guardian started by the caller (a pod's, which knows its frozen
    /// cgroup); else the checkpoint starts its own.
    pub guard: Option<Guard>,
}

/// What the checkpoint of a pod adds to that of a tree.
pub struct PodCheckpoint<'a> {
    /// The pod's root directory as seen from here (`/proc/<init>/root`):
    /// the pod's paths are relative to it.
    pub root: String,
    /// Files outside the pod's root that the restorer supplies by name
    /// (dev, inode, name), like the pod's log.
    pub external: Vec<(u64, u64, String)>,
    /// Called once every task is seized while the pod's cgroup is frozen:
    /// thaws the cgroup so that the tasks stop for us.
    pub thaw: &'a (dyn Fn() -> Result<()> + Sync),
    /// Freezes the pod's cgroup again, to try again after a thread could
    /// not stop (see `freeze`).
    pub refreeze: &'a (dyn Fn() -> Result<()> + Sync),
    /// The pod's own state, stored with its processes.
    pub image: PodImage,
    /// The output directory, prepared by the pod and holding its files.
    pub out: &'a OutDir,
    /// A pod in its own user namespace: (first host id, count) its ids
    /// 0.. map to; credentials are recorded as the pod sees them.
    pub ids: Option<(u32, u32)>,
}

#[derive(Debug, Clone)]
pub struct CheckpointSummary {
    pub processes: usize,
    pub threads: usize,
    pub memory_bytes: u64,
    pub image_bytes: u64,
    pub elapsed: Duration,
    pub frozen: Duration,
}

pub fn checkpoint(o: &CheckpointOptions, progress: Progress) -> Result<CheckpointSummary> {
    crate::target::check(o.pid)?;
    let t0 = Instant::now();
    let guard = match &o.guard {
        Some(g) => g.clone(),
        None => Guard::start(Outcome::Resume)?,
    };
    // A pod's directory was prepared by the pod (it holds the pod's files);
    // dropped unfinished, the directory removes what was written into it.
    let own;
    let out = match &o.pod {
        Some(pod) => pod.out,
        None => {
            own = OutDir::prepare(&o.dir)?;
            &own
        }
    };
    let mut fr = freeze_retrying(o)?;
    let res = guard_tree(&guard, &fr).and_then(|_| collect_and_write(o, out, &fr, &guard, progress));
    let frozen = t0.elapsed();
    match res {
        Ok((m, repaired)) => {
            if o.leave_running {
                // Nothing of ours is left in the tree: the guardian goes
                // before the tree runs again.
                guard.disarm();
                fr.thaw();
            } else {
                // From here on, cut short, the tree dies anyway; and our
                // copies of its connections close without a word to peers.
                if let Err(e) = guard.set_outcome(Outcome::Kill) {
                    tracing::warn!("{e}");
                }
                repaired.silence();
                fr.kill(o.pod.is_some());
                drop(repaired);
            }
            let (mem, stored) = m.memory_bytes();
            let meta_len = out.manifest_len();
            Ok(CheckpointSummary {
                processes: m.processes.len(),
                threads: m.processes.iter().map(|p| p.threads.len()).sum(),
                memory_bytes: mem,
                image_bytes: stored + meta_len,
                elapsed: t0.elapsed(),
                frozen,
            })
        }
        Err(e) => {
            fr.thaw();
            // (What was written goes when `out` is dropped unfinished.)
            Err(EngineError::LeftRunning(Box::new(e)))
        }
    }
}

/// Freeze the tree; a thread that cannot stop now (it waits for its vfork
/// child) makes us let go and try again a little later.
fn freeze_retrying(o: &CheckpointOptions) -> Result<Frozen> {
    let mut attempt = 0;
    loop {
        let r = match &o.pod {
            Some(pod) => freeze::freeze_pod(o.pid, pod.thaw),
            None => freeze::freeze(o.pid),
        };
        match r {
            Err(EngineError::Busy(tid)) if attempt < 10 => {
                attempt += 1;
                tracing::info!(tid, attempt, "a thread did not stop (vfork?); trying again");
                std::thread::sleep(Duration::from_millis(10 * attempt));
                if let Some(pod) = &o.pod {
                    (pod.refreeze)()?;
                }
            }
            r => return r,
        }
    }
}

/// Tell the guardian every process of the tree, to be killed should we die
/// once the tree is meant to die.
fn guard_tree(guard: &Guard, fr: &Frozen) -> Result<()> {
    for &pid in fr.procs.keys() {
        if let Ok(pfd) = cryopod_sys::pidfd::pidfd_open(pid) {
            guard.kill_on_abort(pfd.as_fd())?;
        }
    }
    Ok(())
}

/// Returns the manifest written and our copies of the tree's TCP
/// connections.
fn collect_and_write(
    o: &CheckpointOptions,
    outdir: &OutDir,
    fr: &Frozen,
    guard: &Guard,
    progress: Progress,
) -> Result<(Manifest, crate::inet::Repaired)> {
    fault::check("after-freeze")?;
    let t_collect = Instant::now();
    let mut files = FileTable::default();
    files.unix.guard = Some(guard.clone());
    if let Some(pod) = &o.pod {
        files.root = pod.root.clone();
        files.external = pod.external.clone();
    }
    let mut mem = MemCollector::default();
    mem.sysv = o.pod.is_some();
    let mut procs = Vec::new();
    let mut gadgets = GadgetCache::default();
    for pid in bfs(o.pid, fr)? {
        let idx = procs.len();
        let p = if fr.zombies.contains(&pid) {
            zombie(pid)?
        } else {
            let tids = fr.procs.get(&pid).cloned().unwrap_or_default();
            let mut p = collect_process(pid, &tids, idx, &mut files, &mut mem, &mut gadgets)
                .map_err(EngineError::context(format!("checkpoint of pid {pid}")))?;
            p.stopped = fr.stopped.contains(&pid);
            p
        };
        procs.push(p);
    }
    files.unix.check_links(&files.files)?;
    for f in &files.files {
        if let cryopod_image::FileKind::Pidfd { pid } = f.kind {
            if !procs.iter().any(|p: &Process| p.pid == pid && p.zombie_status.is_none()) {
                return Err(EngineError::Unsupported {
                    pid,
                    what: "a pidfd of a process outside the checkpoint".into(),
                });
            }
        }
    }
    fault::check("after-collect")?;
    tracing::info!(ms = t_collect.elapsed().as_secs_f64() * 1e3, pieces = mem.pieces.len(), "state collected");
    let t_pages = Instant::now();
    let out = pages::dump(outdir, &mem.pieces, o.threads, progress)?;
    tracing::info!(ms = t_pages.elapsed().as_secs_f64() * 1e3, chunks = out.chunks.len(), "pages written");
    fault::check("after-pages")?;
    let mut m = Manifest {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        kernel: cryopod_sys::ns::kernel_release(),
        cpu: crate::cpu::record(),
        vdso_hash: mem.vdso_hash.unwrap_or([0; 32]),
        root_pid: o.pid,
        processes: procs,
        files: files.files,
        objects: std::mem::take(&mut mem.objects),
        packs: out.packs,
        chunks: out.chunks,
        pod: o.pod.as_ref().map(|p| p.image.clone()),
    };
    crate::mm::attach_runs(&mut m, &mem, &out.chunk_of);
    if o.pod.is_some() {
        let tasks = fr.procs.iter().map(|(p, t)| (*p, t.clone())).chain(fr.zombies.iter().map(|&z| (z, Vec::new())));
        let map = crate::pidns::pod_pids(tasks)?;
        crate::pidns::to_pod(&mut m, &map)?;
        if let Some(ids) = o.pod.as_ref().and_then(|p| p.ids) {
            crate::pidns::ids_to_pod(&mut m, ids)?;
        }
    }
    m.validate()?;
    fault::check("before-manifest")?;
    outdir.commit_manifest(&m)?;
    Ok((m, std::mem::take(&mut files.unix.repaired)))
}

/// Processes in tree order from the root (parents first).
fn bfs(root: i32, fr: &Frozen) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let mut q = std::collections::VecDeque::from([root]);
    while let Some(p) = q.pop_front() {
        if !fr.procs.contains_key(&p) && !fr.zombies.contains(&p) {
            continue;
        }
        out.push(p);
        if !fr.zombies.contains(&p) {
            q.extend(procfs::children(p)?);
        }
    }
    Ok(out)
}

fn zombie(pid: i32) -> Result<Process> {
    let st = procfs::stat(pid)?;
    let mut p = empty_process(pid, &st);
    p.zombie_status = Some(st.field(52) as i32);
    Ok(p)
}

fn empty_process(pid: i32, st: &procfs::Stat) -> Process {
    Process {
        pid,
        ppid: st.ppid,
        pgid: st.pgid,
        sid: st.sid,
        threads: Vec::new(),
        vmas: Vec::new(),
        mm: Default::default(),
        fds: Vec::new(),
        sigactions: Vec::new(),
        shared_pending: Vec::new(),
        creds: Default::default(),
        cwd: String::new(),
        root: String::new(),
        umask: 0,
        personality: 0,
        rlimits: Vec::new(),
        itimers: Vec::new(),
        posix_timers: Vec::new(),
        zombie_status: None,
        stopped: false,
        attrs: Default::default(),
    }
}

fn collect_process(
    pid: i32,
    tids: &[i32],
    idx: usize,
    files: &mut FileTable,
    mem: &mut MemCollector,
    gadgets: &mut GadgetCache,
) -> Result<Process> {
    // Seccomp: a process that could not get its filters back must not be
    // checkpointed (restoring it without them would grant privilege).
    for &tid in tids {
        crate::threads::check_seccomp_restorable(pid, tid)?;
    }
    let st = procfs::stat(pid)?;
    let mut p = empty_process(pid, &st);
    p.vmas = mem.collect(pid, idx, files)?;
    p.fds = files.collect_fds(pid, mem)?;
    ident::collect_process_env(pid, &mut p)?;
    p.shared_pending = cryopod_sys::ptrace::peek_siginfo(pid, true)?.into_iter().map(|s| s.to_vec()).collect();
    let g = gadgets.find(pid)?;
    let vpid = crate::pidns::ns_pid(pid, pid)?;
    let mut leader = injection::cover(pid, pid, vpid, &g, &p.vmas)?;
    // Signals dequeued by ptrace while we injected (only SIGSTOP can be,
    // in a covered thread), put back before the task goes on: (tid, siginfo).
    let mut deferred: Vec<(i32, [u8; 128])> = Vec::new();
    let leader_mask = leader.mask();
    let res = (|| -> Result<()> {
        let r = &mut leader.remote;
        fault::check("during-injection")?;
        p.sigactions = signals::collect_actions(r)?;
        p.itimers = signals::collect_itimers(r)?;
        p.posix_timers = signals::collect_timers(r)?;
        p.creds = ident::collect_creds(r)?;
        p.rlimits = ident::collect_rlimits(r)?;
        p.mm = ident::collect_mm(r)?;
        p.attrs = ident::collect_attrs(r)?;
        for &tid in tids {
            if tid == pid {
                p.threads.push(threads::collect(r, leader_mask)?);
                continue;
            }
            let mut c = injection::cover(pid, tid, vpid, &g, &p.vmas)?;
            let mask = c.mask();
            let t = threads::collect(&mut c.remote, mask);
            deferred.extend(c.remote.inj.deferred.drain(..).map(|i| (tid, i)));
            c.uncover()?;
            p.threads.push(t?);
        }
        Ok(())
    })();
    deferred.extend(leader.remote.inj.deferred.drain(..).map(|i| (pid, i)));
    if !deferred.is_empty() {
        tracing::info!(pid, signals = deferred.len(), "signals arrived during the checkpoint; queued again");
    }
    // Queued again while the leader still blocks them (an uncovered one
    // blocks them for this): they stay pending until the task goes on.
    let mut requeue = Ok(());
    let own_mask = cryopod_sys::ptrace::get_sigmask(pid);
    let blocked = !g.covered && own_mask.is_ok() && cryopod_sys::ptrace::set_sigmask(pid, !0).is_ok();
    for (tid, info) in &deferred {
        // The task names its threads in its own PID namespace.
        let vtid = crate::pidns::ns_pid(pid, *tid).unwrap_or(*tid);
        requeue = requeue.and(signals::queue(&mut leader.remote, Some(vtid), info));
    }
    if let (true, Ok(m)) = (blocked, own_mask) {
        cryopod_sys::ptrace::set_sigmask(pid, m)?;
    }
    leader.uncover()?;
    res?;
    requeue.map_err(|e| EngineError::Other(format!("pid {pid}: a signal that arrived during the checkpoint: {e}")))?;
    Ok(p)
}
