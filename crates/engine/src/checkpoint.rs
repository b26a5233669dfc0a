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
use cryopod_image::{Manifest, PodImage, Process, PAGE};
use cryopod_sys::uffd::Uffd;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct CheckpointOptions<'a> {
    /// Root of the tree (host PID); for a pod, its first process.
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    /// With `leave_running`: stop the tree only while its state is taken
    /// and its memory write-protected, and read the memory while it runs
    /// (see [`crate::cow`]); false reads everything frozen.
    pub cow: bool,
    /// Worker threads for reading, hashing and writing pages.
    pub threads: usize,
    /// How new chunks are compressed.
    pub compress: cryopod_image::Compression,
    /// The key the image is sealed under (`--key`), if any: chunks,
    /// manifest and a pod's files (see `cryopod_image::seal`).
    pub key: Option<&'a cryopod_image::ImageKey>,
    /// Leave out the pages of areas marked MADV_DONTDUMP: they come back
    /// zero-filled (the program said they need not be saved; not that they
    /// are dead, hence off by default).
    pub exclude_dontdump: bool,
    /// Record connections of unix sockets to peers outside the tree by
    /// the peer's name, connected to again at restore (`--external-unix`);
    /// refused otherwise.
    pub external_unix: bool,
    /// Set for the checkpoint of a pod.
    pub pod: Option<PodCheckpoint<'a>>,
    /// A guardian started by the caller (a pod's, which knows its frozen
    /// cgroup); else the checkpoint starts its own.
    pub guard: Option<Guard>,
    /// The tree armed by the caller before it froze it (a pod's: see
    /// [`crate::arm`]); a plain tree's checkpoint arms it itself.
    pub armed: Option<&'a crate::arm::Armed>,
    /// What the image builds on (`--parent`, `--store`): opened before the
    /// freeze, its chunks are referenced rather than written again.
    pub base: Option<&'a cryopod_image::chain::Base>,
    /// Dirty tracking of the tree since the parent's freeze (`--track`): a
    /// round at the freeze says which pages to read (see
    /// [`crate::incremental`]); the tree is then read frozen (tracking and
    /// a running checkpoint's write-protection cannot share an area).
    pub tracker: Option<&'a std::sync::Mutex<crate::track::Tracker>>,
    /// A live migration's pre-copy round (needs `tracker` and
    /// `leave_running`): the tree runs again as soon as its state is
    /// taken, and its pages are read while it runs. Such an image is not a
    /// consistent copy by itself: every page written during the read is
    /// among those the tracker reports to the next round, whose tracked
    /// child image (read frozen, at the end) is consistent. Never restored
    /// alone.
    pub precopy: bool,
    /// A lazy migration's last image: the private anonymous pages it would
    /// read are not read; they are left out of the image (no run at all,
    /// not even zeros) and listed in the summary's `left`, to be fetched
    /// from the tree, held frozen, once it runs elsewhere (see
    /// [`crate::lazy`]). Such an image is only ever restored lazily, with
    /// that list.
    pub leave_private: bool,
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
    /// When the pod's cgroup was frozen (the summary's frozen time).
    pub frozen_since: Instant,
    /// Where the areas' flags are read, prepared before the pod froze.
    pub flags: crate::vmflags::Source,
    /// Keep the pod frozen after a checkpoint that leaves it alive (a
    /// migration's source): the cgroup is frozen again before the tasks
    /// are let go (they stay in the freezer, not running).
    pub hold: bool,
}

#[derive(Debug, Clone)]
pub struct CheckpointSummary {
    pub processes: usize,
    pub threads: usize,
    pub memory_bytes: u64,
    pub image_bytes: u64,
    pub elapsed: Duration,
    /// How long the tree was stopped (with `leave_running`: until it ran
    /// again; otherwise until it was killed), the stop to arm it included.
    pub frozen: Duration,
    /// The stop to arm the tree before its freeze (see [`crate::arm`]).
    pub arm_stop: Option<Duration>,
    /// Memory read while the tree ran: what that took.
    pub cow: Option<crate::cow::CowStats>,
    /// Why reading while running was given up for a frozen checkpoint.
    pub fallback: Option<String>,
    /// Chunks stored, and found in the base.
    pub chunks: pages::ChunkStats,
    /// Which path the checkpoint took with its base (None: a full image).
    pub base: Option<String>,
    /// With `leave_private`: the pages left out of the image.
    pub left: Vec<crate::lazy::LeftRun>,
}

pub fn checkpoint(o: &CheckpointOptions, progress: Progress) -> Result<CheckpointSummary> {
    crate::target::check(o.pid)?;
    if o.precopy && (o.tracker.is_none() || !o.leave_running) {
        return Err(EngineError::Other("a pre-copy round needs dirty tracking and a tree left running".into()));
    }
    // Pages left out must still be there to fetch: only from a held pod.
    if o.leave_private && !o.pod.as_ref().is_some_and(|p| p.hold) {
        return Err(EngineError::Other("pages are left out of an image only for a pod held frozen".into()));
    }
    let t0 = Instant::now();
    // A pod is frozen already: its command prepared this before.
    let flags = match &o.pod {
        Some(pod) => pod.flags.clone(),
        None => crate::vmflags::prepare(o.pid),
    };
    let cow = o.leave_running && o.cow && o.tracker.is_none();
    // The guardian is forked before arming starts its thread (a fork needs
    // the caller single-threaded).
    let (own, guard) = match (cow, &o.pod, o.armed, &o.guard) {
        (true, None, None, None) => {
            let guard = Guard::start(Outcome::Resume)?;
            let armed = crate::arm::arm(o.pid).unwrap_or_else(|e| {
                tracing::info!("not armed before the freeze ({e}): its memory is protected while frozen");
                None
            });
            (armed, Some(guard))
        }
        _ => (None, o.guard.clone()),
    };
    let armed = o.armed.or(own.as_ref());
    match checkpoint_once(o, cow, armed, guard, &flags, progress) {
        // A pod starts again itself (its own state goes with the retry).
        Err(EngineError::LeftRunning(e)) if matches!(*e, EngineError::CowInexact(_)) && o.pod.is_none() => {
            let why = e.to_string();
            tracing::warn!("{why}; checkpointing again with the tree frozen throughout");
            drop(own);
            let mut s = checkpoint_once(o, false, None, o.guard.clone(), &flags, progress)?;
            s.elapsed = t0.elapsed();
            s.fallback = Some(why);
            Ok(s)
        }
        r => r,
    }
}

fn checkpoint_once(
    o: &CheckpointOptions,
    cow: bool,
    armed: Option<&crate::arm::Armed>,
    guard: Option<Guard>,
    flags: &crate::vmflags::Source,
    progress: Progress,
) -> Result<CheckpointSummary> {
    let t0 = Instant::now();
    let guard = match guard {
        Some(g) => g,
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
    let t_freeze = o.pod.as_ref().map(|p| p.frozen_since).unwrap_or_else(Instant::now);
    let mut fr = freeze_retrying(o)?;
    if let Some(a) = armed {
        a.frozen();
        tracing::debug!(ms = t_freeze.elapsed().as_secs_f64() * 1e3, "frozen; the arming handler told");
    }
    let mut ran_at = None;
    let hold = o.pod.as_ref().filter(|p| p.hold).map(|p| p.refreeze);
    let res = guard_tree(&guard, &fr).and_then(|_| {
        let mut run = Resume { guard: &guard, fr: &mut fr, at: &mut ran_at, flags: None, hold };
        collect_and_write(o, cow, armed, out, &mut run, (&guard, flags), progress)
    });
    match res {
        Ok((m, repaired, (cow_stats, chunks, left))) => {
            if o.leave_running {
                // Nothing of ours is left in the tree: the guardian goes
                // before the tree runs again.
                drop(repaired);
                Resume { guard: &guard, fr: &mut fr, at: &mut ran_at, flags: None, hold }.now();
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
            // (Pages left out are the tree's memory too.)
            let (mem, _) = m.memory_bytes();
            let mem = mem + left.iter().map(|r| u64::from(r.pages) * PAGE).sum::<u64>();
            let meta_len = out.manifest_len();
            Ok(CheckpointSummary {
                processes: m.processes.len(),
                threads: m.processes.iter().map(|p| p.threads.len()).sum(),
                memory_bytes: mem,
                image_bytes: chunks.stored_bytes + meta_len,
                elapsed: t0.elapsed(),
                frozen: ran_at.unwrap_or_else(Instant::now).saturating_duration_since(t_freeze)
                    + armed.map_or(Duration::ZERO, |a| a.stopped),
                arm_stop: armed.map(|a| a.stopped),
                cow: cow_stats,
                fallback: None,
                chunks,
                base: o.base.map(|b| {
                    let how = match chunks.tracked {
                        Some((read, taken)) => format!(
                            "tracked: {} MiB written since read, {} MiB taken from the parent",
                            read >> 20,
                            taken >> 20
                        ),
                        None => "every page read".to_string(),
                    };
                    format!(
                        "{}: {how}, {} chunks new, {} found there",
                        b.describe(),
                        chunks.new_chunks,
                        chunks.reused_chunks
                    )
                }),
                left,
            })
        }
        Err(e) => {
            if let Some(a) = armed {
                a.finish();
            }
            fr.thaw();
            // (What was written goes when `out` is dropped unfinished.)
            Err(EngineError::LeftRunning(Box::new(e)))
        }
    }
}

/// Letting a left-running tree go (once): the guardian is disarmed first,
/// then every task resumes; `at` notes when.
struct Resume<'a> {
    guard: &'a Guard,
    fr: &'a mut Frozen,
    at: &'a mut Option<Instant>,
    /// The tree's area flags being read: done before it runs.
    flags: Option<crate::vmflags::Reader>,
    /// A held pod: its `refreeze`, which freezes it again before its tasks
    /// are let go.
    hold: Option<&'a (dyn Fn() -> Result<()> + Sync)>,
}

impl Resume<'_> {
    fn now(&mut self) {
        if self.at.is_none() {
            if let Some(f) = &mut self.flags {
                f.wait();
            }
            if let Some(Err(e)) = self.hold.map(|refreeze| refreeze()) {
                tracing::warn!("the pod could not be kept frozen: {e}");
            }
            self.guard.disarm();
            self.fr.thaw();
            *self.at = Some(Instant::now());
        }
    }
}

/// Freeze the tree; a thread that cannot stop now (it waits for its vfork
/// child), or a listener of the tree with connections waiting to be
/// accepted, makes us let go and try again a little later (the program
/// accepts them meanwhile; a pod's network lock keeps new ones out).
fn freeze_retrying(o: &CheckpointOptions) -> Result<Frozen> {
    const ATTEMPTS: u64 = 10;
    let mut attempt = 0;
    loop {
        let r = match &o.pod {
            Some(pod) => freeze::freeze_pod(o.pid, pod.thaw),
            None => freeze::freeze(o.pid),
        };
        let r = match r {
            Ok(mut fr) if attempt < ATTEMPTS => {
                match timed("accept queues looked at", || crate::inet::listener_waiting(o.pid, &fr)) {
                    Ok(Some((pid, n))) => {
                        tracing::info!(pid, n, "a listener has connections waiting to be accepted");
                        fr.thaw();
                        Err(EngineError::Busy(pid))
                    }
                    Ok(None) => Ok(fr),
                    Err(e) => {
                        fr.thaw();
                        Err(e)
                    }
                }
            }
            r => r,
        };
        match r {
            Err(EngineError::Busy(tid)) if attempt < ATTEMPTS => {
                attempt += 1;
                tracing::info!(
                    tid,
                    attempt,
                    "a thread did not stop (vfork?) or a listener has connections waiting; trying again"
                );
                std::thread::sleep(Duration::from_millis(10 * attempt));
                if let Some(pod) = &o.pod {
                    (pod.refreeze)()?;
                }
            }
            r => return r,
        }
    }
}

/// `f`, its time logged (debug) as `what`.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "{what}");
    r
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

/// What a checkpoint wrote: its manifest, its repaired connections, and
/// what its pages did (read while running; chunks; left out).
type Written =
    (Manifest, crate::inet::Repaired, (Option<crate::cow::CowStats>, pages::ChunkStats, Vec<crate::lazy::LeftRun>));

/// Returns the manifest written and our copies of the tree's TCP
/// connections.
fn collect_and_write(
    o: &CheckpointOptions,
    cow: bool,
    armed: Option<&crate::arm::Armed>,
    outdir: &OutDir,
    run: &mut Resume,
    (guard, flags): (&Guard, &crate::vmflags::Source),
    progress: Progress,
) -> Result<Written> {
    let fr: &Frozen = run.fr;
    fault::check("after-freeze")?;
    // What was written since the parent's freeze, as of this freeze: only
    // if tracking ran since that very freeze (else the round only starts
    // counting from this one).
    let round = match o.tracker {
        Some(t) => {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            let since_parent = o.base.and_then(|b| b.parent.as_ref()).map(|l| l.manifest_hash);
            let continuous = since_parent.is_some() && t.since() == since_parent;
            let r = t.round_frozen()?;
            tracing::debug!(ms = r.took.as_secs_f64() * 1e3, "tracking round at the freeze");
            continuous.then_some(r)
        }
        None => None,
    };
    let t_collect = Instant::now();
    let mut files = FileTable::default();
    files.unix.guard = Some(guard.clone());
    files.unix.external_ok = o.external_unix;
    if let Some(pod) = &o.pod {
        files.root = pod.root.clone();
        files.external = pod.external.clone();
    }
    let mut mem = MemCollector::default();
    mem.sysv = o.pod.is_some();
    let mut procs = Vec::new();
    let mut gadgets = GadgetCache::default();
    let mut uffds = Vec::new();
    let order = bfs(o.pid, fr)?;
    let shared_vm = if cow { sharing_vm(&order) } else { Default::default() };
    // Every process's areas and pages first, then their flags on another
    // core beside the rest, waited for before the tree runs again (where
    // they come from smaps, its walk of every page table entry beside the
    // pages scan's slowed both).
    let live: Vec<i32> = order.iter().copied().filter(|p| !fr.zombies.contains(p)).collect();
    let mut found = std::collections::HashMap::new();
    for (idx, &pid) in order.iter().enumerate().filter(|(_, p)| !fr.zombies.contains(p)) {
        let t = Instant::now();
        let vmas =
            mem.collect(pid, idx, &mut files).map_err(EngineError::context(format!("checkpoint of pid {pid}")))?;
        tracing::debug!(pid, ms = t.elapsed().as_secs_f64() * 1e3, areas = vmas.len(), "areas and pages found");
        found.insert(pid, vmas);
    }
    run.flags = Some(crate::vmflags::Reader::start(live, flags.clone())?);
    for &pid in &order {
        let idx = procs.len();
        let p = if fr.zombies.contains(&pid) {
            zombie(pid)?
        } else {
            let tids = fr.procs.get(&pid).cloned().unwrap_or_default();
            let want = (cow && !shared_vm.contains(&pid)).then_some((&mut uffds, armed));
            let vmas = found.remove(&pid).unwrap_or_default();
            let mut p = collect_process(pid, &tids, (idx, vmas), &mut files, &mut mem, &mut gadgets, want)
                .map_err(EngineError::context(format!("checkpoint of pid {pid}")))?;
            p.stopped = fr.stopped.contains(&pid);
            p
        };
        procs.push(p);
    }
    let carried = files.link_in_flight(&mut mem)?;
    files.unix.link_external(&mut files.files)?;
    let live_pids: std::collections::HashSet<i32> =
        procs.iter().filter(|p| p.zombie_status.is_none()).map(|p| p.pid).collect();
    files.unix.check_links(&files.files, &live_pids)?;
    crate::tty::finish(&mut files, &mut procs)?;
    let cgroups = crate::cgroups::collect(&mut procs, o.pid)?;
    crate::events::check_epolls(&mut files.files, &procs)?;
    // (After the checks that look at the processes' real fds.)
    crate::unix::in_flight::add_carriers(&mut procs, &carried)?;
    // Read while frozen: a running checkpoint lets the tree go before the
    // manifest is made, and its tasks may be gone by then.
    let pod_pids = match o.pod.is_some() {
        true => {
            let tasks =
                fr.procs.iter().map(|(p, t)| (*p, t.clone())).chain(fr.zombies.iter().map(|&z| (z, Vec::new())));
            Some(crate::pidns::pod_pids(tasks)?)
        }
        false => None,
    };
    // /proc files name processes as the tree's /proc does: a pod's by the
    // pod's own PIDs.
    let tree_pids: std::collections::HashSet<i32> = procs
        .iter()
        .filter(|p| p.zombie_status.is_none())
        .map(|p| pod_pids.as_ref().map_or(Some(p.pid), |m| m.get(&p.pid).copied()))
        .collect::<Option<_>>()
        .ok_or_else(|| EngineError::Other("a process of the pod has no PID in it".into()))?;
    files.link_proc_files(&tree_pids, o.pod.is_some())?;
    for f in &files.files {
        if let cryopod_image::FileKind::Pidfd { pid } = f.kind {
            if pid != -1 && !procs.iter().any(|p: &Process| p.pid == pid && p.zombie_status.is_none()) {
                return Err(EngineError::Unsupported {
                    pid,
                    what: "a pidfd of a process outside the checkpoint".into(),
                });
            }
        }
    }
    fault::check("after-collect")?;
    tracing::info!(ms = t_collect.elapsed().as_secs_f64() * 1e3, pieces = mem.pieces.len(), "state collected");
    // Armed: the handler stops; what it let go while frozen is protected
    // again with the rest.
    let t_finish = Instant::now();
    let late = armed.map(|a| a.finish()).unwrap_or_default();
    tracing::debug!(ms = t_finish.elapsed().as_secs_f64() * 1e3, late = late.len(), "arming handler stopped");
    // Left out on request: the flags must be known before the pages go.
    if o.exclude_dontdump {
        apply_flags(run, &mut procs)?;
    }
    // Tracked: only the pages written since the parent's freeze are read.
    let parent = o.base.and_then(|b| b.parent_manifest.as_ref().map(|m| (m, &b.parent_chunks[..])));
    let selection = match (&round, parent) {
        (Some(r), Some(parent)) => {
            let map = pod_pids.as_ref();
            let s = crate::incremental::select(&mut mem, &procs, r, parent, |p| match map {
                Some(m) => m.get(&p).copied(),
                None => Some(p),
            });
            tracing::info!(read = s.read_bytes, reused = s.reused_bytes, "tracked: pages written since the parent");
            Some(s)
        }
        _ => None,
    };
    let mut excluded = excluded_pieces(o, &procs, &mem);
    let left = left_pieces(o, &procs, &mem);
    for (x, _) in excluded.iter_mut().zip(&left).filter(|(_, l)| **l) {
        *x = true;
    }
    let reused = selection.as_ref().map(|s| &s.reused[..]).unwrap_or(&[]);
    let (mut out, cow_stats) = write_pages(o, outdir, &procs, &mem, (uffds, late), (run, &excluded, reused), progress)?;
    // Left for later: no run at all (a zero run would be restored as zeros).
    let mut left_runs = Vec::new();
    for (i, _) in left.iter().enumerate().filter(|(_, l)| **l) {
        out.chunk_of[i].clear();
        if let (pages::Src::Mem { pid, addr }, crate::mm::Dest::Vma { proc, .. }) = (&mem.pieces[i].src, mem.dests[i]) {
            left_runs.push((proc, *pid, *addr, mem.pieces[i].pages));
        }
    }
    let mut chunk_stats = out.stats;
    chunk_stats.tracked = selection.as_ref().map(|s| (s.read_bytes, s.reused_bytes));
    apply_flags(run, &mut procs)?;
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
        parent: o.base.and_then(|b| b.parent.clone()),
        store: o.base.and_then(|b| b.store_link().cloned()),
        cgroups,
    };
    crate::mm::attach_runs(&mut m, &mem, &out.chunk_of, &out.reused);
    if let Some(map) = &pod_pids {
        crate::pidns::to_pod(&mut m, map)?;
        if let Some(ids) = o.pod.as_ref().and_then(|p| p.ids) {
            crate::pidns::ids_to_pod(&mut m, ids)?;
        }
    }
    m.validate()?;
    // (Named as the image names its processes: in a pod, their pod PIDs.)
    let left = left_runs
        .into_iter()
        .map(|(proc, host, addr, pages)| crate::lazy::LeftRun { pid: m.processes[proc].pid, host, addr, pages })
        .collect();
    tracing::debug!(ms = t_collect.elapsed().as_secs_f64() * 1e3, "manifest made");
    fault::check("before-manifest")?;
    outdir.commit_manifest(&m, o.key)?;
    tracing::debug!(ms = t_collect.elapsed().as_secs_f64() * 1e3, "manifest written");
    Ok((m, std::mem::take(&mut files.unix.repaired), (cow_stats, chunk_stats, left)))
}

/// Write every piece: all of them frozen; or, given uffds, the pieces that
/// can be read running are write-protected, the others read, and the tree
/// let go before those are read (see [`crate::cow`]).
fn write_pages(
    o: &CheckpointOptions,
    outdir: &OutDir,
    procs: &[Process],
    mem: &MemCollector,
    (uffds, late): (Vec<crate::cow::Taken>, Vec<(i32, u64, u64)>),
    (run, excluded, reused): (&mut Resume, &[bool], &[crate::incremental::Reused]),
    progress: Progress,
) -> Result<(pages::PagesOut, Option<crate::cow::CowStats>)> {
    let t_pages = Instant::now();
    let session = match uffds.is_empty() {
        true => None,
        false => match crate::cow::Session::setup(procs, mem, uffds, (&late, excluded)) {
            Ok(s) if s.active() => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("memory cannot be read while the tree runs ({e}): read frozen");
                None
            }
        },
    };
    let n = mem.pieces.len();
    let cow_of = |i: usize| session.as_ref().is_some_and(|s| s.cow[i]);
    let frozen: Vec<usize> = (0..n).filter(|&i| !cow_of(i) && !excluded[i]).collect();
    let running: Vec<usize> = (0..n).filter(|&i| cow_of(i) && !excluded[i]).collect();
    let mut d = pages::Dumper::new(outdir, o.threads, (o.compress, o.key), o.base);
    if o.precopy {
        // The tracking round at the freeze has started counting: whatever
        // the tree writes while we read is read again by the next round.
        run.now();
        d.run(&mem.pieces, &frozen, &pages::RunningReader, progress)?;
    } else {
        d.run(&mem.pieces, &frozen, &pages::FrozenReader, progress)?;
    }
    tracing::debug!(ms = t_pages.elapsed().as_secs_f64() * 1e3, pieces = frozen.len(), "frozen pieces written");
    let mut stats = None;
    if let Some(s) = &session {
        tracing::info!(
            ms = t_pages.elapsed().as_secs_f64() * 1e3,
            frozen = frozen.len(),
            running = running.len(),
            "memory write-protected; the tree goes on"
        );
        fault::check("before-cow")?;
        let r = std::thread::scope(|sc| {
            sc.spawn(|| s.serve());
            run.now();
            let r = fault::check("during-cow").and_then(|_| d.run(&mem.pieces, &running, s, progress));
            s.stop();
            r
        });
        r?;
        if let Some(why) = s.inexact() {
            return Err(EngineError::CowInexact(why));
        }
        stats = Some(s.stats());
        tracing::info!(?stats, "memory read while running");
    }
    // Runs taken from the parent name its chunks, in this image's table.
    let taken = name_parent_chunks(&d, o.base.map_or(&[][..], |b| &b.parent_chunks[..]), reused)?;
    tracing::debug!(ms = t_pages.elapsed().as_secs_f64() * 1e3, runs = taken.len(), "runs from the parent named");
    let mut out = d.finish(n)?;
    out.reused = taken;
    for (i, _) in excluded.iter().enumerate().filter(|(_, &x)| x) {
        out.chunk_of[i] = vec![(0, mem.pieces[i].pages, None)];
    }
    tracing::info!(ms = t_pages.elapsed().as_secs_f64() * 1e3, chunks = out.chunks.len(), "pages written");
    Ok((out, stats))
}

/// The runs taken from the parent (`reused`, naming chunks of the
/// parent's manifest, whose records the base has: `parent`), naming chunks
/// of this image's table: each distinct chunk recorded once.
fn name_parent_chunks(
    d: &pages::Dumper,
    parent: &[Option<cryopod_image::Chunk>],
    reused: &[crate::incremental::Reused],
) -> Result<Vec<pages::TakenRun>> {
    let unknown = || EngineError::Other("a parent chunk is not known".into());
    const NONE: u32 = u32::MAX;
    let mut id_of: Vec<u32> = vec![NONE; parent.len()];
    let mut wanted = Vec::new();
    for (c, _) in reused.iter().filter_map(|r| r.data) {
        let slot = id_of.get_mut(c as usize).ok_or_else(unknown)?;
        if *slot == NONE {
            *slot = NONE - 1;
            wanted.push((c, parent.get(c as usize).and_then(Option::as_ref).ok_or_else(unknown)?));
        }
    }
    let ids = d.reuse_records(wanted.iter().map(|w| w.1));
    for (&(c, _), id) in wanted.iter().zip(ids) {
        id_of[c as usize] = id;
    }
    Ok(reused.iter().map(|r| (r.dest, r.pages, r.data.map(|(c, from)| (id_of[c as usize], from)))).collect())
}

/// Give the processes' areas their flags, once read (see `crate::vmflags`).
fn apply_flags(run: &mut Resume, procs: &mut [Process]) -> Result<()> {
    if let Some(flags) = run.flags.take() {
        let areas = flags.take()?;
        for p in procs.iter_mut() {
            if let Some(a) = areas.get(&p.pid) {
                let task = p.threads.first().map_or((0, 0), |t| t.attrs.mempolicy);
                crate::vmflags::apply(p.pid, &mut p.vmas, a, task)?;
            }
        }
    }
    Ok(())
}

/// Per piece: whether it is left out, recorded as zero pages (with
/// `--exclude-dontdump`, the pages of areas marked MADV_DONTDUMP).
fn excluded_pieces(o: &CheckpointOptions, procs: &[Process], mem: &MemCollector) -> Vec<bool> {
    mem.dests
        .iter()
        .map(|d| match *d {
            crate::mm::Dest::Vma { proc, vma, .. } if o.exclude_dontdump => procs
                .get(proc)
                .and_then(|p| p.vmas.get(vma))
                .is_some_and(|v| v.madv & cryopod_image::vma_flags::DONTDUMP != 0),
            _ => false,
        })
        .collect()
}

/// Per piece: whether it is left to be fetched later (`leave_private`):
/// the pages of a process's private anonymous areas, which a lazy restore
/// fills through userfaultfd (other memory is filled before the tree runs)
/// — but not those the restore itself makes the kernel write before
/// anything can be fetched: just below each thread's stack pointer (its
/// frames), and each thread's rseq area (written at every return to user
/// space once registered).
fn left_pieces(o: &CheckpointOptions, procs: &[Process], mem: &MemCollector) -> Vec<bool> {
    if !o.leave_private {
        return vec![false; mem.pieces.len()];
    }
    /// Kept below a stack pointer (a signal frame with the largest
    /// extended state fits many times).
    const BELOW: u64 = 64 << 10;
    let near_stack = |p: &Process, start: u64, end: u64| {
        p.threads.iter().any(|t| {
            let sp = crate::threads::stack_pointer(t);
            let rseq = t.rseq.is_some_and(|(at, len, _)| start < at + u64::from(len) && at < end);
            rseq || (start < sp + PAGE && sp.saturating_sub(BELOW) < end)
        })
    };
    mem.dests
        .iter()
        .zip(&mem.pieces)
        .map(|(d, piece)| match (*d, &piece.src) {
            (crate::mm::Dest::Vma { proc, vma, .. }, pages::Src::Mem { addr, .. }) => {
                procs.get(proc).is_some_and(|p| {
                    let private = p.vmas.get(vma).is_some_and(|v| v.kind == cryopod_image::VmaKind::Anon && !v.shared);
                    private && !near_stack(p, *addr, addr + u64::from(piece.pages) * PAGE)
                })
            }
            _ => false,
        })
        .collect()
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
        locks: Vec::new(),
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
        ctty: None,
        cgroups: Vec::new(),
        carried: Vec::new(),
    }
}

fn collect_process(
    pid: i32,
    tids: &[i32],
    // Its index in the manifest, and its areas (`MemCollector::collect`).
    (idx, vmas): (usize, Vec<cryopod_image::Vma>),
    files: &mut FileTable,
    mem: &mut MemCollector,
    gadgets: &mut GadgetCache,
    // Where to put the process's uffd for a running read, and the uffds
    // armed before the freeze.
    uffds: Option<(&mut Vec<crate::cow::Taken>, Option<&crate::arm::Armed>)>,
) -> Result<Process> {
    // Seccomp: a process that could not get its filters back must not be
    // checkpointed (restoring it without them would grant privilege).
    let mut strict = Vec::new();
    for &tid in tids {
        if crate::threads::check_seccomp_restorable(pid, tid)? {
            strict.push(tid);
        }
    }
    let st = procfs::stat(pid)?;
    let mut p = empty_process(pid, &st);
    p.vmas = vmas;
    (p.fds, p.locks) = files.collect_fds(pid, mem)?;
    ident::collect_process_env(pid, &mut p)?;
    p.shared_pending = cryopod_sys::ptrace::peek_siginfo(pid, true)?.into_iter().map(|s| s.to_vec()).collect();
    let g = gadgets.find(pid)?;
    let vpid = crate::pidns::ns_pid(pid, pid)?;
    let areas = injection::areas(&p.vmas);
    let mut leader = injection::cover(pid, pid, vpid, &g, &areas)?;
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
        p.attrs = ident::collect_attrs(r, &p.vmas)?;
        // A filter could kill the process for a syscall it never makes.
        if let Some((v, armed)) = uffds.filter(|_| !has_seccomp(pid)) {
            let taken = match armed.and_then(|a| a.take(pid)) {
                Some(uffd) => Some((uffd, true)),
                None => crate::cow::take_uffd(r)?.map(|fd| (Arc::new(Uffd::from_fd(fd)), false)),
            };
            if let Some((uffd, armed)) = taken {
                v.push(crate::cow::Taken { proc: idx, pid, uffd, armed });
            }
        }
        for &tid in tids {
            if tid == pid {
                p.threads.push(threads::collect(r, leader_mask)?);
                continue;
            }
            let mut c = injection::cover(pid, tid, vpid, &g, &areas)?;
            let mask = c.mask();
            let t = threads::collect(&mut c.remote, mask);
            deferred.extend(c.remote.inj.deferred.drain(..).map(|i| (tid, i)));
            c.uncover()?;
            p.threads.push(t?);
        }
        Ok(())
    })();
    leader.release(&g, deferred, res)?;
    for t in p.threads.iter_mut() {
        t.attrs.seccomp_strict = strict.contains(&t.tid);
    }
    Ok(p)
}

/// The processes of `pids` that share their address space with their
/// parent among them (a vfork child and its parent: both of each pair).
/// Their memory is read frozen: the child's exit or exec would end what
/// its uffd serves.
pub(crate) fn sharing_vm(pids: &[i32]) -> std::collections::HashSet<i32> {
    let mut shared = std::collections::HashSet::new();
    for &pid in pids {
        let ppid = procfs::stat(pid).map(|s| s.ppid).unwrap_or(0);
        if pids.contains(&ppid) && cryopod_sys::process::same_vm(pid, ppid).unwrap_or(true) {
            shared.extend([pid, ppid]);
        }
    }
    shared
}

/// Has the process a seccomp filter (or strict mode)?
pub(crate) fn has_seccomp(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    procfs::status_field(&status, "Seccomp").is_none_or(|m| m != "0")
}
