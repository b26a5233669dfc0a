//! The flags of memory areas that a restore must set again (madvise
//! behaviours, mlock, grows-down), read while the tree is frozen.
//!
//! Only two places show them: `/proc/<pid>/smaps`, which walks every
//! page-table entry on the way (about 50 ms for a 4 GiB heap, the longest
//! step of a frozen checkpoint), and the kernel's `task_vma` BPF iterator
//! (`cryopod_sys::vma_iter`), which visits the areas alone. The iterator is
//! used for trees large enough for smaps' walk to matter, when it loads
//! (root, a kernel with BTF, Linux 6.1 or later) and when, checked against
//! smaps on cryopod's own areas and on one probe area per flag, it reports
//! every flag exactly as smaps does: its bits are the kernel's internal
//! values, so they are trusted only once seen to agree.

use crate::procfs::{self, MapEntry};
use crate::{EngineError, Result};
use cryopod_image::{vma_flags, Vma};
use cryopod_sys::vma_iter::{vm, Layout, Probes, VmaIter};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Each flag: its name in smaps, its kernel bit, its image bit.
const FLAGS: [(&str, u64, u32); 11] = [
    ("hg", vm::HUGEPAGE, vma_flags::HUGEPAGE),
    ("nh", vm::NOHUGEPAGE, vma_flags::NOHUGEPAGE),
    ("dc", vm::DONTCOPY, vma_flags::DONTFORK),
    ("wf", vm::WIPEONFORK, vma_flags::WIPEONFORK),
    ("dd", vm::DONTDUMP, vma_flags::DONTDUMP),
    ("gd", vm::GROWSDOWN, vma_flags::GROWSDOWN),
    ("lo", vm::LOCKED, vma_flags::LOCKED),
    ("lf", vm::LOCKONFAULT, vma_flags::LOCKONFAULT),
    ("sr", vm::SEQ_READ, vma_flags::SEQUENTIAL),
    ("rr", vm::RAND_READ, vma_flags::RANDOM),
    ("mg", vm::MERGEABLE, vma_flags::MERGEABLE),
];

fn from_smaps(m: &MapEntry) -> u32 {
    FLAGS.iter().filter(|(name, _, _)| m.has_flag(name)).fold(0, |f, (_, _, bit)| f | bit)
}

fn from_kernel(flags: u64) -> u32 {
    FLAGS.iter().filter(|(_, k, _)| flags & k != 0).fold(0, |f, (_, _, bit)| f | bit)
}

/// Each area of one process: (start, end, image flags), in address order.
type Areas = Vec<(u64, u64, u32)>;

/// The kernel's layout, once it was seen to give the flags smaps gives.
static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();

/// Where one checkpoint reads the areas' flags: a loaded iterator, or
/// smaps when there is none.
#[derive(Clone, Default)]
pub struct Source(Option<Arc<VmaIter>>);

/// Below this much resident memory in the tree, smaps walks its pages in
/// under 2 ms while frozen, less than reading the BTF and loading the
/// program costs before (7-8 ms in a release build, 80 ms in a debug one).
const ITER_MIN_BYTES: u64 = 128 << 20;

/// Where to read the flags of the tree of `root` for one checkpoint: for a
/// large tree, the iterator, loaded now (the BTF is read and checked once
/// per command); else smaps. Called before anything is frozen (a pod is
/// frozen before the engine's checkpoint starts, so its command calls
/// this). Drop the source before forking a process that will be
/// checkpointed: the program's descriptor is inherited.
pub fn prepare(root: i32) -> Source {
    if crate::arm::tree_resident(root, "VmRSS") < ITER_MIN_BYTES {
        return Source(None);
    }
    let layout = LAYOUT.get_or_init(|| match checked() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::info!("area flags come from smaps ({e})");
            None
        }
    });
    Source(
        layout
            .and_then(|l| VmaIter::load(&l).map_err(|e| tracing::info!("area flags come from smaps ({e})")).ok())
            .map(Arc::new),
    )
}

impl Source {
    /// Whether the flags come from the iterator.
    pub fn is_iterator(&self) -> bool {
        self.0.is_some()
    }
}

/// Linux 6.1 and later: before, the iterator ignored the one-process
/// filter and walked every task (its output would start with PID 1's).
fn new_enough() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (6, 1)
}

fn checked() -> Result<Layout> {
    if !new_enough() {
        return Err(EngineError::Other("the task_vma iterator filters by process from Linux 6.1 on".into()));
    }
    let layout = Layout::of_kernel()?;
    let it = VmaIter::load(&layout)?;
    let probes = Probes::map()?;
    // Our own areas may change between the two reads (another thread's
    // allocation): a few tries before giving up.
    let mut last = None;
    for _ in 0..3 {
        match agrees(&it, &probes) {
            Ok(()) => return Ok(layout),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| EngineError::Other("the task_vma iterator was not checked".into())))
}

/// Does the iterator give the flags smaps gives, on our own areas?
fn agrees(it: &VmaIter, probes: &Probes) -> Result<()> {
    let me = std::process::id() as i32;
    let by_iter = iter_areas(it, me)?;
    let smaps = procfs::smaps(me)?;
    for (addr, name) in probes.areas() {
        let seen = smaps.iter().find(|m| m.start <= addr && addr < m.end).is_some_and(|m| m.has_flag(name));
        if !seen {
            return Err(EngineError::Other(format!("smaps does not show '{name}' on its probe at {addr:#x}")));
        }
    }
    for m in smaps.iter().filter(|m| !is_gate(m.start)) {
        let mine = by_iter.iter().find(|a| (a.0, a.1) == (m.start, m.end));
        if mine.map(|a| a.2) != Some(from_smaps(m)) {
            return Err(EngineError::Other(format!(
                "the task_vma iterator disagrees with smaps on {:#x}-{:#x}: {:?} against {:?}",
                m.start,
                m.end,
                mine.map(|a| a.2),
                m.vmflags
            )));
        }
    }
    Ok(())
}

fn iter_areas(it: &VmaIter, pid: i32) -> Result<Areas> {
    Ok(it.areas(pid)?.iter().map(|a| (a.start, a.end, from_kernel(a.flags))).collect())
}

/// The vsyscall page: listed by maps, not an area of the process.
fn is_gate(start: u64) -> bool {
    start >= 0xffff_ffff_ff60_0000
}

fn read(pid: i32, source: &Source) -> Result<Areas> {
    if let Some(it) = &source.0 {
        return iter_areas(it, pid);
    }
    Ok(procfs::smaps(pid)?.iter().map(|m| (m.start, m.end, from_smaps(m))).collect())
}

/// Give the areas of `pid` collected from its maps their flags, read
/// while the tree was frozen (so the same areas).
pub fn apply(pid: i32, vmas: &mut [Vma], areas: &Areas) -> Result<()> {
    for v in vmas.iter_mut() {
        match areas.binary_search_by_key(&v.start, |a| a.0) {
            Ok(i) if areas[i].1 == v.end => v.madv = areas[i].2,
            _ if is_gate(v.start) => v.madv = 0,
            _ => {
                return Err(EngineError::Other(format!(
                    "pid {pid}: area {:#x}-{:#x} has no flags: the areas changed while frozen",
                    v.start, v.end
                )))
            }
        }
    }
    Ok(())
}

/// The flags of a frozen tree, read on a thread of its own beside the rest
/// of the checkpoint, waited for before the tree runs again.
pub struct Reader {
    handle: Option<std::thread::JoinHandle<Result<HashMap<i32, Areas>>>>,
    got: Option<Result<HashMap<i32, Areas>>>,
}

impl Reader {
    pub fn start(pids: Vec<i32>, source: Source) -> Result<Reader> {
        let handle = std::thread::Builder::new()
            .name("cryopod-vmflags".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let r = pids.iter().map(|&pid| read(pid, &source).map(|a| (pid, a))).collect();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(ms, iterator = source.is_iterator(), "area flags read");
                r
            })
            .map_err(|e| EngineError::Other(format!("starting the area flags reader: {e}")))?;
        Ok(Reader { handle: Some(handle), got: None })
    }

    /// Wait until every process's flags are read.
    pub fn wait(&mut self) {
        if let Some(h) = self.handle.take() {
            self.got =
                Some(h.join().unwrap_or_else(|_| Err(EngineError::Other("the area flags reader panicked".into()))));
        }
    }

    /// The flags read, by pid.
    pub fn take(mut self) -> Result<HashMap<i32, Areas>> {
        self.wait();
        self.got.take().unwrap_or_else(|| Err(EngineError::Other("area flags taken twice".into())))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_its_own_bits() {
        for (i, a) in FLAGS.iter().enumerate() {
            for b in &FLAGS[i + 1..] {
                assert_ne!(a.1 & b.1, a.1, "{} and {}", a.0, b.0);
                assert_eq!(a.2 & b.2, 0, "{} and {}", a.0, b.0);
            }
        }
        assert_eq!(from_kernel(vm::LOCKED | vm::DONTDUMP), vma_flags::LOCKED | vma_flags::DONTDUMP);
    }

    #[test]
    fn the_iterator_agrees_with_smaps_here() {
        // Root on a kernel with BTF (this machine, CI): the fast path must
        // be the one taken, or the frozen time is smaps' again.
        checked().expect("the task_vma iterator checked against smaps");
    }
}
