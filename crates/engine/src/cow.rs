//! The forked checkpoint: a running checkpoint (`--leave-running`) stops
//! the tree only while it takes the non-memory state and write-protects
//! the memory to save; memory is read while the tree runs again, and the
//! image is still the memory of the freeze moment.
//!
//! How: one userfaultfd per process (made inside it, taken with
//! pidfd_getfd, closed there: ours alone), write-protect in *sync* mode on
//! every area holding pages to save (private anonymous memory, and shared
//! anonymous objects mapped only by the tree). A task's first write to a
//! protected page waits; the handler thread copies the 64 KiB window of
//! pieces around it (still the frozen contents), then un-protects the
//! window, which lets the write go. The readers (`pages::Dumper`) read
//! pieces and commit them under one lock: a piece the handler copied
//! first is taken from the copy (the task may have written it since);
//! otherwise the read is good, since nothing un-protects a piece before
//! one of the two has it. After the commit the reader un-protects it.
//!
//! What write-protection cannot see is announced by the kernel as events:
//! munmap, mremap, madvise(DONTNEED/REMOVE) and fork. Each marks the uffd
//! as changing from before it touches memory until its message is read, so
//! a reader or the handler, after reading, waits until no uffd has an
//! event pending ([`Uffd::event_pending`]) and only then commits: any
//! event that could have changed what was read has been handled by then.
//! An event over a piece not yet saved makes the image inexact: the
//! checkpoint is then given up and done again the frozen way (the caller
//! does that). A process that exits or execs meanwhile is the same (its
//! memory is read through a `/proc/PID/mem` opened at the freeze, which
//! never reads another address space).
//!
//! A large tree is armed before the freeze ([`crate::arm`]): its uffds
//! exist and its memory is protected already, and the freeze protects only
//! what was written since.
//!
//! Should cryopod die, its uffds close with it and the kernel drops their
//! registration and protection: the tree goes on untouched.

use crate::mm::{Dest, MemCollector};
use crate::pages::{BatchReader, Piece, Src};
use crate::{EngineError, Result};
use cryopod_image::{ObjectOrigin, Process, VmaKind, CHUNK_PAGES, PAGE};
use cryopod_sys::mem::ProcMem;
use cryopod_sys::uffd::{self, Msg, Uffd};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Pieces never cross a window of this size (see `pages::split_aligned`).
const WIN: u64 = CHUNK_PAGES * PAGE;

pub(crate) const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP
    | uffd::FEATURE_WP_HUGETLBFS_SHMEM;

/// Where a piece's key (address or object offset) lives.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum Space {
    /// Private memory of process `proc` (index in the manifest): addresses.
    Mem(usize),
    /// A shared anonymous object: offsets in it.
    Obj(u32),
}

/// A protected area of one address space.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    end: u64,
    space: Space,
    /// The key of `start`.
    base: u64,
}

impl Region {
    fn key(&self, addr: u64) -> u64 {
        self.base + (addr - self.start)
    }
    fn addr(&self, key: u64) -> u64 {
        self.start + (key - self.base)
    }
}

/// A uffd we serve: a process of the tree, or a child one forked since.
struct Tracked {
    uffd: Arc<Uffd>,
    /// The process (manifest index) whose memory this is; None for a child
    /// forked after the freeze (only its shared objects matter).
    owner: Option<usize>,
    regions: Vec<Region>,
}

enum St {
    /// Not saved yet: still write-protected everywhere.
    Pending,
    /// Saved (read or copied and committed); may be un-protected.
    Done,
    /// Copied by the handler before any reader had it.
    Copied(Vec<u8>),
}

struct Inner {
    st: Vec<St>,
    tracked: Vec<Tracked>,
    inexact: Option<String>,
}

/// What the running part of a checkpoint did.
#[derive(Debug, Default, Clone)]
pub struct CowStats {
    /// Write faults served.
    pub faults: u64,
    /// Pieces copied before the reader came.
    pub copied: u64,
}

/// The running pieces of each window of a space (pieces never cross
/// one), sorted for lookup: a checkpoint of gigabytes has a piece per
/// 64 KiB, and a hash map of them cost tens of milliseconds while frozen.
struct Windows(Vec<((Space, u64), usize)>);

impl Windows {
    fn new(mut v: Vec<((Space, u64), usize)>) -> Windows {
        v.sort_unstable();
        Windows(v)
    }

    fn get(&self, w: (Space, u64)) -> impl Iterator<Item = usize> + '_ {
        let from = self.0.partition_point(|e| e.0 < w);
        self.0[from..].iter().take_while(move |e| e.0 == w).map(|e| e.1)
    }
}

/// A process's userfaultfd handed to a [`Session`]: taken at the freeze
/// ([`take_uffd`]), or armed before it ([`crate::arm`]: API done, areas
/// registered and protected).
pub struct Taken {
    /// The process's index in the manifest.
    pub proc: usize,
    pub pid: i32,
    pub uffd: Arc<Uffd>,
    pub armed: bool,
}

/// A write-protected tree being read while it runs.
pub struct Session<'a> {
    pieces: &'a [Piece],
    /// Per piece: is it read while running (else while frozen)?
    pub cow: Vec<bool>,
    /// Per piece: its space and key, if read running.
    keys: Vec<Option<(Space, u64)>>,
    by_window: Windows,
    mems: HashMap<usize, ProcMem>,
    inner: Mutex<Inner>,
    stop: AtomicBool,
    faults: AtomicU64,
    copied: AtomicU64,
}

/// Create a uffd inside a stopped process (through injected calls) and
/// take it: the process keeps no descriptor of it, even if we die at any
/// instant (the call returns into a frame chained before the cover's that
/// closes the descriptor it will get, then into the cover's frame). None
/// when the kernel refuses one to this process (an unprivileged task may
/// only have one that leaves kernel-mode faults unserved, which would fail
/// its syscalls), or when the process is not covered by a frame to return
/// to by itself.
pub fn take_uffd(r: &mut crate::remote::Remote) -> Result<Option<OwnedFd>> {
    // The descriptor it will get: the lowest free one (every thread of the
    // tree is stopped, none can take it first).
    let open = crate::procfs::fds(r.pid)?;
    let next = (0..).find(|n| open.binary_search(n).is_err()).unwrap_or(0);
    let Some((sp, _)) = crate::injection::undo_on_death(r, crate::remote::nr::CLOSE, &[next as u64])? else {
        return Ok(None);
    };
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = r.inj.raw_via(sp, uffd::NR_USERFAULTFD, &[flags])?;
    if fd >= 0 && fd != i64::from(next) {
        tracing::warn!(pid = r.pid, fd, expected = next, "userfaultfd got another descriptor than foreseen");
    }
    crate::fault::check("after-userfaultfd")?;
    if fd < 0 {
        tracing::info!(pid = r.pid, errno = -fd, "no userfaultfd for this process: its memory is read frozen");
        return Ok(None);
    }
    let pidfd = cryopod_sys::pidfd::pidfd_open(r.pid);
    let ours = pidfd.and_then(|p| cryopod_sys::pidfd::pidfd_getfd(p, r.pid, cryopod_sys::TargetFd(fd as i32)));
    // Closed in the task before anything is registered through our copy:
    // a registration must never outlive us in a descriptor of the task's.
    r.call("close(userfaultfd)", crate::remote::nr::CLOSE, &[fd as u64])?;
    Ok(Some(ours?))
}

/// Write-protect every `(uffd, start, end)`, on all cores (every page
/// table entry is rewritten; disjoint ranges take the address space's lock
/// only shared). `running`: the tree runs meanwhile (armed before the
/// freeze), so a range may be gone or changed: skipped.
pub(crate) fn protect_all(jobs: Vec<(&Uffd, u64, u64)>, running: bool) -> Result<()> {
    const SLICE: u64 = 32 << 20;
    let slices: Vec<(&Uffd, u64, u64)> = jobs
        .into_iter()
        .flat_map(|(u, start, end)| {
            (0..(end - start).div_ceil(SLICE)).map(move |k| {
                let s = start + k * SLICE;
                (u, s, end.min(s + SLICE))
            })
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(slices.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<()> {
        while let Some(&(u, s, e)) = slices.get(next.fetch_add(1, Ordering::Relaxed)) {
            // EAGAIN: an event is not read yet (its reader is at work).
            let mut tries = 0;
            loop {
                match u.write_protect(s, e - s, true) {
                    Err(err) if err.errno.0 == libc::EAGAIN && tries < 200_000 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(_) if running => break,
                    r => break r?,
                }
            }
        }
        Ok(())
    };
    std::thread::scope(|sc| {
        let helpers: Vec<_> = (1..workers).map(|_| sc.spawn(work)).collect();
        let mut r = work();
        for h in helpers {
            r = r.and(h.join().unwrap_or_else(|_| Err(EngineError::Other("a write-protect worker panicked".into()))));
        }
        r
    })
}

impl<'a> Session<'a> {
    /// Register and write-protect, while the tree is frozen, every area
    /// whose pieces can be read while running; the others stay to be read
    /// frozen (`cow[i]` false). In a process armed before the freeze
    /// ([`crate::arm`]), only the pages written since (or new) are
    /// protected now, with `late` (pid, start, end: let go while frozen,
    /// see [`crate::arm::Armed::finish`]); the rest still are. Pieces
    /// `excluded` are not saved: a write to them is just let go.
    pub fn setup(
        procs: &[Process],
        mem: &'a MemCollector,
        uffds: Vec<Taken>,
        (late, excluded): (&[(i32, u64, u64)], &[bool]),
    ) -> Result<Session<'a>> {
        let pieces = &mem.pieces[..];
        // Which areas and objects have pieces.
        let mut vma_pieces: HashSet<(usize, usize)> = HashSet::new();
        let mut obj_pieces: HashSet<u32> = HashSet::new();
        for (i, d) in mem.dests.iter().enumerate() {
            match (d, &pieces[i].src) {
                (Dest::Vma { proc, vma, .. }, Src::Mem { .. }) => {
                    vma_pieces.insert((*proc, *vma));
                }
                (Dest::Object { id, .. }, _) => {
                    obj_pieces.insert(*id);
                }
                _ => {}
            }
        }
        let mut by_proc: HashMap<usize, (i32, Arc<Uffd>)> = HashMap::new();
        let mut armed: HashSet<usize> = HashSet::new();
        for Taken { proc, pid, uffd: u, armed: was_armed } in uffds {
            if was_armed {
                armed.insert(proc);
                by_proc.insert(proc, (pid, u));
                continue;
            }
            match u.api(FEATURES) {
                Ok(_) => {
                    by_proc.insert(proc, (pid, u));
                }
                Err(e) => tracing::info!(pid, "userfaultfd API refused ({e}): memory read frozen"),
            }
        }
        // Register every area that needs it; an object is read running only
        // if every area mapping it in the tree could be registered.
        let shared_anon =
            |id: u32| matches!(mem.objects.get(id as usize).map(|o| &o.origin), Some(ObjectOrigin::SharedAnon));
        let mut registered: Vec<(usize, usize, Region)> = Vec::new();
        let mut obj_ok: HashMap<u32, bool> = HashMap::new();
        for (pi, p) in procs.iter().enumerate() {
            for (vi, v) in p.vmas.iter().enumerate() {
                let region = match v.kind {
                    VmaKind::Anon if vma_pieces.contains(&(pi, vi)) => {
                        Region { start: v.start, end: v.end, space: Space::Mem(pi), base: v.start }
                    }
                    VmaKind::Object { object, pgoff } if v.shared && obj_pieces.contains(&object) => {
                        let ok = obj_ok.entry(object).or_insert(shared_anon(object));
                        if !*ok {
                            continue;
                        }
                        Region { start: v.start, end: v.end, space: Space::Obj(object), base: pgoff * PAGE }
                    }
                    _ => continue,
                };
                let ok = match by_proc.get(&pi) {
                    Some((pid, u)) => match u.register_wp(v.start, v.end - v.start) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::info!(pid, start = v.start, "area not registered ({e}): read frozen");
                            false
                        }
                    },
                    None => false,
                };
                if ok {
                    registered.push((pi, vi, region));
                } else if let Space::Obj(id) = region.space {
                    obj_ok.insert(id, false);
                }
            }
        }
        // Decide each piece, and index the running ones.
        let mut cow = vec![false; pieces.len()];
        let mut keys = vec![None; pieces.len()];
        let mut by_window = Vec::new();
        let reg_set: HashSet<(usize, usize)> = registered.iter().map(|&(p, v, _)| (p, v)).collect();
        for (i, d) in mem.dests.iter().enumerate().filter(|&(i, _)| !excluded.get(i).copied().unwrap_or(false)) {
            let k = match (d, &pieces[i].src) {
                (Dest::Vma { proc, vma, addr }, Src::Mem { .. }) if reg_set.contains(&(*proc, *vma)) => {
                    (Space::Mem(*proc), *addr)
                }
                (Dest::Object { id, off }, _) if obj_ok.get(id).copied().unwrap_or(false) => (Space::Obj(*id), *off),
                _ => continue,
            };
            cow[i] = true;
            keys[i] = Some(k);
            by_window.push(((k.0, k.1 & !(WIN - 1)), i));
        }
        // Write-protect what is read running; remember where.
        let mut protected: HashMap<usize, Vec<Region>> = HashMap::new();
        for (pi, _vi, r) in registered {
            let live = match r.space {
                Space::Mem(_) => true,
                Space::Obj(id) => obj_ok.get(&id).copied().unwrap_or(false),
            };
            if live && by_proc.contains_key(&pi) {
                protected.entry(pi).or_default().push(r);
            }
        }
        let mut jobs = Vec::new();
        for (pi, rs) in &protected {
            let Some((pid, u)) = by_proc.get(pi) else { continue };
            let (pid, u): (i32, &Uffd) = (*pid, u);
            if !armed.contains(pi) {
                jobs.extend(rs.iter().map(|r| (u, r.start, r.end)));
                continue;
            }
            // Armed: what is still protected since then needs nothing.
            let written = mem.written.get(pi).map(Vec::as_slice).unwrap_or(&[]);
            let again = written
                .iter()
                .copied()
                .chain(late.iter().filter(|l| l.0 == pid).map(|&(_, s, e)| (s, e)))
                .collect::<Vec<_>>();
            for r in rs {
                match r.space {
                    Space::Obj(_) => jobs.push((u, r.start, r.end)),
                    Space::Mem(_) => jobs.extend(
                        again
                            .iter()
                            .filter(|&&(s, e)| s < r.end && r.start < e)
                            .map(|&(s, e)| (u, s.max(r.start), e.min(r.end))),
                    ),
                }
            }
        }
        protect_all(jobs, false)?;
        let mut mems = HashMap::new();
        let mut tracked = Vec::new();
        for (pi, mut regions) in protected {
            let Some((pid, u)) = by_proc.remove(&pi) else { continue };
            mems.insert(pi, ProcMem::open_read(pid)?);
            regions.sort_by_key(|r| r.start);
            tracked.push(Tracked { uffd: u, owner: Some(pi), regions });
        }
        // The uffds of processes with nothing protected close here.
        drop(by_proc);
        let st = (0..pieces.len()).map(|i| if cow[i] { St::Pending } else { St::Done }).collect();
        Ok(Session {
            pieces,
            cow,
            keys,
            by_window: Windows::new(by_window),
            mems,
            inner: Mutex::new(Inner { st, tracked, inexact: None }),
            stop: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        })
    }

    /// Anything to read while running?
    pub fn active(&self) -> bool {
        self.cow.iter().any(|&c| c)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the image would not be exact, if it would not.
    pub fn inexact(&self) -> Option<String> {
        self.lock().inexact.clone()
    }

    pub fn stats(&self) -> CowStats {
        CowStats { faults: self.faults.load(Ordering::Relaxed), copied: self.copied.load(Ordering::Relaxed) }
    }

    /// End: the handler stops, every uffd closes (all protection goes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The handler thread: serve faults and events until stopped. Whatever
    /// happens it drops every uffd on its way out, releasing the tree.
    pub fn serve(&self) {
        let mut faults: VecDeque<(usize, u64)> = VecDeque::new();
        while !self.stop.load(Ordering::SeqCst) {
            let fds: Vec<Arc<Uffd>> = self.lock().tracked.iter().map(|t| t.uffd.clone()).collect();
            let borrowed: Vec<_> = fds.iter().map(|u| u.as_fd()).collect();
            let ready = match uffd::poll_readable(&borrowed, 20) {
                Ok(r) => r,
                Err(e) => {
                    self.give_up(format!("waiting for write faults: {e}"));
                    break;
                }
            };
            drop(borrowed);
            drop(fds);
            if !ready.is_empty() {
                let mut g = self.lock();
                for i in ready {
                    self.drain(&mut g, i, &mut faults);
                }
            }
            while let Some((i, addr)) = faults.pop_front() {
                self.fault(i, addr, &mut faults);
            }
        }
        // Closing the uffds (ours are the last references) drops all
        // registration and protection and wakes every waiting task.
        self.lock().tracked.clear();
    }

    fn give_up(&self, why: String) {
        let mut g = self.lock();
        tracing::warn!("{why}");
        g.inexact.get_or_insert(why);
        g.tracked.clear();
    }

    /// Read the messages of uffd `i`: events are dealt with at once (under
    /// the lock, see the module comment), faults queued.
    fn drain(&self, g: &mut Inner, i: usize, faults: &mut VecDeque<(usize, u64)>) {
        let mut msgs = Vec::new();
        let Some(t) = g.tracked.get(i) else { return };
        if let Err(e) = t.uffd.read_msgs(&mut msgs) {
            tracing::debug!("reading a userfaultfd: {e}");
        }
        for m in msgs {
            match m {
                Msg::Fault { addr, .. } => faults.push_back((i, addr)),
                Msg::Fork(fd) => {
                    let regions: Vec<Region> = g.tracked[i].regions.clone();
                    // A child whose shared objects are all saved needs
                    // nothing: closing its uffd frees it at once.
                    if regions.iter().any(|r| matches!(r.space, Space::Obj(_))) {
                        g.tracked.push(Tracked { uffd: Arc::new(Uffd::from_fd(fd)), owner: None, regions });
                    }
                }
                Msg::Remap { from, len, .. } => self.changed(g, i, from, from + len, "mremap", true),
                Msg::Unmap { start, end } => self.changed(g, i, start, end, "munmap", true),
                Msg::Remove { start, end } => self.changed(g, i, start, end, "madvise", false),
                Msg::Other(e) => tracing::debug!(event = e, "userfaultfd event ignored"),
            }
        }
    }

    /// `[start, end)` of uffd `i` changed without a write: inexact if a
    /// piece not yet saved is there; with `gone`, forget those regions.
    fn changed(&self, g: &mut Inner, i: usize, start: u64, end: u64, what: &str, gone: bool) {
        if self.pending_in(g, i, start, end) {
            let why = format!("{what} of {start:#x}-{end:#x} before its pages were saved");
            tracing::info!("{why}");
            g.inexact.get_or_insert(why);
        }
        if gone {
            let t = &mut g.tracked[i];
            let mut out = Vec::new();
            for r in t.regions.drain(..) {
                if r.end <= start || end <= r.start {
                    out.push(r);
                    continue;
                }
                if r.start < start {
                    out.push(Region { end: start, ..r });
                }
                if end < r.end {
                    out.push(Region { start: end, base: r.key(end), ..r });
                }
            }
            t.regions = out;
        }
    }

    fn pending_in(&self, g: &Inner, i: usize, start: u64, end: u64) -> bool {
        let t = &g.tracked[i];
        for r in &t.regions {
            let (a, b) = (r.start.max(start), r.end.min(end));
            if a >= b || (t.owner.is_none() && matches!(r.space, Space::Mem(_))) {
                continue;
            }
            let (k0, k1) = (r.key(a), r.key(b));
            let mut w = k0 & !(WIN - 1);
            while w < k1 {
                for p in self.by_window.get((r.space, w)) {
                    let Some((_, k)) = self.keys[p] else { continue };
                    let pe = k + u64::from(self.pieces[p].pages) * PAGE;
                    if matches!(g.st[p], St::Pending) && k < k1 && k0 < pe {
                        return true;
                    }
                }
                w += WIN;
            }
        }
        false
    }

    /// A write fault at `addr` in uffd `i`: save the window's pieces not
    /// yet saved, then un-protect the window (the writer goes on).
    fn fault(&self, i: usize, addr: u64, faults: &mut VecDeque<(usize, u64)>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        let page = addr & !(PAGE - 1);
        let (uffd, range, todo) = {
            let mut g = self.lock();
            let Some(t) = g.tracked.get(i) else { return };
            let uffd = t.uffd.clone();
            match t.regions.iter().position(|r| r.start <= page && page < r.end) {
                None => (uffd, (page, page + PAGE), Vec::new()),
                Some(ri) => {
                    let r = t.regions[ri];
                    if t.owner.is_none() && matches!(r.space, Space::Mem(_)) {
                        // A child's own memory: not ours to save.
                        g.tracked[i].regions.remove(ri);
                        (uffd, (r.start, r.end), Vec::new())
                    } else {
                        let w = r.key(page) & !(WIN - 1);
                        let range = (r.addr(w.max(r.base)), r.addr((w + WIN).min(r.key(r.end))));
                        let todo: Vec<usize> =
                            self.by_window.get((r.space, w)).filter(|&p| matches!(g.st[p], St::Pending)).collect();
                        (uffd, range, todo)
                    }
                }
            }
        };
        if !todo.is_empty() {
            let mut copies = Vec::new();
            for &p in &todo {
                let mut buf = vec![0u8; self.pieces[p].pages as usize * PAGE as usize];
                match self.read_piece(p, &mut buf) {
                    Ok(()) => copies.push((p, buf)),
                    Err(e) => {
                        let mut g = self.lock();
                        g.inexact.get_or_insert(format!("copying a page before it was written: {e}"));
                    }
                }
            }
            // Events that may have changed what we read are handled first.
            self.settle(Some(faults));
            let mut g = self.lock();
            for (p, buf) in copies {
                if matches!(g.st[p], St::Pending) {
                    g.st[p] = St::Copied(buf);
                    self.copied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.unprotect(&uffd, range.0, range.1 - range.0, Some(faults));
        if range != (page, page + PAGE) {
            // The window may no longer be one area: the page alone at least.
            let _ = uffd.write_protect(page, PAGE, false);
        }
        let _ = uffd.wake(page, PAGE);
    }

    /// Wait until no uffd has an event unread: the handler reads them
    /// itself (`faults` given), a reader lets the handler do it.
    fn settle(&self, mut faults: Option<&mut VecDeque<(usize, u64)>>) {
        let t0 = Instant::now();
        loop {
            let fds: Vec<Arc<Uffd>> = self.lock().tracked.iter().map(|t| t.uffd.clone()).collect();
            let busy: Vec<usize> =
                fds.iter().enumerate().filter(|(_, u)| matches!(u.event_pending(), Ok(true))).map(|(i, _)| i).collect();
            if busy.is_empty() {
                return;
            }
            match faults.as_deref_mut() {
                Some(f) => {
                    let mut g = self.lock();
                    for i in busy {
                        self.drain(&mut g, i, f);
                    }
                }
                None => std::thread::sleep(Duration::from_micros(50)),
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let mut g = self.lock();
                g.inexact.get_or_insert("an address-space event stayed unread".into());
                return;
            }
        }
    }

    fn unprotect(&self, u: &Uffd, start: u64, len: u64, mut faults: Option<&mut VecDeque<(usize, u64)>>) {
        for _ in 0..100_000 {
            match u.write_protect(start, len, false) {
                Err(e) if e.errno.0 == libc::EAGAIN => match faults.as_deref_mut() {
                    Some(f) => {
                        let mut g = self.lock();
                        let n = g.tracked.len();
                        for i in 0..n {
                            self.drain(&mut g, i, f);
                        }
                    }
                    None => std::thread::sleep(Duration::from_micros(50)),
                },
                _ => return,
            }
        }
    }

    /// Read piece `p` from its source (the frozen contents while it is
    /// still protected).
    fn read_piece(&self, p: usize, buf: &mut [u8]) -> Result<()> {
        match (&self.pieces[p].src, self.keys.get(p).copied().flatten().as_ref()) {
            (Src::Mem { addr, .. }, Some((Space::Mem(proc), _))) => {
                let m = self.mems.get(proc).ok_or_else(|| EngineError::Other("no memory file".into()))?;
                Ok(m.read_exact(*addr, buf)?)
            }
            (Src::File { file, off }, _) => {
                let mut got = 0;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], off + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(EngineError::Other(format!("reading shared memory: {e}"))),
                    }
                }
                buf[got..].fill(0);
                Ok(())
            }
            _ => Err(EngineError::Other("a piece read running without a place".into())),
        }
    }
}

impl BatchReader for Session<'_> {
    fn read(&self, pieces: &[Piece], sel: &[usize], buf: &mut [u8]) -> Result<usize> {
        if let Some(why) = self.inexact() {
            return Err(EngineError::CowInexact(why));
        }
        let mut off = 0usize;
        let mut slots = Vec::with_capacity(sel.len());
        for &p in sel {
            let l = pieces[p].pages as usize * PAGE as usize;
            self.read_piece(p, &mut buf[off..off + l])
                .map_err(|e| EngineError::CowInexact(format!("memory no longer readable: {e}")))?;
            slots.push((p, off, l));
            off += l;
        }
        self.settle(None);
        let mut ranges: Vec<(Arc<Uffd>, u64, u64)> = Vec::new();
        {
            let mut g = self.lock();
            if let Some(why) = &g.inexact {
                return Err(EngineError::CowInexact(why.clone()));
            }
            for &(p, o, l) in &slots {
                if let St::Copied(d) = std::mem::replace(&mut g.st[p], St::Done) {
                    buf[o..o + l].copy_from_slice(&d);
                }
                let Some((space, k)) = self.keys.get(p).copied().flatten() else { continue };
                let ke = k + l as u64;
                for t in g.tracked.iter().filter(|t| t.owner.is_some()) {
                    for r in t.regions.iter().filter(|r| r.space == space) {
                        let (a, b) = (r.key(r.start).max(k), r.key(r.end).min(ke));
                        if a < b {
                            ranges.push((t.uffd.clone(), r.addr(a), r.addr(b)));
                        }
                    }
                }
            }
        }
        // Un-protect, contiguous ranges of one uffd at once.
        let mut k = 0;
        while k < ranges.len() {
            let (u, a, mut b) = ranges[k].clone();
            k += 1;
            while k < ranges.len() && Arc::ptr_eq(&ranges[k].0, &u) && ranges[k].1 == b {
                b = ranges[k].2;
                k += 1;
            }
            self.unprotect(&u, a, b - a, None);
        }
        Ok(off)
    }
}
