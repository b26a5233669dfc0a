//! Dirty tracking of a running tree from outside, without soft-dirty: which
//! pages each process wrote since the last time we asked. Incremental
//! checkpoints and live migration's pre-copy rounds call [`Tracker::round`]
//! in a loop.
//!
//! How (see KERNEL-NOTES "Dirty tracking without soft-dirty"): each process
//! gets a userfaultfd made inside it during a stop of a few milliseconds
//! (the same injected call as [`crate::arm`]), taken with `pidfd_getfd` and
//! closed in the process, in *asynchronous* write-protect mode: a write to
//! a protected page un-protects it in the kernel, with no message and no
//! wait. Its private anonymous areas are registered and protected while it
//! runs. A round scans each area with `PAGEMAP_SCAN`, which reports the
//! pages written since and protects them again in the same walk.
//!
//! What tracking cannot see counts as written, never as clean:
//! - a process new since the last round (forked: a child does not inherit
//!   the registration), one that ran `execve`, or one whose uffd could not
//!   be made: `whole`;
//! - an area that was not registered over the whole interval (mapped,
//!   moved by `mremap` or grown since, or mapped anew over a registered
//!   range): in `untracked`, and registered from now on;
//! - writable areas tracking cannot cover (shared memory, private file
//!   mappings): in `untracked` every round.
//!
//! A page dropped by `madvise(MADV_DONTNEED)` is reported written (it
//! reads as zero now): the scan counts every page not holding our
//! protection as written, and a dropped anonymous page loses it.
//!
//! The program sees nothing of it: no descriptor, mapping or signal of
//! ours stays in it, and a write costs it one minor fault per page and
//! round. Dropping the tracker closes the uffds: the kernel then removes
//! every registration and protection.

pub mod hold;

use crate::{procfs, EngineError, Result};
use cryopod_sys::pagemap::{Pagemap, Region};
use cryopod_sys::uffd::{self, Uffd};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Features a tracking uffd needs. Not `WP_UNPOPULATED`: its markers in
/// untouched page-table entries look like swapped pages to a pages scan
/// (and a checkpoint would read them); a page written for the first time
/// is seen anyway, since it is not protected.
const FEATURES: u64 = uffd::FEATURE_WP_ASYNC;

/// A range of addresses, `[start, end)`.
pub type Range = (u64, u64);

/// What changed in one process since the last round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcDirty {
    /// Not tracked over the interval: all of its memory counts as written.
    pub whole: bool,
    /// Pages written, in areas tracked over the whole interval (sorted).
    pub written: Vec<Range>,
    /// Writable areas that were not tracked over the interval: all of them
    /// count as written (sorted).
    pub untracked: Vec<Range>,
}

impl ProcDirty {
    /// Bytes that count as written (`whole`: None).
    pub fn bytes(&self) -> Option<u64> {
        (!self.whole).then(|| self.written.iter().chain(&self.untracked).map(|(s, e)| e - s).sum())
    }
}

/// One round's answer.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Every process of the tree now, by host PID.
    pub procs: BTreeMap<i32, ProcDirty>,
    /// Processes tracked before that are gone.
    pub gone: Vec<i32>,
    /// How long the tree was stopped to arm processes new to tracking.
    pub stopped: Duration,
    /// How long the round took.
    pub took: Duration,
}

struct Tracked {
    uffd: Uffd,
    pagemap: Pagemap,
    /// Start time (clock ticks after boot): a recycled PID differs.
    start: u64,
    /// Areas registered and protected at the end of the last round.
    areas: Vec<Range>,
    /// Armed after the instant the last round stands for (see
    /// [`Tracker::arm_pending`]): its next round counts it whole.
    fresh: bool,
}

/// Tracking armed on the tree of a root process (see the module comment).
pub struct Tracker {
    root: i32,
    procs: BTreeMap<i32, Tracked>,
    /// Processes found by a frozen round, to arm once the tree runs.
    pending: HashSet<i32>,
    /// The image whose freeze the next round counts from (BLAKE3 of its
    /// manifest), if the tracking has run since then: an incremental
    /// checkpoint may take pages from that image only. None: armed since.
    since: Option<[u8; 32]>,
}

/// What a tracked process's tracking is, to hand it to another process
/// (see [`Tracker::into_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcPart {
    pub pid: i32,
    pub start: u64,
    pub areas: Vec<Range>,
    pub fresh: bool,
}

/// Areas tracking registers: private, anonymous (heap, stack, anonymous
/// mappings, whatever their protection now).
fn trackable(m: &procfs::MapEntry) -> bool {
    !m.shared()
        && m.inode == 0
        && (matches!(m.path.as_str(), "" | "[heap]" | "[stack]") || m.path.starts_with("[anon:"))
}

/// Writable areas whose writes tracking cannot see.
fn blind(m: &procfs::MapEntry) -> bool {
    !trackable(m) && m.prot() & libc::PROT_WRITE as u32 != 0 && !m.path.starts_with("[v")
}

/// The tree of `root` now (root first); empty if it is gone.
fn tree(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        if std::path::Path::new(&format!("/proc/{p}")).exists() {
            out.push(p);
            queue.extend(procfs::children(p).unwrap_or_default());
        }
    }
    out
}

/// Whether `[s, e)` lies within the union of the sorted, disjoint `areas`.
fn covered(areas: &[Range], s: u64, e: u64) -> bool {
    let mut at = s;
    for &(a, b) in areas {
        if b <= at {
            continue;
        }
        if a > at {
            return false;
        }
        at = b;
        if at >= e {
            return true;
        }
    }
    at >= e
}

/// Merge sorted ranges that touch.
fn merged(mut v: Vec<Range>) -> Vec<Range> {
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if l.1 >= r.0 => l.1 = l.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

impl Tracker {
    /// Arm tracking on every process of the tree of `root`. Processes that
    /// cannot have a uffd (seccomp, memory shared with another process of
    /// the tree) are reported `whole` every round.
    pub fn arm(root: i32) -> Result<Tracker> {
        crate::target::check(root)?;
        let mut t = Tracker { root, procs: BTreeMap::new(), pending: HashSet::new(), since: None };
        let pids: HashSet<i32> = tree(root).into_iter().collect();
        t.arm_new(&pids)?;
        Ok(t)
    }

    /// The root process tracked.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// The image whose freeze the next round counts from, if any.
    pub fn since(&self) -> Option<[u8; 32]> {
        self.since
    }

    /// A checkpoint made at the last (frozen) round wrote the image whose
    /// manifest hashes to `hash`: the next round counts from it.
    pub fn set_since(&mut self, hash: [u8; 32]) {
        self.since = Some(hash);
    }

    /// PIDs tracked now.
    pub fn tracked(&self) -> Vec<i32> {
        self.procs.keys().copied().collect()
    }

    /// Make uffds in processes `new` (a short stop of the tree), register
    /// and protect their areas while the tree runs. Returns the stop.
    fn arm_new(&mut self, new: &HashSet<i32>) -> Result<Duration> {
        let t = Instant::now();
        let mut fr = crate::freeze::freeze(self.root)?;
        let taken = crate::arm::take_uffds(&fr, |p| new.contains(&p));
        fr.thaw();
        let stopped = t.elapsed();
        for (pid, fd) in taken? {
            let u = Uffd::from_fd(fd);
            match u.api(FEATURES) {
                Ok(got) if got & FEATURES == FEATURES => {}
                Ok(_) | Err(_) => {
                    tracing::info!(pid, "asynchronous write-protect refused: the process counts as all written");
                    continue;
                }
            }
            let (Some(start), Ok(pagemap)) = (procfs::start_time(pid), Pagemap::open(pid)) else { continue };
            let mut tr = Tracked { uffd: u, pagemap, start, areas: Vec::new(), fresh: false };
            let maps = procfs::maps(pid).unwrap_or_default();
            for m in maps.iter().filter(|m| trackable(m)) {
                if tr.register(m.start, m.end) {
                    tr.areas.push((m.start, m.end));
                }
            }
            tr.areas = merged(tr.areas);
            self.procs.insert(pid, tr);
        }
        Ok(stopped)
    }

    /// What each process of the tree wrote since the last round (or since
    /// it was armed), tracking carried on. Processes new to tracking count
    /// whole and are armed before it returns (a short stop): what the
    /// caller reads of them afterwards is what they hold from then on.
    pub fn round(&mut self) -> Result<Round> {
        self.round_inner(true)
    }

    /// A round while the caller holds the tree stopped (a checkpoint's
    /// freeze): nothing is armed; processes new to tracking count whole
    /// and wait for [`Tracker::arm_pending`].
    pub fn round_frozen(&mut self) -> Result<Round> {
        self.round_inner(false)
    }

    /// Arm the processes a frozen round found, once the tree runs again.
    /// Their writes between that round and now are not known: their next
    /// round counts them whole once more.
    pub fn arm_pending(&mut self) -> Result<Duration> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(Duration::ZERO);
        }
        let stopped = self.arm_new(&pending)?;
        for p in &pending {
            if let Some(t) = self.procs.get_mut(p) {
                t.fresh = true;
            }
        }
        Ok(stopped)
    }

    /// Hand tracking over: the parts and, in the same order, the uffds
    /// (registrations live as long as one descriptor of each does).
    pub fn into_parts(self) -> (i32, Option<[u8; 32]>, Vec<ProcPart>, Vec<std::os::fd::OwnedFd>) {
        let mut parts = Vec::new();
        let mut fds = Vec::new();
        for (pid, t) in self.procs {
            parts.push(ProcPart { pid, start: t.start, areas: t.areas, fresh: t.fresh || self.pending.contains(&pid) });
            fds.push(t.uffd.into_fd());
        }
        (self.root, self.since, parts, fds)
    }

    /// Tracking handed over by [`Tracker::into_parts`]; a part whose
    /// process is gone or recycled is dropped (it will count whole).
    pub fn from_parts(
        root: i32,
        since: Option<[u8; 32]>,
        parts: Vec<ProcPart>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Tracker {
        let mut t = Tracker { root, procs: BTreeMap::new(), pending: HashSet::new(), since };
        for (p, fd) in parts.into_iter().zip(fds) {
            let Ok(pagemap) = Pagemap::open(p.pid) else { continue };
            if procfs::start_time(p.pid) != Some(p.start) {
                continue;
            }
            let tr = Tracked { uffd: Uffd::from_fd(fd), pagemap, start: p.start, areas: p.areas, fresh: p.fresh };
            t.procs.insert(p.pid, tr);
        }
        t
    }

    fn round_inner(&mut self, arm: bool) -> Result<Round> {
        let t0 = Instant::now();
        let now = tree(self.root);
        if now.is_empty() {
            return Err(EngineError::Other(format!("tracked tree of pid {} is gone", self.root)));
        }
        let alive: HashSet<i32> = now.iter().copied().collect();
        let gone = self.procs.keys().copied().filter(|p| !alive.contains(p)).collect();
        let mut round = Round { gone, ..Default::default() };
        for p in &round.gone {
            self.procs.remove(p);
        }
        let mut new = HashSet::new();
        for &pid in &now {
            let d = match self.procs.get_mut(&pid) {
                Some(tr) if procfs::start_time(pid) == Some(tr.start) => {
                    let fresh = std::mem::take(&mut tr.fresh);
                    tr.round(pid).map(|d| ProcDirty { whole: fresh, ..d })
                }
                _ => None,
            };
            let d = d.unwrap_or_else(|| {
                // New, recycled, exec'd, or its tracking failed: all of it
                // counts, and it is armed afresh.
                self.procs.remove(&pid);
                new.insert(pid);
                ProcDirty { whole: true, ..Default::default() }
            });
            round.procs.insert(pid, d);
        }
        match arm {
            true if !new.is_empty() => round.stopped = self.arm_new(&new)?,
            true => {}
            false => self.pending.extend(new),
        }
        round.took = t0.elapsed();
        Ok(round)
    }
}

impl Tracked {
    /// Register `[s, e)` for asynchronous write-protect and protect it.
    fn register(&self, s: u64, e: u64) -> bool {
        self.uffd.register_wp(s, e - s).is_ok() && self.uffd.write_protect(s, e - s, true).is_ok()
    }

    /// This process's round; None if it must count as all written (its
    /// address space is not the one tracked any more).
    fn round(&mut self, pid: i32) -> Option<ProcDirty> {
        // An exec'd process has another address space: our uffd's is gone.
        self.uffd.event_pending().ok()?;
        let maps = procfs::maps(pid).ok()?;
        let mut d = ProcDirty::default();
        let mut areas = Vec::new();
        for m in &maps {
            if blind(m) {
                d.untracked.push((m.start, m.end));
                continue;
            }
            if !trackable(m) {
                continue;
            }
            let scanned = match covered(&self.areas, m.start, m.end) {
                true => self.pagemap.written_and_protect(m.start, m.end).ok(),
                false => None,
            };
            match scanned {
                Some(regions) => {
                    d.written.extend(regions.iter().map(|r: &Region| (r.start, r.end)));
                    areas.push((m.start, m.end));
                }
                // Mapped, moved or grown since, or registered no more (a
                // mapping made anew over it): all of it, tracked from now.
                None => {
                    d.untracked.push((m.start, m.end));
                    if self.register(m.start, m.end) {
                        areas.push((m.start, m.end));
                    }
                }
            }
        }
        // Registration outlives nothing: an area that failed stays out of
        // `areas` and is untracked again next round.
        self.areas = merged(areas);
        d.written = merged(d.written);
        d.untracked = merged(d.untracked);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_and_merging() {
        let a = merged(vec![(30, 40), (0, 10), (10, 20)]);
        assert_eq!(a, vec![(0, 20), (30, 40)]);
        assert!(covered(&a, 0, 20));
        assert!(covered(&a, 5, 15));
        assert!(!covered(&a, 15, 35));
        assert!(!covered(&a, 40, 41));
        assert!(covered(&a, 30, 40));
        assert!(!covered(&[], 1, 2));
    }
}
