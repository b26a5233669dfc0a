//! The flags of memory areas that a restore must set again (madvise
//! behaviours, mlock, grows-down) and their own memory policies (mbind),
//! read while the tree is frozen.
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

/// A memory policy: mode (with its MPOL_F_* flags) and nodes (bit n: node
/// n), as get_mempolicy gives them.
pub type Policy = (i32, u64);

/// What was read of one process's areas.
#[derive(Default)]
pub struct Areas {
    /// In address order.
    flags: Vec<AreaFlags>,
    /// The policy numa_maps shows for each area, by start: its own, or
    /// else the process's. Read only where an area may have its own (the
    /// file walks every page, as smaps does).
    numa: HashMap<u64, Policy>,
}

/// One area: (start, end, image flags, whether it has a memory policy of
/// its own: None where that is not known).
type AreaFlags = (u64, u64, u32, Option<bool>);

/// Memory policy modes and flags (`include/uapi/linux/mempolicy.h`).
const MPOL_MODES: [(&str, i32); 7] = [
    // Longest first: a name may begin another.
    ("weighted interleave", 6),
    ("prefer (many)", 5),
    ("interleave", 3),
    ("default", 0),
    ("prefer", 1),
    ("local", 4),
    ("bind", 2),
];
const MPOL_F_STATIC_NODES: i32 = 1 << 15;
const MPOL_F_RELATIVE_NODES: i32 = 1 << 14;
const MPOL_F_NUMA_BALANCING: i32 = 1 << 13;

/// The policy of one line of numa_maps (`mpol_to_str`: a mode name, then
/// `=` and its flags, then `:` and the nodes, as `0-3,5`), by the area's
/// start. None for a line it cannot read, or nodes above 63.
fn numa_line(line: &str) -> Option<(u64, Policy)> {
    let (addr, rest) = line.split_once(' ')?;
    let start = u64::from_str_radix(addr, 16).ok()?;
    let &(name, mut mode) = MPOL_MODES.iter().find(|(n, _)| rest.starts_with(n))?;
    let text = rest[name.len()..].split(' ').next().unwrap_or("");
    let (flags, nodes) = match text.split_once(':') {
        Some((f, n)) => (f, n),
        None => (text, ""),
    };
    for f in flags.trim_start_matches('=').split('|').filter(|f| !f.is_empty()) {
        mode |= match f {
            "static" => MPOL_F_STATIC_NODES,
            "relative" => MPOL_F_RELATIVE_NODES,
            "balancing" => MPOL_F_NUMA_BALANCING,
            _ => return None,
        };
    }
    let mut mask = 0u64;
    for part in nodes.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        for n in a..=b {
            mask |= 1u64.checked_shl(n).filter(|_| n < 64)?;
        }
    }
    Some((start, (mode, mask)))
}

/// Each area's policy in numa_maps of `pid`, by start.
fn numa_maps(pid: i32) -> Result<HashMap<u64, Policy>> {
    let text = procfs::read(pid, "numa_maps")?;
    text.lines()
        .map(|l| {
            numa_line(l).ok_or_else(|| EngineError::Proc {
                path: format!("/proc/{pid}/numa_maps"),
                msg: format!("a line not understood (or nodes above 63): {l}"),
            })
        })
        .collect()
}

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

fn iter_areas(it: &VmaIter, pid: i32) -> Result<Vec<AreaFlags>> {
    Ok(it.areas(pid)?.iter().map(|a| (a.start, a.end, from_kernel(a.flags), Some(a.policy))).collect())
}

/// The vsyscall page: listed by maps, not an area of the process.
fn is_gate(start: u64) -> bool {
    start >= 0xffff_ffff_ff60_0000
}

fn read(pid: i32, source: &Source) -> Result<Areas> {
    let flags = match &source.0 {
        Some(it) => iter_areas(it, pid)?,
        None => procfs::smaps(pid)?.iter().map(|m| (m.start, m.end, from_smaps(m), None)).collect(),
    };
    // (A kernel without NUMA has no numa_maps, and no policies.)
    let numa = match flags.iter().any(|a| a.3 != Some(false)) {
        true if std::path::Path::new(&format!("/proc/{pid}/numa_maps")).exists() => numa_maps(pid)?,
        _ => HashMap::new(),
    };
    Ok(Areas { flags, numa })
}

/// Give the areas of `pid` collected from its maps their flags and memory
/// policies, read while the tree was frozen (so the same areas). `task`:
/// the process's own policy (its main thread's), which numa_maps shows
/// for an area without one of its own; where the iterator could not tell,
/// an area showing it is taken to have none.
pub fn apply(pid: i32, vmas: &mut [Vma], areas: &Areas, task: Policy) -> Result<()> {
    let flags = &areas.flags;
    for v in vmas.iter_mut() {
        let own = |known: Option<bool>| match (known, areas.numa.get(&v.start)) {
            (Some(false), _) | (None, None) => Ok(None),
            (Some(true), Some(&p)) => Ok(Some(p)),
            (None, Some(&p)) => Ok((p != task).then_some(p)),
            (Some(true), None) => Err(EngineError::Other(format!(
                "pid {pid}: area {:#x}-{:#x} has a memory policy of its own that numa_maps does not show",
                v.start, v.end
            ))),
        };
        match flags.binary_search_by_key(&v.start, |a| a.0) {
            Ok(i) if flags[i].1 == v.end => {
                v.madv = flags[i].2;
                v.policy = own(flags[i].3)?;
            }
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
    fn numa_maps_policies_are_read() {
        let line = |l: &str| numa_line(l).map(|(a, p)| (a, p.0, p.1));
        assert_eq!(line("7f00 default anon=1 dirty=1 N0=1"), Some((0x7f00, 0, 0)));
        assert_eq!(line("1000 bind:0-2,5 anon=3"), Some((0x1000, 2, 0b10_0111)));
        assert_eq!(line("1000 interleave=static:1 file=/x"), Some((0x1000, 3 | MPOL_F_STATIC_NODES, 2)));
        assert_eq!(line("1000 prefer (many)=relative|balancing:3"), Some((0x1000, 5 | (3 << 13), 8)));
        assert_eq!(line("1000 weighted interleave:0"), Some((0x1000, 6, 1)));
        assert_eq!(line("1000 prefer:1 heap"), Some((0x1000, 1, 2)));
        assert_eq!(line("1000 local"), Some((0x1000, 4, 0)));
        assert_eq!(line("1000 bind:64"), None, "nodes above 63");
        assert_eq!(line("1000 bind=odd:0"), None);
        assert_eq!(line("1000 whatever"), None);
        // This process's own, as the kernel writes them.
        let own = numa_maps(std::process::id() as i32).expect("numa_maps");
        assert!(!own.is_empty());
    }

    #[test]
    fn the_iterator_agrees_with_smaps_here() {
        // Root on a kernel with BTF (this machine, CI): the fast path must
        // be the one taken, or the frozen time is smaps' again.
        checked().expect("the task_vma iterator checked against smaps");
    }
}
